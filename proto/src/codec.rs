//! The codec every generated stub uses: prost's, with one check before a
//! request is decoded. A message whose repeated fields are cheap on the
//! wire can be dear in memory — an empty `InputImage` is 2 bytes to send
//! and some 60 to hold, so 40 MiB of them would take over a gigabyte
//! before any handler could look. So the top-level fields of a message are
//! counted on the wire first (no allocation), and a message with more of
//! one field than [`MAX_OCCURRENCES`] allows is refused with
//! INVALID_ARGUMENT before prost builds anything.

use std::any::TypeId;

use prost::bytes::Buf;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

use crate::limits::{MAX_CAPABILITIES, MAX_INPUTS, MAX_VARIANTS};

/// How many times one field may occur at the top level of a request from
/// a client the farm does not trust; a request type not listed has no cap
/// (replies the farm itself sends, and messages without repeated fields).
/// The numbers are the contract's limits (`farm.proto` states them), with
/// no slack needed: a request over them would be refused anyway.
pub fn max_occurrences<U: 'static>() -> Option<usize> {
    let t = TypeId::of::<U>();
    if t == TypeId::of::<crate::SubmitRequest>() {
        // contents and styles, each; variants_json are fewer.
        Some(MAX_INPUTS.max(MAX_VARIANTS))
    } else if t == TypeId::of::<crate::RegisterRequest>() {
        Some(MAX_CAPABILITIES)
    } else {
        None
    }
}

/// The most occurrences of one field in any capped request.
pub const MAX_OCCURRENCES: usize = MAX_INPUTS;

/// [`ProstCodec`] with [`max_occurrences`] checked before decoding.
#[derive(Debug)]
pub struct BoundedCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for BoundedCodec<T, U> {
    fn default() -> Self {
        Self(ProstCodec::default())
    }
}

impl<T, U> Codec for BoundedCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = BoundedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        BoundedDecoder { inner: self.0.decoder(), cap: max_occurrences::<U>() }
    }
}

/// Counts, then decodes.
#[derive(Debug)]
pub struct BoundedDecoder<U> {
    inner: ProstDecoder<U>,
    cap: Option<usize>,
}

impl<U: prost::Message + Default> Decoder for BoundedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        if let Some(cap) = self.cap {
            if buf.chunk().len() == buf.remaining() {
                check_occurrences(buf.chunk(), cap)?;
            }
        }
        self.inner.decode(buf)
    }
}

/// Walks the top-level fields of an encoded message, counting each field
/// number: an error names the field that occurs more than `cap` times.
/// Malformed input is left for prost to refuse.
pub fn check_occurrences(mut wire: &[u8], cap: usize) -> Result<(), Status> {
    let mut counts = std::collections::HashMap::<u64, usize>::new();
    while !wire.is_empty() {
        let Ok(key) = prost::encoding::decode_varint(&mut wire) else { return Ok(()) };
        let (field, wire_type) = (key >> 3, key & 7);
        let n = counts.entry(field).or_default();
        *n += 1;
        if *n > cap {
            return Err(Status::invalid_argument(format!("field {field} occurs more than {cap} times in one message")));
        }
        let skip = match wire_type {
            0 => match prost::encoding::decode_varint(&mut wire) {
                Ok(_) => 0,
                Err(_) => return Ok(()),
            },
            1 => 8,
            2 => match prost::encoding::decode_varint(&mut wire) {
                Ok(len) => len as usize,
                Err(_) => return Ok(()),
            },
            5 => 4,
            _ => return Ok(()),
        };
        if skip > wire.len() {
            return Ok(());
        }
        wire = &wire[skip..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn a_request_of_too_many_cheap_items_is_refused_before_it_is_built() {
        let within = crate::SubmitRequest { contents: vec![crate::InputImage::default(); MAX_OCCURRENCES], ..Default::default() };
        assert!(check_occurrences(&within.encode_to_vec(), MAX_OCCURRENCES).is_ok());
        let over = crate::SubmitRequest { styles: vec![crate::InputImage::default(); MAX_OCCURRENCES + 1], ..Default::default() };
        let e = check_occurrences(&over.encode_to_vec(), MAX_OCCURRENCES).unwrap_err();
        assert!(e.message().contains("field 3 occurs more than 100000"), "{e:?}");
        // Every wire type is stepped over, not miscounted.
        let mixed = crate::SubmitRequest { name: "n".into(), width: 7, priority: -1, blend_styles: true, variants_json: vec!["{}".into(); 3], ..Default::default() };
        assert!(check_occurrences(&mixed.encode_to_vec(), 3).is_ok());
        assert!(check_occurrences(&mixed.encode_to_vec(), 2).is_err());
        assert_eq!(max_occurrences::<crate::SubmitRequest>(), Some(MAX_OCCURRENCES));
        assert_eq!(max_occurrences::<crate::ListJobsResponse>(), None, "replies are not capped");
    }
}
