//! Text on a picture: the contact sheet's labels, in DejaVu Sans (bundled
//! by the `dejavu` crate, so every machine draws the same letters),
//! rasterised by `ab_glyph`.

use ab_glyph::{Font as _, FontRef, PxScale, ScaleFont as _};
use image::{Rgb, RgbImage};
use std::sync::OnceLock;

/// Regular or bold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weight {
    Regular,
    Bold,
}

/// A line's look: its face, its size in pixels and its colour.
#[derive(Clone, Copy, Debug)]
pub struct Style {
    pub weight: Weight,
    pub px: f32,
    pub color: Rgb<u8>,
}

fn face(weight: Weight) -> &'static FontRef<'static> {
    static REGULAR: OnceLock<FontRef<'static>> = OnceLock::new();
    static BOLD: OnceLock<FontRef<'static>> = OnceLock::new();
    let (cell, bytes) = match weight {
        Weight::Regular => (&REGULAR, dejavu::sans::regular()),
        Weight::Bold => (&BOLD, dejavu::sans::bold()),
    };
    // The bundled fonts are valid TrueType; a broken crate is a build bug.
    cell.get_or_init(|| FontRef::try_from_slice(bytes).expect("the bundled DejaVu font parses"))
}

impl Style {
    /// The height of one line (ascent to descent), in whole pixels.
    pub fn line_height(&self) -> u32 {
        let f = face(self.weight).as_scaled(PxScale::from(self.px));
        (f.ascent() - f.descent()).ceil() as u32
    }

    /// How wide `text` is drawn, in pixels.
    pub fn width(&self, text: &str) -> f32 {
        let f = face(self.weight).as_scaled(PxScale::from(self.px));
        let mut width = 0.0;
        let mut prev = None;
        for c in text.chars() {
            let g = f.glyph_id(c);
            if let Some(p) = prev {
                width += f.kern(p, g);
            }
            width += f.h_advance(g);
            prev = Some(g);
        }
        width
    }

    /// `text`, cut to fit `max_width` pixels with an ellipsis. One pass
    /// over the glyphs that fit, however long the text: a 100 kB name
    /// costs what a 100-character one does.
    pub fn fit(&self, text: &str, max_width: f32) -> String {
        let f = face(self.weight).as_scaled(PxScale::from(self.px));
        let ellipsis = self.width("…");
        let (mut width, mut prev, mut keep) = (0.0, None, 0);
        for (i, c) in text.char_indices() {
            let g = f.glyph_id(c);
            width += prev.map_or(0.0, |p| f.kern(p, g)) + f.h_advance(g);
            prev = Some(g);
            if width > max_width {
                return self.cut(&text[..keep], max_width);
            }
            if width + ellipsis <= max_width {
                keep = i + c.len_utf8();
            }
        }
        text.to_string()
    }

    /// `kept` (which leaves room for the ellipsis but for kerning) with the
    /// ellipsis; a character fewer while kerning pushes it over.
    fn cut(&self, kept: &str, max_width: f32) -> String {
        let mut kept = kept.trim_end();
        loop {
            let candidate = format!("{kept}…");
            if self.width(&candidate) <= max_width {
                return candidate;
            }
            let Some((last, _)) = kept.char_indices().next_back() else { return String::new() };
            kept = kept[..last].trim_end();
        }
    }

    /// `text` broken at spaces into at most `max_lines` lines of at most
    /// `max_width` pixels; the last line cut with an ellipsis when more
    /// remains, and a word longer than a line cut likewise.
    pub fn wrap(&self, text: &str, max_width: f32, max_lines: usize) -> Vec<String> {
        let mut lines: Vec<String> = Vec::new();
        let mut line = String::new();
        let mut words = text.split_whitespace().peekable();
        while let Some(word) = words.next() {
            let candidate = if line.is_empty() { word.to_string() } else { format!("{line} {word}") };
            if self.width(&candidate) <= max_width {
                line = candidate;
                continue;
            }
            if !line.is_empty() {
                lines.push(std::mem::take(&mut line));
            }
            line = word.to_string();
            if lines.len() + 1 == max_lines {
                let rest: Vec<&str> = std::iter::once(word).chain(words.by_ref()).collect();
                lines.push(self.fit(&rest.join(" "), max_width));
                return lines;
            }
            if self.width(&line) > max_width {
                lines.push(self.fit(&line, max_width));
                line.clear();
            }
        }
        if !line.is_empty() && lines.len() < max_lines {
            lines.push(line);
        }
        lines
    }

    /// Draws `text` with its top at `y` and its left edge at `x`, blended
    /// over what is there; what falls outside the picture is dropped.
    pub fn draw(&self, img: &mut RgbImage, x: i64, y: i64, text: &str) {
        let f = face(self.weight).as_scaled(PxScale::from(self.px));
        let baseline = y as f32 + f.ascent();
        let mut pen = x as f32;
        let mut prev = None;
        for c in text.chars() {
            let id = f.glyph_id(c);
            if let Some(p) = prev {
                pen += f.kern(p, id);
            }
            let glyph = id.with_scale_and_position(PxScale::from(self.px), ab_glyph::point(pen, baseline));
            pen += f.h_advance(id);
            prev = Some(id);
            let Some(outline) = f.outline_glyph(glyph) else { continue };
            let bounds = outline.px_bounds();
            outline.draw(|gx, gy, coverage| {
                let (px, py) = (bounds.min.x as i64 + gx as i64, bounds.min.y as i64 + gy as i64);
                if px < 0 || py < 0 || px >= img.width() as i64 || py >= img.height() as i64 {
                    return;
                }
                let under = img.get_pixel_mut(px as u32, py as u32);
                let a = coverage.clamp(0.0, 1.0);
                for k in 0..3 {
                    under.0[k] = (under.0[k] as f32 * (1.0 - a) + self.color.0[k] as f32 * a).round() as u8;
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INK: Style = Style { weight: Weight::Regular, px: 16.0, color: Rgb([0, 0, 0]) };

    #[test]
    fn text_is_drawn_inside_its_measured_box() {
        let mut img = RgbImage::from_pixel(200, 40, Rgb([255, 255, 255]));
        INK.draw(&mut img, 10, 5, "starry_night");
        let width = INK.width("starry_night").ceil() as u32;
        let inked: Vec<(u32, u32)> = img.enumerate_pixels().filter(|(_, _, p)| p.0[0] < 128).map(|(x, y, _)| (x, y)).collect();
        assert!(inked.len() > 50, "some ink: {}", inked.len());
        assert!(inked.iter().all(|&(x, y)| x >= 10 && x <= 10 + width && y >= 5 && y < 5 + INK.line_height()), "ink outside its box");
    }

    /// The rule `fit` keeps, as it was first written: drop the last
    /// character until the rest with an ellipsis fits (one measure of the
    /// whole text per character dropped: quadratic).
    fn fit_by_removal(style: &Style, text: &str, max_width: f32) -> String {
        if style.width(text) <= max_width {
            return text.to_string();
        }
        let mut cut = text.to_string();
        while !cut.is_empty() {
            cut.pop();
            let candidate = format!("{}…", cut.trim_end());
            if style.width(&candidate) <= max_width {
                return candidate;
            }
        }
        String::new()
    }

    #[test]
    fn fit_cuts_where_dropping_characters_one_by_one_did() {
        let bold = Style { weight: Weight::Bold, ..INK };
        for text in ["Water Lilies, Claude Monet (1906)", "AVAVAV To Ta Yo WA", "a   b", "déjà vu — 東京", "x"] {
            for max in (0..240).map(|m| m as f32 * 0.75) {
                for style in [&INK, &bold] {
                    let cut = style.fit(text, max);
                    assert_eq!(cut, fit_by_removal(style, text, max), "{text:?} in {max} px");
                    assert!(style.width(&cut) <= max, "{text:?} in {max} px: {cut}");
                }
            }
        }
    }

    #[test]
    fn fitting_reads_only_what_fits() {
        // 1.2 MB of blended names: the quadratic rule measured the whole
        // text 1.2 million times (it never finished); this reads the
        // first dozen characters. The wrapped form likewise.
        let name = "Composition+".repeat(100_000);
        let cut = INK.fit(&name, 120.0);
        assert!(cut.ends_with('…') && INK.width(&cut) <= 120.0 && name.starts_with(cut.trim_end_matches('…')), "{cut}");
        let lines = INK.wrap(&name.replace('+', " "), 120.0, 3);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[2].ends_with('…'), "{lines:?}");
    }

    #[test]
    fn long_text_is_cut_and_wrapped_to_its_width() {
        let cut = INK.fit("a_very_long_painting_name_indeed", 80.0);
        assert!(cut.ends_with('…') && INK.width(&cut) <= 80.0, "{cut}");
        assert_eq!(INK.fit("short", 80.0), "short");
        let lines = INK.wrap("cuda out of memory while allocating forty two megabytes on device zero", 120.0, 3);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines.iter().all(|l| INK.width(l) <= 120.0), "{lines:?}");
        assert!(lines[2].ends_with('…'), "{lines:?}");
        assert_eq!(INK.wrap("two words", 200.0, 3), vec!["two words"]);
    }
}
