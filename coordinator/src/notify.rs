//! Notifications: when a collection that asked for one
//! (`SubmitRequest.notify_url`) has ended, one POST of a JSON summary —
//! its counts, each failure with its cause, links to its page and zip —
//! signed with HMAC-SHA256 under the operator's `--notify-secret`, retried
//! with backoff. Deliveries run in their own tasks with timeouts, so a
//! slow or dead receiver never holds up a lease or a page. Which
//! collections are due lives in the database, so a coordinator that
//! restarts mid-delivery delivers again (a receiver dedupes on
//! `X-Stylefarm-Delivery`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::command::Command;
use crate::context::State;
use crate::db::{Ended, Tried};
use crate::limits::MAX_NOTIFY_URL_BYTES;

/// How often the coordinator looks for collections that ended.
const POLL: Duration = Duration::from_secs(1);
/// Tries of one notification: waits of 1, 2, 4 … 60 s between them, about
/// four minutes in all.
const TRIES: u32 = 9;
/// One POST, connection included.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How long a claimed try is this coordinator's alone: past it (the
/// coordinator died mid-try), another one tries, under the same delivery.
const CLAIM: Duration = Duration::from_secs(30);
/// Deliveries in flight at once on one coordinator; more wait for the
/// next poll.
const IN_FLIGHT: usize = 16;
/// Of those, at most this many for one user, and for one receiver.
const IN_FLIGHT_EACH: usize = 4;
/// Due notifications read per poll.
const DUE_PER_POLL: u32 = 256;

/// The header carrying `t=<unix seconds>,sha256=<hex HMAC of
/// TIMESTAMP.URL.BODY>` ([`signed_bytes`]).
pub const SIGNATURE_HEADER: &str = "x-stylefarm-signature";
/// The header carrying the notification's id, the same on its retries.
pub const DELIVERY_HEADER: &str = "x-stylefarm-delivery";

/// Refuses a notify_url this farm will not call: only URLs under an
/// operator's `--notify-prefix` (so no user can aim the coordinator at an
/// address inside its network). Both are parsed as a browser would (so
/// `..`, `%2e%2e`, backslashes and tabs are resolved before comparing) and
/// compared by scheme, host, port and path, the path segment by segment: a
/// prefix `…/hooks` takes `…/hooks` and `…/hooks/x`, not `…/hooksx` nor
/// `…/hooks/../admin`. A URL with a user name or password is refused.
/// Returns the URL as it will be called (normalised), or "" for none.
pub(crate) fn check_url(url: &str, prefixes: &[String]) -> Result<String, Status> {
    if url.is_empty() {
        return Ok(String::new());
    }
    if url.len() > MAX_NOTIFY_URL_BYTES {
        return Err(Status::invalid_argument(format!(
            "notify_url is {} bytes; at most {MAX_NOTIFY_URL_BYTES}",
            url.len()
        )));
    }
    if prefixes.is_empty() {
        return Err(Status::invalid_argument("notify_url: this farm sends no notifications (its operator has set no --notify-prefix)"));
    }
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| Status::invalid_argument(format!("notify_url is not a URL: {e}")))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(Status::invalid_argument("notify_url: a user name or password in the URL is refused"));
    }
    let under = |prefix: &String| reqwest::Url::parse(prefix).is_ok_and(|p| is_under(&parsed, &p));
    if !matches!(parsed.scheme(), "http" | "https") || !prefixes.iter().any(under) {
        return Err(Status::invalid_argument(format!(
            "notify_url must be under one of this farm's --notify-prefix values: {}",
            prefixes.join(", ")
        )));
    }
    Ok(parsed.to_string())
}

/// Whether `url` lies under `prefix`: same scheme, host and port, no
/// user info in either, and `prefix`'s path whole segments of its path.
fn is_under(url: &reqwest::Url, prefix: &reqwest::Url) -> bool {
    let same_origin = url.scheme() == prefix.scheme()
        && url.host_str().is_some()
        && url.host_str() == prefix.host_str()
        && url.port_or_known_default() == prefix.port_or_known_default()
        && prefix.username().is_empty()
        && prefix.password().is_none();
    let (path, base) = (url.path(), prefix.path());
    let inside = match base.strip_suffix('/') {
        Some(_) => path.starts_with(base),
        None => path == base || path.strip_prefix(base).is_some_and(|rest| rest.starts_with('/')),
    };
    same_origin && inside
}

/// `sha256=` and the hex HMAC-SHA256 of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // An HMAC takes a key of any length.
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!(
        "sha256={}",
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// The JSON a receiver gets.
fn summary(ended: &Ended, delivery: &str, public_url: Option<&str>) -> Value {
    let c = &ended.collection;
    let counts = c.counts.clone().unwrap_or_default();
    let (jobs, state) = (counts.total(), counts.state().label());
    let links = public_url.map(|base| {
        let base = base.trim_end_matches('/');
        json!({ "collection": format!("{base}/#/c/{}", c.collection_id), "zip": format!("{base}/api/collections/{}/zip", c.collection_id) })
    });
    json!({
        "event": "collection.ended",
        "delivery": delivery,
        "collection_id": c.collection_id,
        "name": c.name,
        "created_unix": c.created_unix,
        "ended_unix": crate::db::now(),
        "state": state,
        "jobs": jobs,
        "counts": { "succeeded": counts.succeeded, "failed": counts.failed, "cancelled": counts.cancelled },
        "failures": ended.failures,
        "failures_not_listed": counts.failed.saturating_sub(ended.failures.len() as u32),
        "links": links,
    })
}

/// Deliveries one coordinator runs at once, and at most per user and per
/// receiver (scheme, host and port): one user's slow receiver never takes
/// every slot.
#[derive(Default)]
struct Slots {
    taken: HashMap<String, usize>,
    all: usize,
}

impl Slots {
    /// Takes a slot under each of `keys`, unless one of them (or all) is
    /// full.
    fn take(&mut self, keys: &[String]) -> bool {
        if self.all >= IN_FLIGHT || keys.iter().any(|k| self.taken.get(k).copied().unwrap_or(0) >= IN_FLIGHT_EACH) {
            return false;
        }
        self.all += 1;
        for k in keys {
            *self.taken.entry(k.clone()).or_default() += 1;
        }
        true
    }

    fn give_back(&mut self, keys: &[String]) {
        self.all = self.all.saturating_sub(1);
        for k in keys {
            if let Some(n) = self.taken.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    self.taken.remove(k);
                }
            }
        }
    }
}

/// Which slots a notification takes: its user's (when tokens name users)
/// and its receiver's.
fn slot_keys(owner: &str, url: &str) -> Vec<String> {
    let receiver = reqwest::Url::parse(url).map(|u| format!("{}://{}:{}", u.scheme(), u.host_str().unwrap_or(""), u.port_or_known_default().unwrap_or(0))).unwrap_or_default();
    let mut keys = vec![format!("receiver {receiver}")];
    if !owner.is_empty() {
        keys.push(format!("user {owner}"));
    }
    keys
}

/// Sends every due notification until `stop`: each poll, the due ones are
/// claimed in the database one try at a time (so among several
/// coordinators, and across restarts, one sends each try, under one
/// delivery id), and a delivery that must wait for its next try holds no
/// slot while it waits.
pub(crate) async fn run(state: Arc<State>, stop: CancellationToken) {
    let Some(secret) = state.config.notify_secret.clone() else {
        return;
    };
    let client = match reqwest::Client::builder()
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("notifications are off: cannot build an HTTP client: {e}");
            return;
        }
    };
    let slots: Arc<Mutex<Slots>> = Arc::default();
    let flying: Arc<Mutex<HashSet<String>>> = Arc::default();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
        let now = crate::db::now();
        let due = match state.db.read(move |db| db.collections_to_notify(now, DUE_PER_POLL)).await {
            Ok(Ok(due)) => due,
            Ok(Err(e)) => {
                tracing::warn!("notifications: reading the database: {e}");
                continue;
            }
            Err(_) => continue,
        };
        for (id, owner, url) in due {
            let keys = slot_keys(&owner, &url);
            {
                let mut flying = flying.lock().unwrap_or_else(|p| p.into_inner());
                if flying.contains(&id) || !slots.lock().unwrap_or_else(|p| p.into_inner()).take(&keys) {
                    continue;
                }
                flying.insert(id.clone());
            }
            let (state, client, secret, slots, flying, stop) = (state.clone(), client.clone(), secret.clone(), slots.clone(), flying.clone(), stop.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = try_once(&state, &client, secret.as_bytes(), &id) => {}
                }
                slots.lock().unwrap_or_else(|p| p.into_inner()).give_back(&keys);
                flying.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            });
        }
    }
}

/// One try of collection `id`'s notification, if this coordinator claims
/// it: POSTed once; a 2xx, a refusal (a 4xx other than 408 and 429) or
/// the last of [`TRIES`] ends it, anything else schedules the next try
/// after 1, 2, 4 … 60 s.
async fn try_once(state: &State, client: &reqwest::Client, secret: &[u8], id: &str) {
    let (owned, fresh, now) = (id.to_string(), uuid::Uuid::new_v4().to_string(), crate::db::now());
    let claimed = state.db.run(|reply| Command::ClaimNotification { id: owned, now, until: now + CLAIM.as_secs_f64(), delivery: fresh, reply }).await;
    let claim = match claimed {
        Ok(Ok(Some(claim))) => claim,
        Ok(Ok(None)) | Err(_) => return,
        Ok(Err(e)) => {
            tracing::warn!(collection = id, "notification: claiming it: {e}");
            return;
        }
    };
    let owned = id.to_string();
    let ended = match state.db.read(move |db| db.ended_collection(&owned)).await {
        Ok(Ok(Some(e))) => e,
        Ok(Ok(None)) | Err(_) => return,
        Ok(Err(e)) => {
            tracing::warn!(collection = id, "notification: reading the collection: {e}");
            return;
        }
    };
    let delivery = claim.delivery.clone();
    let body = summary(&ended, &delivery, state.config.public_url.as_deref()).to_string();
    let timestamp = crate::db::now().floor() as u64;
    let signed = signature(secret, &signed_bytes(timestamp, &ended.notify_url, body.as_bytes()));
    let sent = client
        .post(&ended.notify_url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, format!("t={timestamp},{signed}"))
        .header(DELIVERY_HEADER, &delivery)
        .body(body)
        .send()
        .await;
    let (outcome, retry) = match sent {
        Ok(r) if r.status().is_success() => (format!("delivered ({})", r.status()), false),
        Ok(r) => {
            let s = r.status();
            (format!("refused with {s}"), s.is_server_error() || s.as_u16() == 408 || s.as_u16() == 429)
        }
        Err(e) => (format!("not reached: {e}"), true),
    };
    let tries = claim.tries + 1;
    let tried = if retry && tries < TRIES {
        let delay = Duration::from_secs(1u64 << (tries - 1).min(6)).min(Duration::from_secs(60));
        tracing::info!(collection = id, %delivery, tries, "notification {outcome}; again in {delay:?}");
        Tried::Again(crate::db::now() + delay.as_secs_f64())
    } else {
        let delivered = outcome.starts_with("delivered");
        metrics::counter!("stylefarm_notifications_total", "outcome" => if delivered { "delivered" } else { "failed" }).increment(1);
        if delivered {
            tracing::info!(collection = id, %delivery, "notification {outcome}");
        } else {
            tracing::warn!(collection = id, %delivery, tries, "notification given up: {outcome}");
        }
        Tried::Done
    };
    if let Ok(Err(e)) = state.db.run(|reply| Command::NotificationTried { id: id.to_string(), delivery, tried, reply }).await {
        tracing::warn!(collection = id, "notification: recording the try: {e}");
    }
}

/// What the signature covers: the time it was made, the URL it was sent
/// to and the body, as `TIMESTAMP.URL.BODY` — so a receiver that checks
/// its own URL and the time refuses one replayed to another receiver or
/// later.
pub fn signed_bytes(timestamp: u64, url: &str, body: &[u8]) -> Vec<u8> {
    let mut bytes = format!("{timestamp}.{url}.").into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_urls_under_an_operators_prefix_are_accepted() {
        let prefixes = vec!["https://hooks.example.com/farm/".to_string()];
        assert_eq!(check_url("", &[]).unwrap(), "", "no notification asked");
        assert_eq!(check_url("https://hooks.example.com/farm/a1", &prefixes).unwrap(), "https://hooks.example.com/farm/a1");
        assert_eq!(check_url("https://HOOKS.example.com:443/farm/./a1", &prefixes).unwrap(), "https://hooks.example.com/farm/a1", "called as normalised");
        for (url, named) in [
            ("http://169.254.169.254/latest/meta-data", "--notify-prefix"),
            ("https://hooks.example.com/farmer", "--notify-prefix"),
            (
                "https://hooks.example.com.evil.test/farm/",
                "--notify-prefix",
            ),
            ("not a url", "not a URL"),
        ] {
            let e = check_url(url, &prefixes).unwrap_err();
            assert!(e.message().contains(named), "{url}: {}", e.message());
        }
        assert!(check_url("https://hooks.example.com/farm/", &[])
            .unwrap_err()
            .message()
            .contains("sends no notifications"));
        let long = format!(
            "https://hooks.example.com/farm/{}",
            "a".repeat(MAX_NOTIFY_URL_BYTES)
        );
        assert!(check_url(&long, &prefixes)
            .unwrap_err()
            .message()
            .contains("at most"));
    }

    /// What was POSTed outside the prefix before URLs were parsed: dot
    /// segments plain, encoded and split by a tab, backslashes, and user
    /// info that moved the host after a prefix written without its slash.
    #[test]
    fn tricks_that_leave_the_prefix_are_refused() {
        let slash = vec!["http://127.0.0.1:8000/hooks/".to_string()];
        let bare = vec!["http://127.0.0.1:8000/hooks".to_string()];
        let origin = vec!["http://127.0.0.1:8000".to_string()];
        for (url, prefixes) in [
            ("http://127.0.0.1:8000/hooks/../admin/drop", &slash),
            ("http://127.0.0.1:8000/hooks/%2e%2e/admin/drop", &slash),
            ("http://127.0.0.1:8000/hooks/%2E%2e/admin", &slash),
            ("http://127.0.0.1:8000/hooks/.\t./admin", &slash),
            ("http://127.0.0.1:8000/hooks\\..\\admin", &slash),
            ("http://127.0.0.1:8000/hooks@127.0.0.1:9000/steal", &bare),
            ("http://127.0.0.1:8000@evil.test/hooks/x", &slash),
            ("http://127.0.0.1:8000@127.0.0.1:9000/steal", &origin),
            ("http://user:pw@127.0.0.1:8000/hooks/x", &slash),
            ("http://127.0.0.1:8000/hooksx", &bare),
            ("http://127.0.0.1:8000/hooks/../hooksx", &bare),
            ("http://127.0.0.1:8001/hooks/x", &slash),
            ("https://127.0.0.1:8000/hooks/x", &slash),
        ] {
            assert!(check_url(url, prefixes).is_err(), "{url} under {prefixes:?}");
        }
        for (url, prefixes) in [("http://127.0.0.1:8000/hooks", &bare), ("http://127.0.0.1:8000/hooks/a/b", &bare), ("http://127.0.0.1:8000/hooks/a/../b", &slash), ("http://127.0.0.1:8000/hooks/x?y=1", &slash)] {
            assert!(check_url(url, prefixes).is_ok(), "{url} under {prefixes:?}");
        }
    }

    #[test]
    fn the_signature_is_rfc_4231_hmac_sha256() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
