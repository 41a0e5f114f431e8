//! TensorBoard event files, written by hand: the format is small and
//! stable. A file is a sequence of TFRecords (`u64` length, masked CRC-32C
//! of the length, the bytes, masked CRC-32C of the bytes), each holding one
//! `Event` protobuf. The first event carries `file_version`; each later one
//! a `Summary` of scalar values at a step.
//!
//! Protobuf fields used: `Event { double wall_time = 1; int64 step = 2;
//! string file_version = 3; Summary summary = 5; }`, `Summary { repeated
//! Value value = 1; }`, `Value { string tag = 1; float simple_value = 2; }`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

/// TFRecord's CRC masking.
pub fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_bytes(field: u32, bytes: &[u8], out: &mut Vec<u8>) {
    varint(((field << 3) | 2) as u64, out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

fn event(wall_time: f64, step: i64, body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut e = Vec::new();
    e.push((1 << 3) | 1); // wall_time: fixed64
    e.extend_from_slice(&wall_time.to_le_bytes());
    e.push(2 << 3); // step: varint
    varint(step as u64, &mut e);
    body(&mut e);
    e
}

/// Appends scalar events to one `events.out.tfevents.*` stream: a file
/// beside a local render's output, or bytes a worker puts in storage.
pub struct EventWriter<W: Write = BufWriter<File>> {
    out: W,
    /// `events.out.tfevents.<seconds>.stylefarm`, the name TensorBoard looks for.
    file_name: String,
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl EventWriter {
    /// Creates `dir/events.out.tfevents.<seconds>.stylefarm` (and `dir`).
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let file_name = file_name(now());
        Self::start(BufWriter::new(File::create(dir.join(&file_name))?), file_name)
    }
}

impl EventWriter<Vec<u8>> {
    /// Events kept in memory; [`Self::bytes`] is the file's content so far.
    pub fn in_memory() -> Self {
        let file_name = file_name(now());
        match Self::start(Vec::new(), file_name.clone()) {
            Ok(w) => w,
            // Writing to a Vec cannot fail; keep the (empty) stream anyway.
            Err(_) => Self { out: Vec::new(), file_name },
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.out
    }
}

fn file_name(wall: f64) -> String {
    format!("events.out.tfevents.{}.stylefarm", wall as u64)
}

impl<W: Write> EventWriter<W> {
    /// Writes the `file_version` event every event file starts with.
    fn start(out: W, file_name: String) -> std::io::Result<Self> {
        let mut w = Self { out, file_name };
        let first = event(now(), 0, |e| field_bytes(3, b"brain.Event:2", e));
        w.record(&first)?;
        Ok(w)
    }

    /// The name TensorBoard expects the stream to be stored under.
    pub fn file_name(&self) -> &str {
        &self.file_name
    }

    fn record(&mut self, data: &[u8]) -> std::io::Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        self.out.write_all(&len)?;
        self.out.write_all(&masked_crc(&len).to_le_bytes())?;
        self.out.write_all(data)?;
        self.out.write_all(&masked_crc(data).to_le_bytes())
    }

    /// One event at `step` holding `(tag, value)` scalars.
    pub fn scalars(&mut self, step: i64, values: &[(&str, f64)]) -> std::io::Result<()> {
        let e = event(now(), step, |e| {
            let mut summary = Vec::new();
            for (tag, value) in values {
                let mut v = Vec::new();
                field_bytes(1, tag.as_bytes(), &mut v);
                v.push((2 << 3) | 5); // simple_value: fixed32
                v.extend_from_slice(&(*value as f32).to_le_bytes());
                field_bytes(1, &v, &mut summary);
            }
            field_bytes(5, &summary, e);
        });
        self.record(&e)
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}
