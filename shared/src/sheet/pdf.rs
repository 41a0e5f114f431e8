//! The contact sheet as a PDF: one page per page picture, each an image
//! (deflated, lossless: its labels stay as sharp as the PNG's) filling its
//! page at 150 dots per inch (so a page of A4 landscape's pixels prints as
//! A4 landscape).

use image::RgbImage;
use pdf_writer::{Content, Filter, Finish, Name, Pdf, Rect, Ref, TextStr};

/// A page's pixels at most: A4 landscape at 150 dpi.
pub const PAGE_PX: (u32, u32) = (1754, 1240);
const DPI: f32 = 150.0;
/// zlib's default level: most of the gain, a fraction of the time of 9.
const DEFLATE_LEVEL: u8 = 6;

/// The PDF of `pages`, titled `title`.
pub fn write(title: &str, pages: &[RgbImage]) -> Vec<u8> {
    let catalog = Ref::new(1);
    let tree = Ref::new(2);
    let info = Ref::new(3);
    // Three objects a page: the page, its image, its drawing.
    let ids = |k: usize| (Ref::new(4 + 3 * k as i32), Ref::new(5 + 3 * k as i32), Ref::new(6 + 3 * k as i32));
    let mut pdf = Pdf::new();
    pdf.catalog(catalog).pages(tree);
    pdf.pages(tree).kids((0..pages.len()).map(|k| ids(k).0)).count(pages.len() as i32);
    pdf.document_info(info).title(TextStr(title)).creator(TextStr("Stylefarm"));
    for (k, page) in pages.iter().enumerate() {
        let (page_id, image_id, content_id) = ids(k);
        let (w, h) = (page.width() as f32 * 72.0 / DPI, page.height() as f32 * 72.0 / DPI);
        let pixels = miniz_oxide::deflate::compress_to_vec_zlib(page.as_raw(), DEFLATE_LEVEL);
        let mut image = pdf.image_xobject(image_id, &pixels);
        image.filter(Filter::FlateDecode);
        image.width(page.width() as i32);
        image.height(page.height() as i32);
        image.color_space().device_rgb();
        image.bits_per_component(8);
        image.finish();
        let mut p = pdf.page(page_id);
        p.parent(tree).media_box(Rect::new(0.0, 0.0, w, h)).contents(content_id);
        p.resources().x_objects().pair(Name(b"Sheet"), image_id);
        p.finish();
        let mut content = Content::new();
        content.save_state().transform([w, 0.0, 0.0, h, 0.0, 0.0]).x_object(Name(b"Sheet")).restore_state();
        pdf.stream(content_id, &content.finish());
    }
    pdf.finish()
}
