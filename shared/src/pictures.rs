//! A render's source images turned into the engine's pictures at any size:
//! the one path from decoded 8-bit images to tensors, so `farmctl render`
//! and a farm worker feed the engine the same pixels (the condition for a
//! farm job to be bit-identical to a local render).

use image::RgbImage;
use stylefarm_engine::{pixels, DType, Device, Pictures, Result, Tensor};

use crate::image_io;

/// The decoded inputs of one render.
#[derive(Debug, Clone)]
pub struct Sources {
    pub content: RgbImage,
    /// Every style, each resized to the render size (the assignment's rule).
    pub styles: Vec<RgbImage>,
    /// The start image of `--init PATH`, if any, at 16 bits a channel (an
    /// 8-bit file read exactly; a 16-bit one — a `--bit-depth 16` render —
    /// without rounding).
    pub init: Option<image_io::Rgb16Image>,
}

/// An 8-bit image resized to `w`×`h` as a `[1, 3, h, w]` tensor in the
/// optimisation space.
fn tensor_at(img: &RgbImage, w: usize, h: usize, device: &Device) -> Result<Tensor> {
    let resized = image_io::resize(img, w as u32, h as u32);
    pixels::to_tensor(resized.as_raw(), w, h, DType::F32, device)
}

impl Sources {
    /// Content and styles at `w`×`h`.
    pub fn at(&self, w: usize, h: usize, device: &Device) -> Result<Pictures> {
        Ok(Pictures {
            content: tensor_at(&self.content, w, h, device)?,
            styles: self.styles.iter().map(|s| tensor_at(s, w, h, device)).collect::<Result<_>>()?,
        })
    }

    /// The init image at `w`×`h`, if there is one.
    pub fn init_at(&self, w: usize, h: usize, device: &Device) -> Result<Option<Tensor>> {
        let Some(init) = &self.init else { return Ok(None) };
        let resized = image_io::resize(init, w as u32, h as u32);
        pixels::to_tensor16(resized.as_raw(), w, h, DType::F32, device).map(Some)
    }
}
