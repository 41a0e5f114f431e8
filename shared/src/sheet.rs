//! A collection's contact sheet: one row per content, one column per
//! style × variant, each cell a thumbnail centred in a white square, empty
//! where a job has no image. `farmctl fetch` writes one beside the images;
//! the dashboard puts one in a collection's zip.

use image::{Rgb, RgbImage};

/// The side of one cell, in pixels.
pub const CELL: u32 = 192;

/// A sheet being filled.
pub struct ContactSheet {
    sheet: RgbImage,
    cols: u32,
    rows: u32,
}

impl ContactSheet {
    /// A white sheet of `rows` × `cols` cells (at least one of each).
    pub fn new(rows: u32, cols: u32) -> Self {
        let (rows, cols) = (rows.max(1), cols.max(1));
        Self { sheet: RgbImage::from_pixel(cols * CELL, rows * CELL, Rgb([255, 255, 255])), cols, rows }
    }

    /// Puts `img`, shrunk to fit a cell, at (`col`, `row`); a cell outside
    /// the sheet is ignored.
    pub fn place(&mut self, img: &RgbImage, col: u32, row: u32) {
        if col >= self.cols || row >= self.rows {
            return;
        }
        let t = fit(img, CELL);
        let (x, y) = (col * CELL + (CELL - t.width()) / 2, row * CELL + (CELL - t.height()) / 2);
        image::imageops::overlay(&mut self.sheet, &t, x as i64, y as i64);
    }

    pub fn into_image(self) -> RgbImage {
        self.sheet
    }
}

/// The file name of a job's finished image in a fetched or zipped
/// collection, `content_style_vN.png` (names were checked at submit; any
/// other character still becomes `_`, and no name starts with a dot).
pub fn output_name(content: &str, style: &str, variant: u32) -> String {
    let safe = |s: &str| s.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect::<String>();
    format!("{}_{}_v{variant}.png", safe(content).trim_start_matches('.'), safe(style))
}

/// A copy of `img` whose longer side is at most `max_side` (aspect kept;
/// a smaller image is returned as it is): the dashboard's live previews.
pub fn preview(img: &RgbImage, max_side: u32) -> RgbImage {
    fit(img, max_side)
}

/// `img` shrunk (never grown) so its longer side is at most `side`, its
/// aspect ratio kept. (`imageops::thumbnail` resizes to exactly the size
/// it is given.)
fn fit(img: &RgbImage, side: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    if w.max(h) <= side {
        return img.clone();
    }
    let scale = side as f64 / w.max(h) as f64;
    let (tw, th) = (((w as f64 * scale).round() as u32).clamp(1, side), ((h as f64 * scale).round() as u32).clamp(1, side));
    image::imageops::thumbnail(img, tw, th)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_land_in_their_cells() {
        let mut s = ContactSheet::new(2, 3);
        s.place(&RgbImage::from_pixel(400, 200, Rgb([200, 0, 0])), 2, 1);
        s.place(&RgbImage::from_pixel(40, 20, Rgb([0, 0, 200])), 3, 0); // outside: ignored
        let img = s.into_image();
        assert_eq!(img.dimensions(), (3 * CELL, 2 * CELL));
        assert_eq!(img.get_pixel(2 * CELL + CELL / 2, CELL + CELL / 2), &Rgb([200, 0, 0]));
        assert_eq!(img.get_pixel(CELL / 2, CELL / 2), &Rgb([255, 255, 255]));
        assert_eq!(img.get_pixel(0, CELL + 1), &Rgb([255, 255, 255]), "the cell's margin stays white");
        // A 2:1 image fills its cell's width and half its height: not stretched.
        assert_eq!(img.get_pixel(2 * CELL + 2, CELL + CELL / 2), &Rgb([200, 0, 0]));
        assert_eq!(img.get_pixel(2 * CELL + CELL / 2, CELL + 10), &Rgb([255, 255, 255]));
    }

    #[test]
    fn output_names_are_safe_file_names() {
        assert_eq!(output_name("cat", "starry_night+great_wave", 2), "cat_starry_night_great_wave_v2.png");
        assert_eq!(output_name(".hidden", "s", 0), "hidden_s_v0.png");
    }

    #[test]
    fn previews_shrink_to_their_longer_side() {
        let p = preview(&RgbImage::new(600, 300), 160);
        assert_eq!(p.dimensions(), (160, 80));
        assert_eq!(preview(&RgbImage::new(60, 30), 160).dimensions(), (60, 30));
    }
}
