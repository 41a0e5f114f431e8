//! `farmctl fetch ID -o DIR`: the finished images and a contact sheet.

use std::path::Path;

use anyhow::{bail, Context, Result};
use stylefarm_proto as pb;
use stylefarm_shared::sheet::{self, Cell};

use super::{call, Coordinators};

/// Reads one object of a collection, chunk by chunk.
pub async fn download(url: &Coordinators, id: &str, key: &str) -> Result<Vec<u8>> {
    let mut chunks = call(url, |mut c| {
        let r = pb::FetchRequest { collection_id: id.into(), key: key.into() };
        async move { c.fetch(r).await }
    })
    .await?
    .into_inner();
    let mut data = Vec::new();
    while let Some(chunk) = chunks.message().await.map_err(super::status_err)? {
        if data.is_empty() {
            data.reserve(chunk.total_bytes as usize);
        }
        data.extend_from_slice(&chunk.data);
    }
    Ok(data)
}

/// Downloads every finished image to `dir` and writes the contact sheet
/// as `contact_sheet.png` (up to [`MAX_PNG_CELLS`] cells) and
/// `contact_sheet.pdf` (pages, any size): rows labelled by photo, columns
/// by painting and variant, cells that did not succeed marked. An image
/// that cannot be fetched is reported, marked and skipped; the others are
/// still written, and the command fails at the end naming what is missing.
pub async fn fetch(url: &Coordinators, id: &str, dir: &Path) -> Result<()> {
    let c = super::collection(url, id).await?;
    let id = c.collection_id.as_str();
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut sheet = sheet::collection::sheet(&c);
    let mut written = 0;
    let mut missing = Vec::new();
    for j in c.jobs.iter().filter(|j| j.state == pb::JobState::Succeeded as i32) {
        let name = sheet::output_name(&j.content_name, &j.style_name, j.variant_index);
        let (row, col) = (j.content_index as usize, sheet::collection::column_of(&c, j));
        let fetched = download(url, id, &j.output_key).await.and_then(|data| {
            let img = image::load_from_memory(&data).with_context(|| "the farm's copy is not an image")?.to_rgb8();
            Ok((data, img))
        });
        let (data, img) = match fetched {
            Ok(got) => got,
            Err(e) => {
                eprintln!("{name}: not fetched: {e:#}");
                sheet.set(row, col, Cell::Missing(format!("{e:#}")));
                missing.push(name);
                continue;
            }
        };
        let path = dir.join(&name);
        std::fs::write(&path, &data).with_context(|| format!("cannot write {}", path.display()))?;
        sheet.set(row, col, Cell::Image(img));
        written += 1;
    }
    let pdf_path = dir.join("contact_sheet.pdf");
    std::fs::write(&pdf_path, sheet.to_pdf()).with_context(|| format!("cannot write {}", pdf_path.display()))?;
    let cells = c.contents as u64 * c.styles as u64 * c.variants.max(1) as u64;
    let sheet_path = if cells <= MAX_PNG_CELLS {
        let png_path = dir.join("contact_sheet.png");
        sheet.to_image().save(&png_path).with_context(|| format!("cannot write {}", png_path.display()))?;
        png_path
    } else {
        eprintln!("{cells} cells: the contact sheet is the PDF only (a PNG holds at most {MAX_PNG_CELLS})");
        pdf_path
    };
    eprintln!("fetched {written} of {} images into {}", c.jobs.len(), dir.display());
    println!("{}", sheet_path.display());
    if !missing.is_empty() {
        bail!("{} finished images could not be fetched: {}", missing.len(), missing.join(", "));
    }
    Ok(())
}

/// The most cells a PNG contact sheet holds (about 8000 × 8000 pixels at
/// the cells' largest); a larger collection's sheet is the PDF's pages.
pub const MAX_PNG_CELLS: u64 = 1024;
