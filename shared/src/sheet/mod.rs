//! A collection's contact sheet, to read and to print: a caption (the
//! collection's name, when it was submitted, its shape and what its
//! variants share), one row per photo and one column per painting ×
//! variant, each labelled (a variant by the parameters that set it apart),
//! every cell as large as its image (no square padding), and a cell whose
//! job did not succeed marked with its state (FAILED with the reason,
//! CANCELLED, QUEUED, RUNNING, NOT FETCHED).
//!
//! One picture (`to_image`, `contact_sheet.png`) or pages (`to_pdf`,
//! `contact_sheet.pdf`: rows and columns split so each page stays printable,
//! every page with its own labels). `farmctl fetch` writes both beside the
//! images; the dashboard puts them in a collection's zip.

pub mod collection;
mod pdf;
pub mod text;

use image::{Rgb, RgbImage};
use text::{Style, Weight};

/// The longer side of a cell's image, at most, in pixels.
pub const THUMB: u32 = 240;

const MARGIN: u32 = 24;
/// The widest a whole-sheet picture gets (where one column is not wider).
pub const MAX_WIDTH: u32 = 8192;
const GAP: u32 = 10;
const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const INK: Rgb<u8> = Rgb([29, 31, 35]);
const MUTED: Rgb<u8> = Rgb([96, 102, 112]);
const TITLE: Style = Style { weight: Weight::Bold, px: 26.0, color: INK };
const CAPTION: Style = Style { weight: Weight::Regular, px: 16.0, color: MUTED };
const COLUMN: Style = Style { weight: Weight::Bold, px: 16.0, color: INK };
const VARIANT: Style = Style { weight: Weight::Regular, px: 14.0, color: MUTED };
const ROW: Style = Style { weight: Weight::Bold, px: 16.0, color: INK };
const STATE_PX: f32 = 15.0;
const REASON: Style = Style { weight: Weight::Regular, px: 13.0, color: INK };
/// A label's width, at most (longer names are cut with an ellipsis).
const LABEL_MAX: f32 = 220.0;
/// The size of a cell in a row or column that has no image at all.
const EMPTY_SIDE: (u32, u32) = (160, 96);
/// The least size of a cell that shows a state instead of an image.
const MARKED_LEAST: (u32, u32) = (128, 64);

/// What one cell shows.
#[derive(Clone, Debug)]
pub enum Cell {
    /// The finished image (shrunk to `THUMB` when placed).
    Image(RgbImage),
    /// The job failed; why.
    Failed(String),
    Cancelled,
    /// Not finished yet: its state's name (queued, running).
    Unfinished(String),
    /// It succeeded but its image could not be read; why.
    Missing(String),
}

impl Cell {
    /// The word a cell without an image shows, its fill and its ink.
    fn mark(&self) -> Option<(String, Rgb<u8>, Rgb<u8>, &str)> {
        match self {
            Cell::Image(_) => None,
            Cell::Failed(why) => Some(("FAILED".into(), Rgb([253, 232, 232]), Rgb([180, 35, 24]), why)),
            Cell::Cancelled => Some(("CANCELLED".into(), Rgb([243, 239, 226]), Rgb([128, 96, 0]), "")),
            Cell::Unfinished(state) => Some((state.to_uppercase(), Rgb([236, 238, 242]), MUTED, "")),
            Cell::Missing(why) => Some(("NOT FETCHED".into(), Rgb([253, 232, 232]), Rgb([180, 35, 24]), why)),
        }
    }
}

/// A column's labels: its painting and what sets its variant apart.
#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    pub style: String,
    /// e.g. "alpha=0.01"; empty when the collection has one variant.
    pub variant: String,
}

/// A sheet being filled: labels first, then cells in any order.
pub struct Sheet {
    title: String,
    caption: String,
    rows: Vec<String>,
    columns: Vec<Column>,
    /// Row-major, `rows × columns`; `None` is a cell with no job.
    cells: Vec<Option<Cell>>,
    /// The largest image placed, as rendered (before its thumbnail).
    largest: Option<(u32, u32)>,
}

impl Sheet {
    pub fn new(title: impl Into<String>, caption: impl Into<String>, rows: Vec<String>, columns: Vec<Column>) -> Self {
        let cells = vec![None; rows.len() * columns.len()];
        Self { title: title.into(), caption: caption.into(), rows, columns, cells, largest: None }
    }

    /// Sets the cell at (`row`, `col`); an image is shrunk to `THUMB` here,
    /// so a sheet holds thumbnails only. A cell outside is ignored.
    pub fn set(&mut self, row: usize, col: usize, cell: Cell) {
        if row >= self.rows.len() || col >= self.columns.len() {
            return;
        }
        let cell = match cell {
            Cell::Image(img) => {
                let (w, h) = img.dimensions();
                if self.largest.is_none_or(|(lw, lh)| w * h > lw * lh) {
                    self.largest = Some((w, h));
                }
                Cell::Image(fit(&img, THUMB))
            }
            other => other,
        };
        self.cells[row * self.columns.len() + col] = Some(cell);
    }

    fn cell(&self, row: usize, col: usize) -> Option<&Cell> {
        self.cells[row * self.columns.len() + col].as_ref()
    }

    /// The whole sheet as one picture; columns beyond [`MAX_WIDTH`] wrap
    /// into bands stacked below each other, each with its labels (a
    /// 1,000-column row is not a picture 170,000 px wide).
    pub fn to_image(&self) -> RgbImage {
        let layout = Layout::of(self);
        let rows: Vec<usize> = (0..self.rows.len()).collect();
        let bands = chunks(&layout.col_widths, MAX_WIDTH.saturating_sub(layout.left + MARGIN));
        let parts: Vec<RgbImage> = bands
            .iter()
            .enumerate()
            .map(|(i, cols)| layout.paint(self, &rows, cols, &if bands.len() > 1 { format!(" · part {} of {}", i + 1, bands.len()) } else { String::new() }))
            .collect();
        stack(parts)
    }

    /// The sheet as pages of at most `max_width` × `max_height` pixels
    /// (a page larger only where one row or column is), rows and columns
    /// split between them; each page has the caption, its own row and
    /// column labels and "page N of M".
    pub fn pages(&self, max_width: u32, max_height: u32) -> Vec<RgbImage> {
        let layout = Layout::of(self);
        let col_chunks = chunks(&layout.col_widths, max_width.saturating_sub(layout.left));
        let row_chunks = chunks(&layout.row_heights, max_height.saturating_sub(layout.top));
        let total = col_chunks.len() * row_chunks.len();
        let mut pages = Vec::with_capacity(total);
        for rows in &row_chunks {
            for cols in &col_chunks {
                let note = if total > 1 { format!(" · page {} of {total}", pages.len() + 1) } else { String::new() };
                pages.push(layout.paint(self, rows, cols, &note));
            }
        }
        pages
    }

    /// The sheet as a PDF: `pages` at 150 dots per inch, A4 landscape's
    /// size at most, one image a page.
    pub fn to_pdf(&self) -> Vec<u8> {
        pdf::write(&self.title, &self.pages(pdf::PAGE_PX.0, pdf::PAGE_PX.1))
    }
}

/// Pictures one below the other, on white, as wide as the widest.
fn stack(parts: Vec<RgbImage>) -> RgbImage {
    if parts.len() == 1 {
        return parts.into_iter().next().unwrap_or_default();
    }
    let width = parts.iter().map(|p| p.width()).max().unwrap_or(1);
    let mut img = RgbImage::from_pixel(width, parts.iter().map(|p| p.height()).sum::<u32>().max(1), WHITE);
    let mut y = 0;
    for p in &parts {
        image::imageops::replace(&mut img, p, 0, y as i64);
        y += p.height();
    }
    img
}

/// Splits `sizes` (with a gap after each) into runs that fit `room`, each
/// at least one long.
fn chunks(sizes: &[u32], room: u32) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut used = 0;
    for (i, &s) in sizes.iter().enumerate() {
        match out.last_mut() {
            Some(run) if used + s + GAP <= room => run.push(i),
            _ => {
                out.push(vec![i]);
                used = 0;
            }
        }
        used += s + GAP;
    }
    if out.is_empty() {
        out.push(Vec::new());
    }
    out
}

/// Where things go: the label column's width, the header's height, each
/// column's width and each row's height (the largest image in it).
struct Layout {
    left: u32,
    top: u32,
    header: u32,
    col_widths: Vec<u32>,
    row_heights: Vec<u32>,
}

impl Layout {
    fn of(sheet: &Sheet) -> Self {
        let (nr, nc) = (sheet.rows.len(), sheet.columns.len());
        let images = |r: usize, c: usize| match sheet.cell(r, c) {
            Some(Cell::Image(img)) => Some(img.dimensions()),
            _ => None,
        };
        let label_width = |c: &Column| COLUMN.width(&c.style).max(VARIANT.width(&c.variant)).min(LABEL_MAX).ceil() as u32;
        let marked = |r: usize, c: usize| matches!(sheet.cell(r, c), Some(cell) if !matches!(cell, Cell::Image(_)));
        // A marked cell is at least as large as its word and a few lines of
        // its reason, however small the images beside it.
        let col_widths: Vec<u32> = (0..nc)
            .map(|c| {
                let widest = (0..nr).filter_map(|r| images(r, c)).map(|(w, _)| w).max().unwrap_or(EMPTY_SIDE.0);
                let least = if (0..nr).any(|r| marked(r, c)) { MARKED_LEAST.0 } else { 64 };
                widest.max(label_width(&sheet.columns[c])).max(least)
            })
            .collect();
        let row_heights: Vec<u32> = (0..nr)
            .map(|r| {
                let least = if (0..nc).any(|c| marked(r, c)) { MARKED_LEAST.1 } else { 0 };
                match (0..nc).filter_map(|c| images(r, c)).map(|(_, h)| h).max() {
                    Some(h) => h.max(least),
                    None => EMPTY_SIDE.1,
                }
            })
            .collect();
        let left = MARGIN + sheet.rows.iter().map(|n| ROW.width(n).min(LABEL_MAX).ceil() as u32).max().unwrap_or(0) + GAP;
        let variant_line = if sheet.columns.iter().any(|c| !c.variant.is_empty()) { VARIANT.line_height() } else { 0 };
        let header = COLUMN.line_height() + variant_line + 6;
        let top = MARGIN + TITLE.line_height() + 4 + CAPTION.line_height() + 14 + header;
        Layout { left, top, header, col_widths, row_heights }
    }

    /// Paints the cells of `rows` × `cols` with their labels.
    fn paint(&self, sheet: &Sheet, rows: &[usize], cols: &[usize], note: &str) -> RgbImage {
        let width = self.left + cols.iter().map(|&c| self.col_widths[c] + GAP).sum::<u32>() + MARGIN;
        let height = self.top + rows.iter().map(|&r| self.row_heights[r] + GAP).sum::<u32>() + MARGIN;
        let size = sheet.largest.map(|(w, h)| format!(" · {w}×{h} px")).unwrap_or_default();
        let caption = format!("{}{size}{note}", sheet.caption);
        let width = width.max((MARGIN as f32 * 2.0 + TITLE.width(&sheet.title).max(CAPTION.width(&caption))).ceil() as u32);
        let mut img = RgbImage::from_pixel(width, height, WHITE);
        let room = (width - 2 * MARGIN) as f32;
        TITLE.draw(&mut img, MARGIN as i64, MARGIN as i64, &TITLE.fit(&sheet.title, room));
        CAPTION.draw(&mut img, MARGIN as i64, (MARGIN + TITLE.line_height() + 4) as i64, &CAPTION.fit(&caption, room));

        let header_y = self.top - self.header;
        let mut xs = Vec::with_capacity(cols.len());
        let mut x = self.left;
        for &c in cols {
            let (column, w) = (&sheet.columns[c], self.col_widths[c]);
            COLUMN.draw(&mut img, x as i64, header_y as i64, &COLUMN.fit(&column.style, w as f32));
            VARIANT.draw(&mut img, x as i64, (header_y + COLUMN.line_height()) as i64, &VARIANT.fit(&column.variant, w as f32));
            xs.push(x);
            x += w + GAP;
        }
        let mut y = self.top;
        for &r in rows {
            let h = self.row_heights[r];
            let label = ROW.fit(&sheet.rows[r], LABEL_MAX);
            let label_y = y + h.saturating_sub(ROW.line_height()) / 2;
            ROW.draw(&mut img, MARGIN as i64, label_y as i64, &label);
            for (&c, &x) in cols.iter().zip(&xs) {
                let w = self.col_widths[c];
                match sheet.cell(r, c) {
                    Some(Cell::Image(t)) => {
                        let (ix, iy) = (x + (w - t.width()) / 2, y + (h - t.height()) / 2);
                        image::imageops::overlay(&mut img, t, ix as i64, iy as i64);
                    }
                    Some(cell) => paint_mark(&mut img, cell, x, y, w, h),
                    None => {}
                }
            }
            y += h + GAP;
        }
        img
    }
}

/// A cell without an image: its fill, its state's word and, where there
/// is room, the reason.
fn paint_mark(img: &mut RgbImage, cell: &Cell, x: u32, y: u32, w: u32, h: u32) {
    let Some((word, fill, ink, why)) = cell.mark() else { return };
    for py in y..y + h {
        for px in x..x + w {
            let edge = px == x || py == y || px == x + w - 1 || py == y + h - 1;
            img.put_pixel(px, py, if edge { ink } else { fill });
        }
    }
    let state = Style { weight: Weight::Bold, px: STATE_PX, color: ink };
    state.draw(img, (x + 6) as i64, (y + 5) as i64, &state.fit(&word, (w - 12) as f32));
    let lines = (h.saturating_sub(10 + state.line_height()) / REASON.line_height()) as usize;
    if lines > 0 && !why.is_empty() {
        for (k, line) in REASON.wrap(why, (w - 12) as f32, lines.min(4)).iter().enumerate() {
            REASON.draw(img, (x + 6) as i64, (y + 5 + state.line_height() + k as u32 * REASON.line_height()) as i64, line);
        }
    }
}

/// What every variant shares of the parameters a reader asks about first:
/// e.g. "lbfgs, 100 iterations".
pub fn shared_params(params: &[serde_json::Value]) -> String {
    let same = |k: &str| params.first().and_then(|p| p.get(k)).filter(|v| params.iter().all(|p| p.get(k) == Some(*v))).map(value_text);
    let mut parts = Vec::new();
    if let Some(o) = same("optimizer") {
        parts.push(o);
    }
    // (A job's parameters name them "iters", as farmctl's flag does.)
    if let Some(n) = same("iters").or_else(|| same("iterations")) {
        parts.push(format!("{n} iterations"));
    }
    parts.join(", ")
}

fn value_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Longest file name `output_name` writes, in bytes (file systems take
/// 255).
pub const MAX_OUTPUT_NAME: usize = 200;

/// The file name of a job's finished image in a fetched or zipped
/// collection, `content_style_vN.png` (names were checked at submit; any
/// other character still becomes `_`, and no name starts with a dot). A
/// name longer than [`MAX_OUTPUT_NAME`] (long blended style names) is cut
/// and told apart by the start of a hash of the whole: the same for the
/// same job, different for different ones.
pub fn output_name(content: &str, style: &str, variant: u32) -> String {
    let stem = format!("{}_{}", safe_name(content), safe_name(style));
    let tail = format!("_v{variant}.png");
    if stem.len() + tail.len() <= MAX_OUTPUT_NAME {
        return format!("{stem}{tail}");
    }
    use sha2::Digest;
    let hash: String = sha2::Sha256::digest(stem.as_bytes()).iter().take(6).map(|b| format!("{b:02x}")).collect();
    // (ASCII only, after safe_name: any byte is a boundary.)
    let keep = MAX_OUTPUT_NAME - tail.len() - hash.len() - 1;
    format!("{}-{hash}{tail}", &stem[..keep])
}

/// `name` as a file name: letters, digits, `.`, `_` and `-` kept, anything
/// else `_`, no leading dot.
pub fn safe_name(name: &str) -> String {
    let safe: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect();
    safe.trim_start_matches('.').to_string()
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
    use serde_json::json;

    fn columns(names: &[(&str, &str)]) -> Vec<Column> {
        names.iter().map(|(s, v)| Column { style: s.to_string(), variant: v.to_string() }).collect()
    }

    /// Whether the rectangle holds the colour `c` somewhere.
    fn holds(img: &RgbImage, (x0, y0, x1, y1): (u32, u32, u32, u32), c: Rgb<u8>) -> bool {
        (y0..y1).any(|y| (x0..x1).any(|x| img.get_pixel(x, y) == &c))
    }

    #[test]
    fn cells_are_as_large_as_their_images_and_marked_when_they_have_none() {
        let red = Rgb([200, 0, 0]);
        let mut s = Sheet::new("cats", "2026-12-05", vec!["a".into(), "b".into()], columns(&[("x", ""), ("y", "")]));
        s.set(0, 0, Cell::Image(RgbImage::from_pixel(400, 200, red)));
        s.set(1, 1, Cell::Failed("out of memory".into()));
        s.set(5, 5, Cell::Cancelled); // outside: ignored
        let layout = Layout::of(&s);
        // The 2:1 image is shrunk to THUMB wide: its column that wide, its
        // row half that high; the row and column with no image take the
        // empty cell's size, not a square.
        assert_eq!(layout.col_widths, vec![THUMB, EMPTY_SIDE.0]);
        assert_eq!(layout.row_heights, vec![THUMB / 2, EMPTY_SIDE.1]);
        let img = s.to_image();
        let (x0, y0) = (layout.left, layout.top);
        assert!(holds(&img, (x0, y0, x0 + THUMB, y0 + THUMB / 2), red), "the image in its cell");
        assert!(!holds(&img, (x0, y0 + THUMB / 2 + 1, x0 + THUMB, img.height()), red), "nothing below it");
        let failed = (x0 + THUMB + GAP, y0 + THUMB / 2 + GAP);
        assert_eq!(img.get_pixel(failed.0 + EMPTY_SIDE.0 / 2, failed.1 + EMPTY_SIDE.1 - 3), &Rgb([253, 232, 232]), "the failed cell's fill");
        assert_eq!(img.dimensions(), (x0 + THUMB + GAP + EMPTY_SIDE.0 + GAP + MARGIN, y0 + THUMB / 2 + GAP + EMPTY_SIDE.1 + GAP + MARGIN));
    }

    #[test]
    fn pages_split_rows_and_columns_and_keep_their_labels() {
        let names: Vec<String> = (0..7).map(|i| format!("photo{i}")).collect();
        let cols = columns(&[("a", "alpha=1"), ("a", "alpha=2"), ("b", "alpha=1")]);
        let mut s = Sheet::new("many", "caption", names, cols);
        for r in 0..7 {
            for c in 0..3 {
                s.set(r, c, Cell::Image(RgbImage::from_pixel(200, 150, Rgb([r as u8 * 30, c as u8 * 80, 0]))));
            }
        }
        let whole = s.to_image();
        let layout = Layout::of(&s);
        // Two columns and three rows a page at most.
        let (w, h) = (layout.left + 2 * (200 + GAP) + MARGIN, layout.top + 3 * (150 + GAP) + MARGIN);
        let pages = s.pages(w, h);
        assert_eq!(pages.len(), 3 * 2, "7 rows in 3 runs × 3 columns in 2");
        assert!(pages.iter().all(|p| p.width() <= w && p.height() <= h));
        assert!(whole.width() > w && whole.height() > h);
        // The last page holds the last row's last column, in its place.
        let last = pages.last().unwrap();
        assert_eq!(last.get_pixel(layout.left + 100, layout.top + 75), &Rgb([180, 160, 0]));
    }

    #[test]
    fn a_pdf_has_a_page_for_each_page_image() {
        let rows: Vec<String> = (0..40).map(|i| format!("p{i}")).collect();
        let mut s = Sheet::new("big", "caption", rows, columns(&[("a", "")]));
        for r in 0..40 {
            s.set(r, 0, Cell::Image(RgbImage::from_pixel(240, 180, Rgb([10, 20, 30]))));
        }
        let n = s.pages(pdf::PAGE_PX.0, pdf::PAGE_PX.1).len();
        assert!(n > 1, "40 rows of 180 px need several pages");
        let bytes = s.to_pdf();
        assert!(bytes.starts_with(b"%PDF-"));
        let text = String::from_utf8_lossy(&bytes);
        assert_eq!(text.matches("/Type /Page\n").count() + text.matches("/Type /Page ").count() + text.matches("/Type /Page/").count(), n, "one page object per page");
    }

    #[test]
    fn what_every_variant_shares_is_said_once() {
        let params = [json!({"optimizer": "lbfgs", "alpha": 0.01, "iters": 100}), json!({"optimizer": "lbfgs", "alpha": 0.001, "iters": 100})];
        assert_eq!(shared_params(&params), "lbfgs, 100 iterations");
    }

    #[test]
    fn output_names_are_safe_file_names() {
        assert_eq!(output_name("cat", "starry_night+great_wave", 2), "cat_starry_night_great_wave_v2.png");
        assert_eq!(output_name(".hidden", "s", 0), "hidden_s_v0.png");
        // Three 90-character styles blended: cut, and told apart.
        let long = ["a".repeat(90), "b".repeat(90), "c".repeat(90)].join("+");
        let (one, other) = (output_name("cat", &long, 0), output_name("cat", &format!("{long}d"), 0));
        assert!(one.len() <= MAX_OUTPUT_NAME && other.len() <= MAX_OUTPUT_NAME, "{one}");
        assert!(one.starts_with("cat_aaaa") && one.ends_with("_v0.png"), "{one}");
        assert_ne!(one, other, "names cut the same are told apart");
        assert_eq!(one, output_name("cat", &long, 0), "stable");
    }

    #[test]
    fn a_row_wider_than_a_picture_wraps_into_bands_with_their_labels() {
        let cols: Vec<Column> = (0..1000).map(|i| Column { style: format!("s{i}"), variant: String::new() }).collect();
        let mut s = Sheet::new("wide", "caption", vec!["photo".into()], cols);
        for c in 0..1000 {
            s.set(0, c, Cell::Image(RgbImage::from_pixel(160, 120, Rgb([0, 0, 200]))));
        }
        let img = s.to_image();
        let one_band = Layout::of(&s).top + 120 + GAP + MARGIN;
        assert!(img.width() <= MAX_WIDTH, "{} px wide", img.width());
        let bands = img.height() / one_band;
        assert!(bands >= 1000 * 170 / MAX_WIDTH, "1000 columns of 170 px in bands of {MAX_WIDTH} px: {} px high", img.height());
    }

    #[test]
    fn previews_shrink_to_their_longer_side() {
        let p = preview(&RgbImage::new(600, 300), 160);
        assert_eq!(p.dimensions(), (160, 80));
        assert_eq!(preview(&RgbImage::new(60, 30), 160).dimensions(), (60, 30));
    }
}
