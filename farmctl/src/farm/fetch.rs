//! `farmctl fetch ID -o DIR`: the finished images and a contact sheet.

use std::path::Path;

use anyhow::{bail, Context, Result};
use stylefarm_proto as pb;
use stylefarm_shared::sheet::ContactSheet;

use super::{call, Conn};

/// Reads one object of a collection, chunk by chunk.
pub async fn download(url: &Conn, id: &str, key: &str) -> Result<Vec<u8>> {
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

/// Downloads every finished image to `dir` and builds a contact sheet: one
/// row per content, one column per style (each style's variants side by
/// side), empty where a job did not succeed. An image that cannot be
/// fetched is reported and skipped; the others are still written, and the
/// command fails at the end naming what is missing.
pub async fn fetch(url: &Conn, id: &str, dir: &Path) -> Result<()> {
    let c = call(url, |mut c| {
        let r = pb::CollectionRef { collection_id: id.into() };
        async move { c.get_collection(r).await }
    })
    .await?
    .into_inner();
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cols = c.styles * c.variants.max(1);
    let mut sheet = ContactSheet::new(c.contents, cols);
    let mut written = 0;
    let mut missing = Vec::new();
    for j in c.jobs.iter().filter(|j| j.state == pb::JobState::Succeeded as i32) {
        let name = stylefarm_shared::sheet::output_name(&j.content_name, &j.style_name, j.variant_index);
        let fetched = download(url, id, &j.output_key).await.and_then(|data| {
            let img = image::load_from_memory(&data).with_context(|| "the farm's copy is not an image")?.to_rgb8();
            Ok((data, img))
        });
        let (data, img) = match fetched {
            Ok(got) => got,
            Err(e) => {
                eprintln!("{name}: not fetched: {e:#}");
                missing.push(name);
                continue;
            }
        };
        let path = dir.join(&name);
        std::fs::write(&path, &data).with_context(|| format!("cannot write {}", path.display()))?;
        sheet.place(&img, j.style_index * c.variants.max(1) + j.variant_index, j.content_index);
        written += 1;
    }
    let sheet_path = dir.join("contact_sheet.png");
    sheet.into_image().save(&sheet_path).with_context(|| format!("cannot write {}", sheet_path.display()))?;
    eprintln!("fetched {written} of {} images into {}", c.jobs.len(), dir.display());
    println!("{}", sheet_path.display());
    if !missing.is_empty() {
        bail!("{} finished images could not be fetched: {}", missing.len(), missing.join(", "));
    }
    Ok(())
}
