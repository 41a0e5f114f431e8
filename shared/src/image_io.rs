//! Image files in and out. Every error names the file and what is wrong
//! with it; a header that claims an enormous image is refused before any
//! pixel memory is allocated.

use std::path::{Path, PathBuf};

use image::{ImageReader, Limits, RgbImage};

/// How large an input image may be.
#[derive(Debug, Clone, Copy)]
pub struct ImageLimits {
    /// Width × height.
    pub max_pixels: u64,
    /// Either side.
    pub max_side: u32,
}

impl Default for ImageLimits {
    /// 64 megapixels and 16384 px a side: any photo or scan a user renders,
    /// and at most ~200 MB of RGB while decoding.
    fn default() -> Self {
        Self { max_pixels: 64 << 20, max_side: 16384 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read image {path}: {source}")]
    Unreadable { path: PathBuf, source: std::io::Error },
    #[error("{path} is not an image in a known format (PNG, JPEG, WebP, BMP, TIFF)")]
    UnknownFormat { path: PathBuf },
    #[error("image {path} is {width}x{height} pixels, over the limit of {limit}: {why}")]
    TooLarge { path: PathBuf, width: u32, height: u32, limit: String, why: &'static str },
    #[error("image {path} is corrupt or truncated: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("image {path} has no pixels ({width}x{height})")]
    Empty { path: PathBuf, width: u32, height: u32 },
    #[error("cannot write image {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

/// No compressed image a render can use is this large; refusing it first
/// keeps a stray multi-gigabyte file from being read into memory.
const MAX_FILE_BYTES: u64 = 512 << 20;

/// RGB at 16 bits a channel.
pub type Rgb16Image = image::ImageBuffer<image::Rgb<u16>, Vec<u16>>;

/// [`load_rgb`] at 16 bits a channel: an 8-bit file's values `b` become
/// exactly `257·b`; a 16-bit file keeps every bit.
pub fn load_rgb16(path: &Path, limits: ImageLimits) -> Result<Rgb16Image, ImageError> {
    Ok(decode(&read_image_file(path)?, &path.to_string_lossy(), limits)?.to_rgb16())
}

/// Reads and decodes an image file to 8-bit RGB, checking its header
/// against `limits` before decoding (see [`decode_rgb`]).
pub fn load_rgb(path: &Path, limits: ImageLimits) -> Result<RgbImage, ImageError> {
    decode_rgb(&read_image_file(path)?, &path.to_string_lossy(), limits)
}

/// An image file's bytes, refusing one over [`MAX_FILE_BYTES`] unread.
fn read_image_file(path: &Path) -> Result<Vec<u8>, ImageError> {
    let unreadable = |source| ImageError::Unreadable { path: path.to_path_buf(), source };
    let size = std::fs::metadata(path).map_err(unreadable)?.len();
    if size > MAX_FILE_BYTES {
        return Err(ImageError::Corrupt { path: path.to_path_buf(), reason: format!("the file is {} MB; image files over 512 MB are refused", size >> 20) });
    }
    std::fs::read(path).map_err(unreadable)
}

/// Decodes an image held in memory after checking its header against
/// `limits`, so an enormous header is refused before any pixel memory is
/// allocated (and the decoder enforces the same bounds, so a header that
/// lies cannot make it allocate more). The format comes from the bytes,
/// never the name: a text file called photo.jpg is "not an image".
/// `name` is used in messages.
pub fn decode_rgb(bytes: &[u8], name: &str, limits: ImageLimits) -> Result<RgbImage, ImageError> {
    Ok(decode(bytes, name, limits)?.to_rgb8())
}

/// [`decode_rgb`] before the conversion to 8-bit RGB.
fn decode(bytes: &[u8], name: &str, limits: ImageLimits) -> Result<image::DynamicImage, ImageError> {
    let path = PathBuf::from(name);
    let format = image::guess_format(bytes).map_err(|_| ImageError::UnknownFormat { path: path.clone() })?;
    let corrupt = |e: image::ImageError| ImageError::Corrupt { path: path.clone(), reason: e.to_string() };
    let mut r = ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let (width, height) = r.into_dimensions().map_err(corrupt)?;
    if width == 0 || height == 0 {
        return Err(ImageError::Empty { path, width, height });
    }
    let too_large = |limit: String, why| ImageError::TooLarge { path: path.clone(), width, height, limit, why };
    if width.max(height) > limits.max_side {
        return Err(too_large(format!("{} px a side", limits.max_side), "a side is too long"));
    }
    if width as u64 * height as u64 > limits.max_pixels {
        return Err(too_large(format!("{} megapixels", limits.max_pixels >> 20), "too many pixels"));
    }
    if format == image::ImageFormat::Jpeg && !jpeg_complete(bytes) {
        return Err(ImageError::Corrupt { path, reason: "the JPEG data ends before its end-of-image marker (truncated file?)".into() });
    }
    r = ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut decoder_limits = Limits::default();
    decoder_limits.max_image_width = Some(limits.max_side);
    decoder_limits.max_image_height = Some(limits.max_side);
    decoder_limits.max_alloc = Some(limits.max_pixels * 4 * 2);
    r.limits(decoder_limits);
    r.decode().map_err(corrupt)
}

/// The JPEG decoder fills a truncated scan with grey instead of failing, so
/// a cut-off file must be caught here: a complete JPEG has an end-of-image
/// marker (`FF D9`) after its last start-of-scan (`FF DA`). Inside
/// entropy-coded data `FF` is always stuffed (`FF 00`), so the marker
/// cannot appear by accident.
fn jpeg_complete(bytes: &[u8]) -> bool {
    let last = |marker: u8| bytes.windows(2).rposition(|w| w == [0xFF, marker]);
    matches!((last(0xDA), last(0xD9)), (Some(sos), Some(eoi)) if eoi > sos)
}

/// Resizes to exactly `w`×`h` (Lanczos-3), at any bit depth.
pub fn resize<P: image::Pixel + 'static>(img: &image::ImageBuffer<P, Vec<P::Subpixel>>, w: u32, h: u32) -> image::ImageBuffer<P, Vec<P::Subpixel>> {
    if img.dimensions() == (w, h) {
        return img.clone();
    }
    image::imageops::resize(img, w, h, image::imageops::FilterType::Lanczos3)
}

/// PNG bytes of RGB pixels; `name` is what errors call the image.
pub fn encode_png(rgb: &[u8], w: u32, h: u32, name: &str) -> Result<Vec<u8>, ImageError> {
    let fail = |reason: String| ImageError::Write { path: PathBuf::from(name), reason };
    let img = RgbImage::from_raw(w, h, rgb.to_vec()).ok_or_else(|| fail(format!("{} bytes do not make {w}x{h} RGB", rgb.len())))?;
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).map_err(|e| fail(e.to_string()))?;
    Ok(out.into_inner())
}

/// PNG bytes of 16-bit RGB pixels; `name` is what errors call the image.
pub fn encode_png16(rgb: &[u16], w: u32, h: u32, name: &str) -> Result<Vec<u8>, ImageError> {
    let fail = |reason: String| ImageError::Write { path: PathBuf::from(name), reason };
    let img = image::ImageBuffer::<image::Rgb<u16>, _>::from_raw(w, h, rgb.to_vec())
        .ok_or_else(|| fail(format!("{} values do not make {w}x{h} RGB", rgb.len())))?;
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb16(img).write_to(&mut out, image::ImageFormat::Png).map_err(|e| fail(e.to_string()))?;
    Ok(out.into_inner())
}

/// PNG bytes of an image in the engine's space at `bits` (8 or 16) per
/// channel: what a render writes as its output.
#[cfg(feature = "engine")]
pub fn encode_picture(image: &stylefarm_engine::Tensor, bits: u8, name: &str) -> Result<Vec<u8>, ImageError> {
    let fail = |reason: String| ImageError::Write { path: PathBuf::from(name), reason };
    if bits == 16 {
        let (rgb, w, h) = stylefarm_engine::pixels::to_rgb16(image).map_err(|e| fail(e.to_string()))?;
        encode_png16(&rgb, w as u32, h as u32, name)
    } else {
        let (rgb, w, h) = stylefarm_engine::pixels::to_rgb(image).map_err(|e| fail(e.to_string()))?;
        encode_png(&rgb, w as u32, h as u32, name)
    }
}

/// Writes a render's image as a PNG at `bits` per channel, atomically.
#[cfg(feature = "engine")]
pub fn save_picture(path: &Path, image: &stylefarm_engine::Tensor, bits: u8) -> Result<(), ImageError> {
    let bytes = encode_picture(image, bits, &path.to_string_lossy())?;
    save_bytes(path, &bytes)
}

/// Writes RGB pixels as a PNG, atomically (see [`save_bytes`]).
pub fn save_png(path: &Path, rgb: &[u8], w: u32, h: u32) -> Result<(), ImageError> {
    let bytes = encode_png(rgb, w, h, &path.to_string_lossy())?;
    save_bytes(path, &bytes)
}

/// Writes a file atomically: a temporary file in the same folder, then a
/// rename, so a reader never sees half an image.
fn save_bytes(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let fail = |reason: String| ImageError::Write { path: path.to_path_buf(), reason };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| fail("the path names no file".into()))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    std::fs::write(&tmp, bytes).map_err(|e| fail(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        fail(e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn png_bytes(w: u32, h: u32) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        RgbImage::from_pixel(w, h, image::Rgb([10, 20, 30])).write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn sixteen_bit_pngs_round_trip_and_eight_bit_ones_read_exactly() {
        let dir = tempfile::tempdir().unwrap();
        // Values that no 8-bit value gives (not multiples of 257).
        let values: Vec<u16> = (0..5 * 3 * 3u32).map(|i| (i * 1409 + 7) as u16).collect();
        let sixteen = write(dir.path(), "deep.png", &encode_png16(&values, 5, 3, "deep.png").unwrap());
        assert_eq!(load_rgb16(&sixteen, ImageLimits::default()).unwrap().into_raw(), values);
        let eight = write(dir.path(), "flat.png", &png_bytes(2, 2));
        assert!(load_rgb16(&eight, ImageLimits::default()).unwrap().into_raw().chunks(3).all(|p| p == [10 * 257, 20 * 257, 30 * 257]));
    }

    /// A valid PNG whose IHDR claims `w`×`h` (CRC fixed up) but holds 4×4 data.
    fn lying_png(w: u32, h: u32) -> Vec<u8> {
        let mut b = png_bytes(4, 4);
        b[16..20].copy_from_slice(&w.to_be_bytes());
        b[20..24].copy_from_slice(&h.to_be_bytes());
        let crc = crc32fast::hash(&b[12..29]);
        b[29..33].copy_from_slice(&crc.to_be_bytes());
        b
    }

    #[test]
    fn reads_a_good_image() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "ok.png", &png_bytes(5, 3));
        let img = load_rgb(&p, ImageLimits::default()).unwrap();
        assert_eq!(img.dimensions(), (5, 3));
        assert_eq!(img.get_pixel(4, 2).0, [10, 20, 30]);
    }

    #[test]
    fn enormous_header_is_refused_before_decoding() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "huge.png", &lying_png(50000, 50000));
        let err = load_rgb(&p, ImageLimits::default()).unwrap_err().to_string();
        assert!(err.contains("50000x50000") && err.contains("huge.png"), "{err}");
        // Under the side limit but over the pixel limit.
        let p = write(dir.path(), "wide.png", &lying_png(16000, 8000));
        let err = load_rgb(&p, ImageLimits::default()).unwrap_err().to_string();
        assert!(err.contains("too many pixels"), "{err}");
    }

    #[test]
    fn truncated_garbage_missing_and_empty_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let good = png_bytes(64, 64);
        let p = write(dir.path(), "cut.png", &good[..good.len() / 2]);
        let err = load_rgb(&p, ImageLimits::default()).unwrap_err().to_string();
        assert!(err.contains("corrupt or truncated") && err.contains("cut.png"), "{err}");

        let p = write(dir.path(), "notes.txt", b"hello, I am not a picture");
        let err = load_rgb(&p, ImageLimits::default()).unwrap_err().to_string();
        assert!(err.contains("not an image"), "{err}");

        let err = load_rgb(&dir.path().join("absent.jpg"), ImageLimits::default()).unwrap_err().to_string();
        assert!(err.contains("cannot read image") && err.contains("absent.jpg"), "{err}");

        let p = write(dir.path(), "zero.png", &lying_png(0, 7));
        let err = load_rgb(&p, ImageLimits::default()).unwrap_err().to_string();
        assert!(err.contains("zero.png"), "{err}");
    }

    #[test]
    fn uploads_are_checked_like_files() {
        assert_eq!(decode_rgb(&png_bytes(3, 2), "up.png", ImageLimits::default()).unwrap().dimensions(), (3, 2));
        let err = decode_rgb(&lying_png(50000, 50000), "big.png", ImageLimits::default()).unwrap_err().to_string();
        assert!(err.contains("big.png") && err.contains("50000x50000"), "{err}");
        let err = decode_rgb(b"GIF? no", "x.gif", ImageLimits::default()).unwrap_err().to_string();
        assert!(err.contains("not an image"), "{err}");
        let good = png_bytes(64, 64);
        assert!(decode_rgb(&good[..good.len() / 2], "cut.png", ImageLimits::default()).is_err());
    }

    #[test]
    fn truncated_jpeg_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let mut jpeg = std::io::Cursor::new(Vec::new());
        let img = RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8 * 4, y as u8 * 4, 128]));
        img.write_to(&mut jpeg, image::ImageFormat::Jpeg).unwrap();
        let jpeg = jpeg.into_inner();
        let ok = write(dir.path(), "whole.jpg", &jpeg);
        assert_eq!(load_rgb(&ok, ImageLimits::default()).unwrap().dimensions(), (64, 64));
        let cut = write(dir.path(), "cut.jpg", &jpeg[..jpeg.len() * 2 / 3]);
        let err = load_rgb(&cut, ImageLimits::default()).unwrap_err().to_string();
        assert!(err.contains("truncated") && err.contains("cut.jpg"), "{err}");
    }

    #[test]
    fn save_into_a_missing_folder_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let err = save_png(&dir.path().join("no/such/dir/out.png"), &[0; 12], 2, 2).unwrap_err().to_string();
        assert!(err.contains("cannot write image"), "{err}");
        let ok = dir.path().join("out.png");
        save_png(&ok, &[7; 12], 2, 2).unwrap();
        assert_eq!(load_rgb(&ok, ImageLimits::default()).unwrap().get_pixel(1, 1).0, [7, 7, 7]);
    }
}
