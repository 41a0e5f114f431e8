//! `Farm.Submit`: a collection's request checked, its images read and
//! stored, its jobs created in one transaction. In the order that keeps
//! one client from taking the farm down:
//!
//! 1. the request's shape against [`crate::limits`] (counts, lengths), with
//!    nothing read or decoded yet;
//! 2. a place among the submits being read ([`crate::admission`]): one
//!    client has at most `--max-submits-per-client`, the rest are refused;
//! 3. each variant's parameters (cheap, the most common mistake), and that
//!    every job's Lease reply fits what a worker reads;
//! 4. each image read (a URL only under an operator's `--input-prefix`,
//!    confined there) and decoded and hashed on the blocking threads
//!    ([`crate::admission::Work`]), never on the runtime that answers
//!    heartbeats;
//! 5. the inputs stored (content-addressed) and the jobs created.

use prost::Message;
use sha2::{Digest, Sha256};
use stylefarm_params::JobParams;
use stylefarm_proto as pb;
use stylefarm_proto::labels::Labels;
use stylefarm_shared::image_io::{decode_rgb, ImageLimits};
use stylefarm_shared::size::{fit_max_side, MAX_RENDER_SIDE};
use stylefarm_shared::storage::ConfinedReadError;
use tonic::{Request, Response, Status};

use crate::auth::Caller;
use crate::checks::{check_fits, check_variant};
use crate::db::{NewCollection, NewJob};
use crate::limits::*;
use crate::paths;
use crate::command::Command;
use crate::context::State;
use crate::status::{call_err, db_err, storage_err};

/// How long reading one input named by URL may take.
const INPUT_READ_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// Image names become file names in `farmctl fetch`: letters, digits,
/// `.`, `_` and `-` only, at most 100, not starting with a dot.
fn check_name(name: &str, role: &str) -> Result<(), Status> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        let shown: String = name.chars().take(40).collect();
        Err(Status::invalid_argument(format!("{role} name {shown:?} must be 1-100 of A-Z a-z 0-9 . _ - and not start with a dot")))
    }
}

/// A blended column's name: its styles' names joined by `+`, as many as fit
/// [`MAX_BLEND_NAME_BYTES`] with the rest counted (`waves+dots+998_more`).
/// Every job of the column carries it, so it is bounded like any name: a
/// thousand styles' names joined whole made a 10 MB submit grow the
/// database by gigabytes.
fn blend_name(names: &[&str]) -> String {
    let whole = names.join("+");
    if whole.len() <= MAX_BLEND_NAME_BYTES {
        return whole;
    }
    let mut name = String::new();
    for (i, n) in names.iter().enumerate() {
        let more = format!("+{}_more", names.len() - i);
        let joined = if i == 0 { n.to_string() } else { format!("{name}+{n}") };
        if joined.len() + format!("+{}_more", names.len() - i - 1).len() > MAX_BLEND_NAME_BYTES {
            return if i == 0 { format!("{}_styles", names.len()) } else { format!("{name}{more}") };
        }
        name = joined;
    }
    name
}

/// An unnamed collection's name: its first photo and painting, and how
/// many more of each ("harbour × starry_night +2 photos +1 painting").
fn default_name(content: &str, style: &str, contents: usize, styles: usize) -> String {
    let more = |n: usize, one: &str, many: &str| match n {
        0 => String::new(),
        1 => format!(" +1 {one}"),
        n => format!(" +{n} {many}"),
    };
    let name = format!("{content} × {style}{}{}", more(contents - 1, "photo", "photos"), more(styles - 1, "painting", "paintings"));
    name.chars().take(MAX_COLLECTION_NAME_BYTES / 4).collect()
}

/// Step 1: counts and lengths, before anything is read.
fn check_shape(r: &pb::SubmitRequest) -> Result<(), Status> {
    let over = |what: String| Err(Status::invalid_argument(what));
    if r.idempotency_key.len() > 200 {
        return over("idempotency_key is longer than 200 bytes".into());
    }
    if r.name.len() > MAX_COLLECTION_NAME_BYTES {
        return over(format!("name is {} bytes; at most {MAX_COLLECTION_NAME_BYTES}", r.name.len()));
    }
    for (role, list) in [("contents", &r.contents), ("styles", &r.styles)] {
        if list.len() > MAX_INPUTS {
            return over(format!("{} {role}; at most {MAX_INPUTS} in one submit", list.len()));
        }
    }
    if r.variants_json.len() > MAX_VARIANTS {
        return over(format!("{} variants; at most {MAX_VARIANTS} in one submit", r.variants_json.len()));
    }
    if let Some((i, v)) = r.variants_json.iter().enumerate().find(|(_, v)| v.len() > MAX_VARIANT_JSON_BYTES) {
        return over(format!("variant v{i} is {} bytes of JSON; at most {MAX_VARIANT_JSON_BYTES}", v.len()));
    }
    Ok(())
}

/// An input validated and ready to store.
struct Input {
    name: String,
    key: String,
    /// `None`: already in the farm's storage under `key`.
    bytes: Option<Vec<u8>>,
    size: (u32, u32),
}

/// The bytes a decodable image of the configured limits can take at most,
/// checked before anything is read from storage: 8 bytes a pixel is more
/// than any format here needs for a real photo.
fn max_input_bytes(limits: &ImageLimits) -> u64 {
    limits.max_pixels.saturating_mul(8).max(1 << 20)
}

/// Who a submit counts against: the user, or (no tokens) the address.
fn client_of<T>(caller: &Caller, request: &Request<T>) -> String {
    if caller.owner.is_empty() {
        request.remote_addr().map(|a| a.ip().to_string()).unwrap_or_default()
    } else {
        caller.owner.clone()
    }
}

/// The largest Lease reply a job can be given: its spec with the longest
/// attempt folder and checkpoint key the farm forms.
fn lease_reply_bytes(job: &NewJob, collection_id: &str) -> usize {
    let prefix = paths::attempt(collection_id, &job.id, u32::MAX);
    let spec = pb::JobSpec {
        job_id: job.id.clone(),
        collection_id: collection_id.to_string(),
        content_key: job.content_key.clone(),
        style_keys: job.style_keys.clone(),
        params_json: job.params_json.clone(),
        width: job.width,
        height: job.height,
        checkpoint_every: job.checkpoint_every,
        snapshot_every: job.snapshot_every,
        resume_key: paths::in_attempt(&prefix, "checkpoint_4294967295.safetensors"),
        prefix,
    };
    pb::LeaseResponse { job: Some(spec), fencing_token: u64::MAX, attempt: u32::MAX }.encoded_len()
}

/// Step 4 for one image: read (if named by URL), then decode and hash
/// on the blocking threads.
async fn input(farm: &State, image: pb::InputImage, role: &str) -> Result<Input, Status> {
    let name = if image.name.is_empty() { role.to_string() } else { image.name };
    check_name(&name, role)?;
    let (bytes, stored_key) = match image.source {
        Some(pb::input_image::Source::Data(d)) => (d, None),
        Some(pb::input_image::Source::Url(url)) => read_input_url(farm, &url, role, &name).await?,
        None => return Err(Status::invalid_argument(format!("{role} {name} has neither data nor url"))),
    };
    let (limits, label) = (farm.config.limits, name.clone());
    let (size, digest, bytes) = farm
        .work
        .run(move || {
            let img = decode_rgb(&bytes, &label, limits)?;
            Ok::<_, stylefarm_shared::image_io::ImageError>((img.dimensions(), format!("{:x}", Sha256::digest(&bytes)), bytes))
        })
        .await?
        .map_err(|e| Status::invalid_argument(format!("{role} {e}")))?;
    let key = paths::input(&digest);
    let already = stored_key.as_deref() == Some(key.as_str());
    Ok(Input { name, key, bytes: (!already).then_some(bytes), size })
}

/// Reads an input named by URL: a content-addressed key of the farm's
/// own storage, or a URL under an operator's `--input-prefix`, read
/// confined to it (no link out, regular files only, within
/// [`INPUT_READ_PATIENCE`]). Every other URL gets the same refusal,
/// whatever exists there; the size is checked before a byte is read.
/// Returns the bytes and, for a farm key, the key.
async fn read_input_url(farm: &State, url: &str, role: &str, name: &str) -> Result<(Vec<u8>, Option<String>), Status> {
    let refuse = || {
        Status::invalid_argument(format!(
            "{role} {name}: inputs are uploaded bytes, an uploaded input's key (inputs/<sha256>) or a URL under one of the coordinator's --input-prefix locations"
        ))
    };
    let path = url.split_once("://").map_or(url, |(_, rest)| rest);
    let clean = !url.contains(['\0', '\\', '%']) && !path.contains("//") && !path.split('/').any(|p| p == ".." || p == ".");
    if !clean {
        return Err(refuse());
    }
    let (store, key, farm_key) = if paths::is_input(url) {
        (&farm.store, url.to_string(), true)
    } else {
        let found = farm.input_stores.iter().find_map(|(prefix, store)| {
            url.strip_prefix(prefix.as_str()).filter(|rest| !rest.is_empty() && !rest.starts_with('/')).map(|rest| (store, rest.to_string()))
        });
        let (store, rest) = found.ok_or_else(refuse)?;
        (store, rest, false)
    };
    let limit = max_input_bytes(&farm.config.limits);
    let bytes = store.get_confined(&key, limit, INPUT_READ_PATIENCE).await.map_err(|e| match e {
        ConfinedReadError::Missing(_) => Status::invalid_argument(format!("{role} {name}: `{url}` does not exist or is not a regular file")),
        ConfinedReadError::TooLarge { size, limit, .. } => {
            Status::invalid_argument(format!("{role} {name}: {size} bytes is over the input limit of {limit} bytes"))
        }
        ConfinedReadError::TimedOut { seconds, .. } => Status::unavailable(format!("{role} {name}: `{url}` was not read within {seconds} s; try again later")),
        ConfinedReadError::Storage(e) => storage_err(&format!("read {role} {name}"), e),
    })?;
    Ok((bytes.to_vec(), farm_key.then_some(key)))
}

/// `Farm.Submit`.
pub(crate) async fn submit_collection(farm: &State, request: Request<pb::SubmitRequest>) -> Result<Response<pb::SubmitResponse>, Status> {
    let caller = Caller::of(&request);
    let client = client_of(&caller, &request);
    // The dashboard takes the place before it parses the body.
    let held = request.extensions().get::<std::sync::Arc<crate::admission::Permit>>().cloned();
    let mut r = request.into_inner();
    check_shape(&r)?;
    r.notify_url = crate::notify::check_url(&r.notify_url, &farm.config.notify_prefixes)?;
    let require = Labels::parse(&r.require).map_err(|e| Status::invalid_argument(format!("require: {e}")))?;
    let (owner, key) = (caller.owner.clone(), r.idempotency_key.clone());
    if let Some((collection_id, jobs)) = farm.db.read(move |db| db.submitted(&owner, &key)).await?.map_err(db_err)? {
        return Ok(Response::new(pb::SubmitResponse { collection_id, jobs }));
    }
    if r.contents.is_empty() || r.styles.is_empty() {
        return Err(Status::invalid_argument("a collection needs at least one content and one style image"));
    }
    let _place = match held {
        Some(place) => place,
        None => std::sync::Arc::new(farm.submits.admit(&client)?),
    };
    let variants_json = if r.variants_json.is_empty() { vec!["{}".to_string()] } else { std::mem::take(&mut r.variants_json) };
    // Blended: each job reads every style; otherwise one style a job.
    let (style_columns, styles_per_job) = if r.blend_styles { (1, r.styles.len()) } else { (r.styles.len(), 1) };
    let jobs_total = r.contents.len() * style_columns * variants_json.len();
    if jobs_total > farm.config.max_jobs {
        return Err(Status::resource_exhausted(format!("{jobs_total} jobs is more than the limit of {}", farm.config.max_jobs)));
    }
    // Parameters first: cheap, and the most common mistake.
    let variants = variants_json.iter().enumerate().map(|(i, v)| check_variant(&format!("variant v{i}"), v, styles_per_job)).collect::<Result<Vec<_>, _>>()?;
    if r.max_side == 0 && (r.width == 0 || r.height == 0 || r.width > MAX_RENDER_SIDE || r.height > MAX_RENDER_SIDE) {
        return Err(Status::invalid_argument(format!(
            "size {}x{} is not a render size (1..{MAX_RENDER_SIDE} a side), and no max_side was given",
            r.width, r.height
        )));
    }
    if r.max_side > MAX_RENDER_SIDE {
        return Err(Status::invalid_argument(format!("max_side {} is over {MAX_RENDER_SIDE}", r.max_side)));
    }
    let mut contents = Vec::new();
    for c in std::mem::take(&mut r.contents) {
        contents.push(input(farm, c, "content").await?);
    }
    let mut styles = Vec::new();
    for s in std::mem::take(&mut r.styles) {
        styles.push(input(farm, s, "style").await?);
    }
    let mut sizes = Vec::new();
    for c in &contents {
        sizes.push(if r.max_side > 0 { fit_max_side(c.size, r.max_side).map_err(|e| Status::invalid_argument(e.to_string()))? } else { (r.width, r.height) });
    }
    check_devices(farm, &variants, &contents, &sizes).await?;
    if !r.wait_for_pool {
        check_pool(farm, &require).await?;
    }
    // Everything is valid: store the inputs (content-addressed, so a
    // retry rewrites the same objects), then create the jobs at once.
    let mut stored = std::collections::BTreeSet::new();
    for input in contents.iter_mut().chain(styles.iter_mut()) {
        if let Some(bytes) = input.bytes.take() {
            if stored.insert(input.key.clone()) {
                farm.store.put(&input.key, bytes).await.map_err(|e| storage_err("store the inputs", e))?;
            }
        }
    }
    // A column of the collection: one style, or (blended) all of them.
    let columns: Vec<(String, Vec<String>)> = if r.blend_styles {
        vec![(blend_name(&styles.iter().map(|s| s.name.as_str()).collect::<Vec<_>>()), styles.iter().map(|s| s.key.clone()).collect())]
    } else {
        styles.iter().map(|s| (s.name.clone(), vec![s.key.clone()])).collect()
    };
    let collection_id = uuid::Uuid::new_v4().to_string();
    let checkpoint_every = if r.checkpoint_every == 0 { farm.config.default_checkpoint_every } else { r.checkpoint_every };
    let params_json: Vec<String> = variants.iter().map(JobParams::to_json).collect();
    let mut jobs = Vec::new();
    for (ci, (c, &(width, height))) in contents.iter().zip(&sizes).enumerate() {
        for (si, (style_name, style_keys)) in columns.iter().enumerate() {
            for (vi, params) in variants.iter().enumerate() {
                jobs.push(NewJob {
                    id: uuid::Uuid::new_v4().to_string(),
                    content_index: ci as u32,
                    style_index: si as u32,
                    variant_index: vi as u32,
                    content_name: c.name.clone(),
                    style_name: style_name.clone(),
                    content_key: c.key.clone(),
                    style_keys: style_keys.clone(),
                    params_json: params_json[vi].clone(),
                    width,
                    height,
                    iterations: params.render.iterations as u32,
                    checkpoint_every,
                    snapshot_every: r.snapshot_every,
                    min_memory: params.render.least_peak_bytes(width, height),
                });
            }
        }
    }
    // What is accepted, a worker can receive: the first job of each
    // variant is the largest (every job of a variant has the same
    // parameters and as many style keys).
    if let Some(bytes) = jobs.iter().take(variants.len()).map(|j| lease_reply_bytes(j, &collection_id)).max() {
        if bytes > MAX_WORKER_MESSAGE_BYTES {
            return Err(Status::invalid_argument(format!(
                "a job of this collection would reach its worker as {bytes} bytes, over the {MAX_WORKER_MESSAGE_BYTES} a worker reads; use fewer styles per job"
            )));
        }
    }
    let name = if r.name.is_empty() { default_name(&contents[0].name, &columns[0].0, contents.len(), columns.len()) } else { r.name };
    let max_queued = farm.config.policy.max_queued(&caller.owner);
    let new = NewCollection {
        id: collection_id,
        owner: caller.owner,
        idempotency_key: r.idempotency_key,
        name,
        priority: r.priority,
        shape: (contents.len() as u32, columns.len() as u32, variants.len() as u32),
        jobs,
        notify_url: r.notify_url,
        max_queued,
        require: require.written(),
    };
    let (collection_id, jobs) = farm.db.run(|reply| Command::CreateCollection { collection: new, reply }).await?.map_err(call_err)?;
    farm.preempt_now.notify_one();
    Ok(Response::new(pb::SubmitResponse { collection_id, jobs }))
}

/// What no registered device could hold is refused now, not failed on
/// every worker later.
async fn check_devices(farm: &State, variants: &[JobParams], contents: &[Input], sizes: &[(u32, u32)]) -> Result<(), Status> {
    let Some(largest) = largest_device(farm).await? else {
        return Ok(());
    };
    for (vi, params) in variants.iter().enumerate() {
        for (c, &size) in contents.iter().zip(sizes) {
            // A worker tiles what its memory does not hold whole: the
            // least it needs is in tiles of the farm's floor.
            let bytes = params.render.least_peak_bytes(size.0, size.1);
            check_fits(bytes, largest, || format!("{} at {}x{} (variant {vi})", c.name, size.0, size.1))?;
        }
    }
    Ok(())
}

/// A requirement no worker ever registered with is refused now (a typo
/// would wait forever), naming what is missing.
async fn check_pool(farm: &State, require: &Labels) -> Result<(), Status> {
    if require.is_empty() {
        return Ok(());
    }
    let registered: Vec<Labels> = farm.db.read(|db| db.worker_label_sets()).await?.map_err(db_err)?;
    if registered.iter().any(|labels| labels.satisfy(require)) {
        return Ok(());
    }
    let missing = registered.iter().map(|l| l.missing(require)).min_by_key(Vec::len).unwrap_or_else(|| require.iter().collect());
    Err(Status::failed_precondition(format!(
        "no worker has ever registered with {} (the nearest lacks {}); start one with --label, or submit with --wait-for-pool to queue anyway",
        require.iter().collect::<Vec<_>>().join(" "),
        missing.join(" ")
    )))
}

/// The most memory a worker registered in the last day offers (`None`:
/// none said): what a job must fit to be leased at all.
pub(crate) async fn largest_device(farm: &State) -> Result<Option<u64>, Status> {
    farm.db.read(|db| db.largest_device(24.0 * 3600.0)).await?.map_err(db_err)
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blended_name_is_bounded_and_counts_what_it_leaves_out() {
        assert_eq!(blend_name(&["waves", "dots"]), "waves+dots");
        let long: Vec<String> = (0..1000).map(|i| format!("{i:0>100}")).collect();
        let names: Vec<&str> = long.iter().map(String::as_str).collect();
        assert_eq!(blend_name(&names), "1000_styles", "not even one 100-byte name fits beside the count");
        let short: Vec<String> = (0..1000).map(|i| format!("s{i}")).collect();
        let names: Vec<&str> = short.iter().map(String::as_str).collect();
        let name = blend_name(&names);
        assert!(name.len() <= MAX_BLEND_NAME_BYTES, "{name}");
        let (kept, more) = name.rsplit_once('+').unwrap();
        let kept = kept.split('+').count();
        assert_eq!(more, format!("{}_more", 1000 - kept), "{name}");
        assert!(name.starts_with("s0+s1+s2+"), "{name}");
        // One name more would not fit.
        assert!(format!("{}+{}+{}_more", name.rsplit_once('+').unwrap().0, names[kept], 1000 - kept - 1).len() > MAX_BLEND_NAME_BYTES);
    }

    #[test]
    fn an_unnamed_collection_is_named_by_its_first_photo_and_painting() {
        assert_eq!(default_name("harbour", "starry_night", 1, 1), "harbour × starry_night");
        assert_eq!(default_name("harbour", "starry_night", 3, 2), "harbour × starry_night +2 photos +1 painting");
        let long = default_name(&"h".repeat(100), &"s".repeat(100), 2, 2);
        assert!(long.len() <= MAX_COLLECTION_NAME_BYTES, "{} bytes", long.len());
    }

    #[test]
    fn shapes_over_the_limits_are_refused_before_anything_is_read() {
        let image = pb::InputImage::default();
        let cases: Vec<(pb::SubmitRequest, &str)> = vec![
            (pb::SubmitRequest { contents: vec![image.clone(); MAX_INPUTS + 1], ..Default::default() }, "contents"),
            (pb::SubmitRequest { styles: vec![image.clone(); MAX_INPUTS + 1], ..Default::default() }, "styles"),
            (pb::SubmitRequest { variants_json: vec!["{}".into(); MAX_VARIANTS + 1], ..Default::default() }, "variants"),
            (pb::SubmitRequest { variants_json: vec![" ".repeat(MAX_VARIANT_JSON_BYTES + 1)], ..Default::default() }, "variant v0"),
            (pb::SubmitRequest { name: "n".repeat(MAX_COLLECTION_NAME_BYTES + 1), ..Default::default() }, "name"),
            (pb::SubmitRequest { idempotency_key: "k".repeat(201), ..Default::default() }, "idempotency_key"),
        ];
        for (r, needle) in cases {
            let e = check_shape(&r).unwrap_err();
            assert!(e.code() == tonic::Code::InvalidArgument && e.message().contains(needle), "{needle}: {e:?}");
        }
        let fine = pb::SubmitRequest { contents: vec![image; MAX_INPUTS], variants_json: vec!["{}".into(); MAX_VARIANTS], ..Default::default() };
        assert!(check_shape(&fine).is_ok());
    }

    #[test]
    fn a_lease_reply_that_would_not_fit_a_worker_is_caught_at_submit() {
        // Every parameter list at its longest: 16 layers each, 8 scales, a
        // blend weight per style.
        let layers: Vec<_> = stylefarm_params::arch::VGG19.iter().map(|l| stylefarm_params::LayerWeight::new(l.name, 1.0)).collect();
        let blended = |styles: usize| {
            let params = stylefarm_params::RenderParams {
                content_layers: layers.clone(),
                style_layers: layers.clone(),
                scales: (1..=stylefarm_params::params::MAX_SCALES).map(|i| i as f64 / 10.0).collect(),
                style_blend: vec![1.0; styles],
                ..Default::default()
            };
            params.validate(styles).unwrap();
            NewJob {
                id: uuid::Uuid::new_v4().to_string(),
                content_index: 0,
                style_index: 0,
                variant_index: 0,
                content_name: "c".into(),
                style_name: "s".into(),
                content_key: paths::input(&"0".repeat(64)),
                style_keys: vec![paths::input(&"0".repeat(64)); styles],
                params_json: serde_json::to_string(&params).unwrap(),
                width: 1,
                height: 1,
                iterations: 1,
                checkpoint_every: 1,
                snapshot_every: 0,
                min_memory: 0,
            }
        };
        let collection = uuid::Uuid::new_v4().to_string();
        let fits = lease_reply_bytes(&blended(10_000), &collection);
        assert!(fits < MAX_WORKER_MESSAGE_BYTES, "10,000 blended styles: {fits} bytes");
        // The most styles a submit may hold, blended into every job: over
        // what a worker reads, so submit refuses it.
        let over = lease_reply_bytes(&blended(MAX_INPUTS), &collection);
        assert!(over > MAX_WORKER_MESSAGE_BYTES, "{over} bytes");
    }
}
