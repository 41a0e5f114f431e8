//! What the dashboard serves that is not JSON: a job's files and its live
//! preview, streamed from storage, and a collection's zip (its images and
//! its contact sheet), built on the blocking threads.

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State as AxumState};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use stylefarm_proto as pb;
use stylefarm_proto::farm_server::Farm;

use super::{as_grpc, bad_request, caller, ApiError, ApiResult, Peer, Web};
use crate::paths;

/// The whole collection as a zip: every finished image (named
/// `content_style_vN.png`) and the contact sheet when the collection has at
/// most [`crate::limits::MAX_SHEET_CELLS`] cells. Built in a temporary
/// file, not in memory, then streamed, on the zips' own lane (one thread:
/// never the one that decodes submits); a client builds at most two at once.
pub(super) async fn zip(AxumState(web): AxumState<Web>, ConnectInfo(Peer(peer)): ConnectInfo<Peer>, headers: HeaderMap, Path(id): Path<String>) -> ApiResult<Response> {
    let (who, request) = as_grpc(&web, &headers, pb::CollectionRef { collection_id: id.clone() })?;
    let c = web.farm.get_collection(request).await?.into_inner();
    let client = if who.owner.is_empty() { peer.ip().to_string() } else { who.owner.clone() };
    let place = web.state.zips.admit(&client)?;
    let (store, dir, runtime, name) = (web.state.store.clone(), web.state.config.data_dir.clone(), tokio::runtime::Handle::current(), zip_name(&c));
    let built = web
        .state
        .sheets
        .run(move || {
            let _place = place;
            build_zip(&c, &store, &dir, &runtime)
        })
        .await?;
    let mut file = built.map_err(|(what, e)| {
        tracing::error!("zip of {id}: {what}: {e}");
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("the zip could not be built ({what}); see the coordinator's log"))
    })?;
    std::io::Seek::rewind(&mut file).map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("the zip could not be read back: {e}")))?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file)));
    let disposition = format!("attachment; filename=\"{name}.zip\"");
    Ok(([(header::CONTENT_TYPE, "application/zip".to_string()), (header::CONTENT_DISPOSITION, disposition)], body).into_response())
}

/// A collection's zip's file name: its name made safe, or its id.
fn zip_name(c: &pb::Collection) -> String {
    Some(stylefarm_shared::sheet::safe_name(&c.name)).filter(|n| !n.is_empty()).unwrap_or_else(|| c.collection_id.clone())
}

/// [`zip`]'s work, on a blocking thread (storage is read through the
/// runtime's handle): what failed and why, or the finished file. Entries
/// are dated now (a zip's default is 1980).
fn build_zip(
    c: &pb::Collection,
    store: &stylefarm_shared::storage::Store,
    dir: &std::path::Path,
    runtime: &tokio::runtime::Handle,
) -> Result<std::fs::File, (&'static str, String)> {
    use stylefarm_shared::sheet::{self, Cell};
    let failed = |what: &'static str| move |e: &dyn std::fmt::Display| (what, e.to_string());
    let file = tempfile::tempfile_in(dir).map_err(|e| failed("a temporary file")(&e))?;
    let mut zip = zip::ZipWriter::new(file);
    let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored).last_modified_time(zip_time(crate::db::now()));
    let cells = c.contents as u64 * c.styles as u64 * c.variants.max(1) as u64;
    let mut sheet = (cells <= crate::limits::MAX_SHEET_CELLS).then(|| sheet::collection::sheet(c));
    for j in c.jobs.iter().filter(|j| j.state == pb::JobState::Succeeded as i32) {
        let (row, col) = (j.content_index as usize, sheet::collection::column_of(c, j));
        let bytes = match runtime.block_on(store.get(&j.output_key)) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("zip of {}: {} not read: {e}", c.collection_id, j.output_key);
                if let Some(sheet) = sheet.as_mut() {
                    sheet.set(row, col, Cell::Missing("not in storage".into()));
                }
                continue;
            }
        };
        if let Some(sheet) = sheet.as_mut() {
            let cell = match image::load_from_memory(&bytes) {
                Ok(img) => Cell::Image(img.to_rgb8()),
                Err(e) => Cell::Missing(format!("not an image: {e}")),
            };
            sheet.set(row, col, cell);
        }
        let name = sheet::output_name(&j.content_name, &j.style_name, j.variant_index);
        zip.start_file(name, stored).map_err(|e| failed("writing it")(&e))?;
        std::io::Write::write_all(&mut zip, &bytes).map_err(|e| failed("writing it")(&e))?;
    }
    if let Some(sheet) = sheet {
        let mut png = std::io::Cursor::new(Vec::new());
        sheet.to_image().write_to(&mut png, image::ImageFormat::Png).map_err(|e| failed("the contact sheet")(&e))?;
        zip.start_file("contact_sheet.png", stored).map_err(|e| failed("writing it")(&e))?;
        std::io::Write::write_all(&mut zip, png.get_ref()).map_err(|e| failed("writing it")(&e))?;
        let pdf = sheet.to_pdf();
        zip.start_file("contact_sheet.pdf", stored).map_err(|e| failed("writing it")(&e))?;
        std::io::Write::write_all(&mut zip, &pdf).map_err(|e| failed("writing it")(&e))?;
    }
    zip.finish().map_err(|e| failed("finishing it")(&e))
}

/// `unix` as a zip entry's time (UTC; zip keeps no zone).
fn zip_time(unix: f64) -> zip::DateTime {
    use chrono::{Datelike, Timelike};
    chrono::DateTime::from_timestamp(unix as i64, 0)
        .and_then(|t| zip::DateTime::from_date_and_time(t.year() as u16, t.month() as u8, t.day() as u8, t.hour() as u8, t.minute() as u8, t.second() as u8).ok())
        .unwrap_or_default()
}

/// A job's folders, newest attempt first, if the caller may see the job.
async fn attempt_folders(web: &Web, headers: &HeaderMap, id: &str) -> ApiResult<Vec<String>> {
    let who = caller(web, headers)?;
    Ok(crate::jobs::attempt_folders(&web.state, &who, id).await?)
}

/// The job's latest preview (the newest attempt that wrote one); 404 until
/// a worker has written one.
pub(super) async fn preview(AxumState(web): AxumState<Web>, headers: HeaderMap, Path(id): Path<String>) -> ApiResult<Response> {
    for folder in attempt_folders(&web, &headers, &id).await? {
        let key = paths::in_attempt(&folder, stylefarm_shared::records::job_files::PREVIEW);
        if let Ok(bytes) = web.state.store.get(&key).await {
            return Ok(([(header::CONTENT_TYPE, "image/png"), (header::CACHE_CONTROL, "no-store")], bytes).into_response());
        }
    }
    Err(ApiError(StatusCode::NOT_FOUND, format!("job {id} has no preview yet")))
}

#[derive(Deserialize)]
pub(super) struct FileQuery {
    #[serde(default)]
    download: bool,
}

/// A file of the job's latest attempt, by the name `GET /api/jobs/{id}`
/// lists (`tb/…` for the TensorBoard events).
pub(super) async fn job_file(AxumState(web): AxumState<Web>, headers: HeaderMap, Path((id, name)): Path<(String, String)>, Query(q): Query<FileQuery>) -> ApiResult<Response> {
    let parts: Vec<&str> = name.split('/').collect();
    let valid = match parts.as_slice() {
        [file] => paths::file_name(file),
        [dir, file] => *dir == stylefarm_shared::records::job_files::TENSORBOARD && paths::file_name(file),
        _ => false,
    };
    if !valid {
        return Err(bad_request(format!("`{name}` is not the name of a job's file")));
    }
    let folder = attempt_folders(&web, &headers, &id).await?.into_iter().next().unwrap_or_default();
    let key = paths::in_attempt(&folder, &name);
    let unavailable = |e: stylefarm_shared::storage::StorageError| {
        tracing::error!("storage: read {key}: {e}");
        ApiError(StatusCode::SERVICE_UNAVAILABLE, "the farm's storage could not read the file; try again later".into())
    };
    match web.state.store.size(&key).await.map_err(unavailable)? {
        Some(_) => {}
        None => return Err(ApiError(StatusCode::NOT_FOUND, format!("job {id} has no file {name}"))),
    }
    // Streamed as storage hands it over: a checkpoint of gigabytes is
    // never held whole, and a slow reader only slows its own download.
    let (size, pieces) = web.state.store.get_stream(&key).await.map_err(unavailable)?;
    let body = Body::from_stream(pieces);
    let kind = match name.rsplit('.').next() {
        Some("png") => "image/png",
        Some("svg") => "image/svg+xml",
        Some("jsonl") | Some("dot") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    };
    let base = name.rsplit('/').next().unwrap_or("file");
    let disposition = if q.download || kind == "image/svg+xml" || kind == "application/octet-stream" {
        format!("attachment; filename=\"{base}\"")
    } else {
        format!("inline; filename=\"{base}\"")
    };
    let headers = [
        (header::CONTENT_TYPE, kind.to_string()),
        (header::CONTENT_DISPOSITION, disposition),
        (header::CACHE_CONTROL, "no-store".to_string()),
        (header::CONTENT_LENGTH, size.to_string()),
    ];
    Ok((headers, body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_zip_carries_every_image_and_a_contact_sheet_only_while_it_is_small() {
        let dir = tempfile::tempdir().unwrap();
        let store = stylefarm_shared::storage::Store::open(&dir.path().join("storage").to_string_lossy()).unwrap();
        let mut png = std::io::Cursor::new(Vec::new());
        image::RgbImage::from_pixel(4, 3, image::Rgb([200, 10, 10])).write_to(&mut png, image::ImageFormat::Png).unwrap();
        store.put("out.png", png.into_inner()).await.unwrap();
        for (variants, sheet) in [(2u32, true), (crate::limits::MAX_SHEET_CELLS as u32 + 1, false)] {
            let jobs = (0..variants)
                .map(|v| pb::Job {
                    content_name: "c".into(),
                    style_name: "s".into(),
                    variant_index: v,
                    state: pb::JobState::Succeeded as i32,
                    output_key: "out.png".into(),
                    ..Default::default()
                })
                .collect();
            let c = pb::Collection { contents: 1, styles: 1, variants, jobs, created_unix: crate::db::now(), ..Default::default() };
            let (store, path, runtime) = (store.clone(), dir.path().to_path_buf(), tokio::runtime::Handle::current());
            let file = tokio::task::spawn_blocking(move || build_zip(&c, &store, &path, &runtime)).await.unwrap().unwrap();
            let mut zip = zip::ZipArchive::new(file).unwrap();
            let names: Vec<String> = zip.file_names().map(String::from).collect();
            assert_eq!(names.iter().filter(|n| n.contains("_v")).count(), variants as usize);
            assert_eq!(names.contains(&"contact_sheet.png".to_string()), sheet, "{variants} cells");
            assert_eq!(names.contains(&"contact_sheet.pdf".to_string()), sheet, "{variants} cells");
            // Dated today, not 1980.
            let year = zip.by_index(0).unwrap().last_modified().map(|t| t.year()).unwrap_or(0);
            assert!(year >= 2026, "entries dated {year}");
        }
    }
}
