//! The dashboard, as its users reach it: a real coordinator and worker on
//! loopback, a real browser (headless Chromium from Debian's packages,
//! driven over WebDriver by chromedriver), and the JSON API as a script
//! nobody here wrote would call it.
//!
//! `STYLEFARM_SCREENSHOT=path.png` saves the collection page while it
//! renders (the README's pictures come from bench/screenshots.sh).

use std::process::Command;
use std::time::{Duration, Instant};

use fantoccini::Locator;
use stylefarm_tests::browser::{assert_contract_kept, browser, chromedriver, open_strict, sign_in_strict, until};
use serde_json::{json, Value};
use stylefarm_tests::*;

const USER: &str = "alice-token";
const OTHER: &str = "bob-token";
const WORKER: &str = "worker-token";

fn farm_with_dashboard(extra: &[&str]) -> Farm {
    let mut flags = vec!["--http-listen", "127.0.0.1:0", "--user-token", USER, "--user-token", OTHER, "--worker-token", WORKER];
    flags.extend_from_slice(extra);
    Farm::start_with(&flags)
}

fn submit_as(farm: &Farm, token: &str, args: &[&str]) -> String {
    let o = Command::new(bin("farmctl")).args(["--coordinator", &farm.url, "--token", token, "submit"]).args(args).output().unwrap();
    assert!(o.status.success(), "submit failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().lines().last().unwrap().trim().to_string()
}

/// What the page's grid shows: one entry per cell.
const CELLS: &str = "return [...document.querySelectorAll('td.cell')].map(td => ({ id: td.dataset.job, state: td.dataset.state, \
    version: td.dataset.version || '', preview: td.dataset.preview === 'yes', \
    loaded: !!td.querySelector('img.thumb') && td.querySelector('img.thumb').naturalWidth > 0, \
    src: td.querySelector('img.thumb') ? td.querySelector('img.thumb').getAttribute('src') : '' }));";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_watches_a_collection_render_cancels_a_job_and_submits_another() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries, stylefarm_tests::Need::Weights, stylefarm_tests::Need::Browser);
    let mut farm = farm_with_dashboard(&[]);
    let page = farm.dashboard.clone().unwrap();
    let (content, style) = (fixture("content.png"), fixture("style.png"));
    // 2 × 2, slow enough to watch: ~150 iterations of 32×24 each, a
    // preview every 10.
    let id = submit_as(
        &farm,
        USER,
        &["--content", &content, "--content", &fixture("init.png"), "--style", &style, "--style", &content, "--size", "32x24", "--iters", "150", "--checkpoint-every", "10"],
    );
    farm.add_worker_with("w1", &["--token", WORKER]);

    let driver = chromedriver();
    let c = browser(&driver).await;
    open_strict(&c, &page).await;

    // Signed out: the sign-in form; a wrong token is refused on the page.
    c.wait().for_element(Locator::Id("token")).await.unwrap().send_keys("not-a-token").await.unwrap();
    c.find(Locator::Id("sign-in")).await.unwrap().click().await.unwrap();
    until(&c, "the refusal", "return document.querySelector('p.error') ? document.querySelector('p.error').textContent : ''", |v| {
        v.as_str().is_some_and(|s| s.contains("unknown token"))
    })
    .await;
    c.find(Locator::Id("token")).await.unwrap().send_keys(USER).await.unwrap();
    c.find(Locator::Id("sign-in")).await.unwrap().click().await.unwrap();

    // The farm page: the worker, busy.
    until(&c, "the worker on the farm page", "return document.querySelector('#workers') ? document.querySelector('#workers').textContent : ''", |v| {
        v.as_str().is_some_and(|s| s.contains("w1") && s.contains("cpu"))
    })
    .await;

    // The collection: four cells, thumbnails that appear and then change
    // as the renders move on.
    c.goto(&format!("{page}#/c/{id}")).await.unwrap();
    let cells = until(&c, "four cells", CELLS, |v| v.as_array().is_some_and(|a| a.len() == 4)).await;
    let first = cells[0]["id"].as_str().unwrap().to_string();
    let mut sources = std::collections::HashSet::new();
    let start = Instant::now();
    while sources.len() < 3 {
        let v = c.execute(CELLS, vec![]).await.unwrap();
        let cell = v.as_array().unwrap().iter().find(|x| x["id"] == first.as_str()).unwrap().clone();
        if cell["loaded"] == true {
            sources.insert(cell["src"].as_str().unwrap().to_string());
        }
        assert!(start.elapsed() < Duration::from_secs(120), "the first thumbnail did not change thrice: {sources:?} {cell}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Ok(path) = std::env::var("STYLEFARM_SCREENSHOT") {
        until(&c, "a second thumbnail", CELLS, |v| v.as_array().is_some_and(|a| a.iter().filter(|x| x["loaded"] == true).count() >= 2)).await;
        std::fs::write(&path, c.screenshot().await.unwrap()).unwrap();
    }

    // Cancel the last job (still queued behind the others) from its page.
    let last = cells[3]["id"].as_str().unwrap().to_string();
    c.goto(&format!("{page}#/j/{last}")).await.unwrap();
    c.wait().for_element(Locator::Id("cancel-job")).await.unwrap().click().await.unwrap();
    until(&c, "the job's state to read cancelled", "return document.querySelector('#job-state') ? document.querySelector('#job-state').textContent : ''", |v| {
        v == "cancelled"
    })
    .await;
    // … and the grid says so too, live.
    c.goto(&format!("{page}#/c/{id}")).await.unwrap();
    until(&c, "the cancelled cell", CELLS, |v| v.as_array().is_some_and(|a| a.iter().any(|x| x["id"] == last.as_str() && x["state"] == "cancelled"))).await;

    // The first job's detail once it has finished: its image, its loss
    // curve (four series), its attempt.
    until(&c, "the first job to finish", CELLS, |v| v.as_array().is_some_and(|a| a.iter().any(|x| x["id"] == first.as_str() && x["state"] == "succeeded"))).await;
    c.goto(&format!("{page}#/j/{first}")).await.unwrap();
    until(&c, "the loss curve", "return document.querySelectorAll('#loss-curve polyline.series').length", |v| v.as_u64() == Some(3) || v.as_u64() == Some(4)).await;
    until(&c, "the final image", "const i = document.querySelector('#job-image'); return i ? i.naturalWidth : 0", |v| v.as_u64() == Some(32)).await;
    let attempts = c.find(Locator::Css("#attempts tbody")).await.unwrap().text().await.unwrap();
    assert!(attempts.contains("succeeded"), "{attempts}");
    let files = c.find(Locator::Id("files")).await.unwrap().text().await.unwrap();
    assert!(files.contains("output.png") && files.contains("losses.jsonl") && files.contains("tb/events"), "{files}");
    // The worker's log of the attempt, on the page.
    until(&c, "the worker's log", "return document.querySelector('#worker-log') ? document.querySelector('#worker-log').textContent : ''", |v| {
        v.as_str().is_some_and(|t| t.contains("INFO completed"))
    })
    .await;

    // Every job that ran ends with its thumbnail; the cancelled one, which
    // never ran, has none.
    c.goto(&format!("{page}#/c/{id}")).await.unwrap();
    until(&c, "three finished thumbnails", CELLS, |v| {
        v.as_array().is_some_and(|a| {
            a.len() == 4 && a.iter().all(|x| if x["id"] == last.as_str() { x["loaded"] == false } else { x["state"] == "succeeded" && x["loaded"] == true })
        })
    })
    .await;

    // Submit from the page: two photos, one painting, two variants = four
    // jobs, counted before submitting; a bad variant is refused with the
    // service's own message, then a good one goes through.
    c.goto(&format!("{page}#/submit")).await.unwrap();
    let contents = c.wait().for_element(Locator::Id("contents")).await.unwrap();
    contents.send_keys(&format!("{content}\n{}", fixture("init.png"))).await.unwrap();
    c.find(Locator::Id("styles")).await.unwrap().send_keys(&style).await.unwrap();
    c.find(Locator::Id("variants")).await.unwrap().send_keys("alpha=0.01\noptimizer=sgd").await.unwrap();
    until(&c, "the job count", "return document.querySelector('#job-count').textContent", |v| v == "4 jobs").await;
    c.find(Locator::Id("name")).await.unwrap().send_keys("from-the-browser").await.unwrap();
    c.find(Locator::Id("max-side")).await.unwrap().clear().await.unwrap();
    c.find(Locator::Id("max-side")).await.unwrap().send_keys("32").await.unwrap();
    c.find(Locator::Id("iters")).await.unwrap().send_keys("5").await.unwrap();
    c.find(Locator::Id("submit-button")).await.unwrap().click().await.unwrap();
    until(&c, "the refusal of optimizer=sgd", "return document.querySelector('#submit-error').textContent", |v| {
        v.as_str().is_some_and(|s| s.contains("variant v1") && s.contains("sgd"))
    })
    .await;
    let variants = c.find(Locator::Id("variants")).await.unwrap();
    variants.clear().await.unwrap();
    variants.send_keys("alpha=0.01\nalpha=0.001").await.unwrap();
    c.find(Locator::Id("submit-button")).await.unwrap().click().await.unwrap();
    let hash = until(&c, "the new collection's page", "return location.hash", |v| v.as_str().is_some_and(|h| h.starts_with("#/c/") && !h.contains(&id))).await;
    let new_id = hash.as_str().unwrap().trim_start_matches("#/c/").to_string();
    until(&c, "the new grid", CELLS, |v| v.as_array().is_some_and(|a| a.len() == 4)).await;
    let o = Command::new(bin("farmctl")).args(["--coordinator", &farm.url, "--token", USER, "status", &new_id, "--json"]).output().unwrap();
    assert!(o.status.success());
    let s: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(jobs(&s).len(), 4, "{s}");
    // The page read nothing the contract does not define, on any view.
    assert_contract_kept(&c).await;
    let _ = c.close().await;
}

/// The JSON API from a plain HTTP client: tokens, owners, bad input, the
/// watcher limit, nothing leaking between users.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_checks_tokens_owners_and_input_like_the_grpc_service() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries);
    let farm = farm_with_dashboard(&["--max-watchers-per-client", "2"]);
    let page = farm.dashboard.clone().unwrap();
    let id = submit_as(&farm, USER, &["--content", &fixture("content.png"), "--style", &fixture("style.png"), "--size", "32x24", "--iters", "5"]);
    let http = reqwest::Client::new();
    let get = |path: &str, token: Option<&str>| {
        let mut r = http.get(format!("{page}{path}"));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };

    // The page itself needs no token, and keeps to its own origin.
    let index = get("", None).await.unwrap();
    assert_eq!(index.status(), 200);
    let csp = index.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("default-src 'self'"), "{csp}");

    // No token, a wrong one, a worker's: refused as over gRPC.
    assert_eq!(get("api/farm", None).await.unwrap().status(), 401);
    let wrong = get("api/farm", Some("guess")).await.unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.text().await.unwrap().contains("unknown token"));
    assert_eq!(get("api/farm", Some(WORKER)).await.unwrap().status(), 403);

    // The owner sees the collection; another user gets the same 404 as
    // for one that does not exist, on every route.
    assert_eq!(get(&format!("api/collections/{id}"), Some(USER)).await.unwrap().status(), 200);
    for route in ["", "/grid", "/events", "/zip"] {
        let r = get(&format!("api/collections/{id}{route}"), Some(OTHER)).await.unwrap();
        assert_eq!(r.status(), 404, "{route}");
    }
    let listed: Value = get("api/collections", Some(OTHER)).await.unwrap().json().await.unwrap();
    assert_eq!(listed["collections"].as_array().unwrap().len(), 0, "{listed}");
    let grid: Value = get(&format!("api/collections/{id}/grid"), Some(USER)).await.unwrap().json().await.unwrap();
    let job = grid["jobs"][0]["job_id"].as_str().unwrap().to_string();
    for route in ["", "/preview", "/files/output.png"] {
        assert_eq!(get(&format!("api/jobs/{job}{route}"), Some(OTHER)).await.unwrap().status(), 404, "{route}");
    }
    let r = http.post(format!("{page}api/jobs/{job}/cancel")).bearer_auth(OTHER).json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), 404);
    // An id's start names the job to its owner only; nonsense is refused.
    let found: Value = get(&format!("api/ids/{}", &job[..8]), Some(USER)).await.unwrap().json().await.unwrap();
    assert_eq!((found["kind"].as_str(), found["id"].as_str()), (Some("job"), Some(job.as_str())), "{found}");
    assert_eq!(get(&format!("api/ids/{}", &job[..8]), Some(OTHER)).await.unwrap().status(), 404);
    let r = get("api/ids/zz'--", Some(USER)).await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("not an id"));
    // Retrying a job that has not failed is a conflict, named.
    let r = http.post(format!("{page}api/jobs/{job}/retry")).bearer_auth(USER).json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), 409);
    assert!(r.text().await.unwrap().contains("not failed"));

    // The zip of a collection with nothing finished yet: the contact sheet.
    let r = get(&format!("api/collections/{id}/zip"), Some(USER)).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/zip");
    let zip = r.bytes().await.unwrap();
    assert!(zip.starts_with(b"PK\x03\x04") && zip.windows(17).any(|w| w == b"contact_sheet.png"), "{} bytes", zip.len());

    // A file name that tries to leave the job's folder is refused by name.
    let r = get(&format!("api/jobs/{job}/files/..%2F..%2Ffarm.db"), Some(USER)).await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("not the name of a job's file"));

    // Signing in sets a cookie the page's scripts cannot read, and that
    // cookie alone then authenticates.
    let r = http.post(format!("{page}api/session")).json(&json!({ "token": USER })).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    let pair = cookie.split(';').next().unwrap().to_string();
    let r = http.get(format!("{page}api/collections/{id}")).header("cookie", &pair).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = http.post(format!("{page}api/session")).json(&json!({ "token": "guess" })).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("set-cookie").is_none());

    // A state change needs a JSON body (which no cross-site form sends).
    let r = http.post(format!("{page}api/jobs/{job}/cancel")).header("cookie", &pair).body("x=1").send().await.unwrap();
    assert_eq!(r.status(), 415);

    // Bad submissions (the body is a SubmitRequest's JSON): each names its
    // problem; nothing is created.
    let bad = [
        (json!({ "contents": [{ "name": "a", "data": "!!" }], "styles": [] }), "contents[0].data: Invalid symbol"),
        (json!({ "contents": [], "styles": [], "bogus": 1 }), "unknown field `bogus`"),
        (json!({ "contents": [{ "name": "a", "data": "aGVsbG8=" }], "styles": [{ "name": "b", "data": "aGVsbG8=" }], "max_side": 32 }), "content a"),
        (json!({ "contents": [], "styles": [], "max_side": 32 }), "at least one content"),
        (json!({ "contents": [], "styles": [], "variants_json": [3] }), "expected a string"),
        (json!({ "contents": [{ "name": "a", "data": "aGVsbG8=" }], "styles": [{ "name": "b", "data": "aGVsbG8=" }], "variants_json": ["3"] }), "variant v0"),
    ];
    for (body, needle) in bad {
        let r = http.post(format!("{page}api/collections")).bearer_auth(USER).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let text = r.text().await.unwrap();
        assert!(text.contains(needle), "{body}: {text}");
    }
    let listed: Value = get("api/collections", Some(USER)).await.unwrap().json().await.unwrap();
    assert_eq!(listed["collections"].as_array().unwrap().len(), 1, "{listed}");

    // A good one through the API, and it shows in the listing.
    let png = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, std::fs::read(fixture("content.png")).unwrap());
    let body = json!({ "name": "api", "contents": [{ "name": "c", "data": png }], "styles": [{ "name": "s", "data": png }], "width": 32, "height": 24, "variants_json": ["{\"iters\": 3}"] });
    let r = http.post(format!("{page}api/collections")).bearer_auth(USER).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let made: Value = r.json().await.unwrap();
    assert_eq!(made["jobs"], 1);

    // Event streams count against the watcher limit per client (2 here).
    let a = get(&format!("api/collections/{id}/events"), Some(USER)).await.unwrap();
    let b = get(&format!("api/collections/{id}/events"), Some(USER)).await.unwrap();
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    let third = get(&format!("api/collections/{id}/events"), Some(USER)).await.unwrap();
    assert_eq!(third.status(), 429);
    assert!(third.text().await.unwrap().contains("--max-watchers-per-client 2"));
    drop((a, b));
    // Closed streams free their places.
    let start = Instant::now();
    loop {
        let r = get(&format!("api/collections/{id}/events"), Some(USER)).await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "closed event streams kept their places");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A coordinator restart with the collection page open: while it is down
/// the page says so (a banner) and shows no remaining times; once it is
/// back the page re-reads what changed meanwhile, and every cell equals
/// `farmctl status --json` within 2 s of the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_resyncs_after_a_coordinator_restart() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries, stylefarm_tests::Need::Browser);
    let http = free_port();
    let mut farm = Farm::start_with(&["--http-listen", &format!("127.0.0.1:{http}"), "--user-token", USER, "--worker-token", WORKER]);
    let page = farm.dashboard.clone().unwrap();
    let (content, style) = (fixture("content.png"), fixture("style.png"));
    let id = submit_as(&farm, USER, &["--content", &content, "--content", &fixture("init.png"), "--style", &style, "--size", "16x12", "--iters", "5"]);
    let driver = chromedriver();
    let c = browser(&driver).await;
    sign_in_strict(&c, &page, USER).await;
    c.goto(&format!("{page}#/c/{id}")).await.unwrap();
    until(&c, "two queued cells, live", "return [document.querySelectorAll('td.cell[data-state=queued]').length, document.querySelector('#live').textContent]", |v| {
        v[0] == 2 && v[1] == "live"
    })
    .await;

    farm.kill_coordinator();
    until(&c, "the banner", "return !!document.querySelector('#offline') && document.body.classList.contains('stale')", |v| v == true).await;
    farm.start_coordinator();
    let restarted = Instant::now();
    // Changed before the page could reconnect: only a fresh read shows it.
    let o = Command::new(bin("farmctl")).args(["--coordinator", &farm.url, "--token", USER, "cancel", &id]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new(bin("farmctl")).args(["--coordinator", &farm.url, "--token", USER, "status", &id, "--json"]).output().unwrap();
    let status: Value = serde_json::from_slice(&o.stdout).unwrap();
    let want: std::collections::BTreeMap<String, String> =
        jobs(&status).iter().map(|j| (j["job_id"].as_str().unwrap().to_string(), j["state"].as_str().unwrap().to_lowercase())).collect();
    assert!(want.values().all(|s| s == "cancelled"), "{status}");
    let shown = |v: &Value| -> std::collections::BTreeMap<String, String> {
        v.as_array().map(|a| a.iter().map(|x| (x["id"].as_str().unwrap_or("").to_string(), x["state"].as_str().unwrap_or("").to_string())).collect()).unwrap_or_default()
    };
    let mut last = Value::Null;
    while restarted.elapsed() < Duration::from_secs(10) {
        last = c.execute(CELLS, vec![]).await.unwrap_or(Value::Null);
        if shown(&last) == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = restarted.elapsed();
    assert_eq!(shown(&last), want, "the page never caught up with the restarted coordinator");
    assert!(took <= Duration::from_secs(2), "the page caught up {took:?} after the restart");
    until(&c, "the banner gone", "return !!document.querySelector('#offline')", |v| v == false).await;
    println!("the page equalled farmctl status {took:?} after the restart");
    assert_contract_kept(&c).await;
    let _ = c.close().await;
}

/// `farmctl workers --json` as the admin.
fn workers_as_admin(farm: &Farm) -> Vec<Value> {
    let o = Command::new(bin("farmctl"))
        .args(["--coordinator", &farm.url, "--token", ADMIN, "workers", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice::<Value>(&o.stdout).unwrap()["workers"].as_array().unwrap().clone()
}

const ADMIN: &str = "root-token";

/// `farmctl status ID --json` as the admin, polled until `pred` holds.
fn wait_as_admin(farm: &Farm, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let o = Command::new(bin("farmctl")).args(["--coordinator", &farm.url, "--token", ADMIN, "status", id, "--json"]).output().unwrap();
        let status: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        if o.status.success() && pred(&status) {
            return status;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "timed out waiting for {what}: {status}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_drains_a_worker_and_retries_a_failed_job_with_changes_on_the_page() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries, stylefarm_tests::Need::Weights, stylefarm_tests::Need::Browser);
    let mut farm = farm_with_dashboard(&["--admin-token", ADMIN]);
    farm.add_worker_with("w1", &["--token", WORKER, "--label", "pool=a100"]);
    let page = farm.dashboard.clone().unwrap();
    let id = submit_as(
        &farm,
        ADMIN,
        &["--content", &fixture("content.png"), "--style", &fixture("style.png"), "--size", "16x12", "--iters", "4", "--beta", "1e300"],
    );
    let _w2 = stylefarm_tests::scripted::ScriptedWorker::register(&farm.url, Some(WORKER), &farm.dir.path().join("data/storage"), "w2").await;
    let driver = chromedriver();
    let c = browser(&driver).await;
    sign_in_strict(&c, &page, ADMIN).await;

    // A user may look at workers, not act on them.
    let worker_id = until(&c, "w1 online on the farm page", "const r = document.querySelector('tr.worker[data-name=w1]'); return r ? [r.dataset.worker, r.querySelector('.worker-state').textContent] : null", |v| v[1] == "online").await[0]
        .as_str()
        .unwrap()
        .to_string();
    let refused = reqwest::Client::new().post(format!("{page}api/workers/{worker_id}/drain")).bearer_auth(USER).json(&json!({})).send().await.unwrap();
    assert_eq!(refused.status(), 403, "draining takes an admin token");

    // Labels: w1's own and the device's; a click on one shows only the
    // workers that have it, a second click all again.
    let rows = "return [...document.querySelectorAll('tr.worker')].map((r) => r.dataset.name).sort().join(' ')";
    until(&c, "both workers listed", rows, |v| v == "w1 w2").await;
    let labels = until(&c, "w1's labels", "return [...document.querySelectorAll('tr.worker[data-name=w1] button.label')].map((b) => b.textContent).join(' ')", |v| v.as_str().is_some_and(|s| s.contains("pool=a100"))).await;
    assert!(labels.as_str().unwrap().contains("device=cpu"), "the worker labels its device: {labels}");
    c.execute("[...document.querySelectorAll('tr.worker[data-name=w1] button.label')].find((b) => b.textContent === 'pool=a100').click()", vec![]).await.unwrap();
    until(&c, "only the pool's workers", rows, |v| v == "w1").await;
    let filter = until(&c, "the filter said", "const f = document.querySelector('#worker-filter'); return f ? f.textContent : ''", |v| v != "").await;
    assert!(filter.as_str().unwrap().contains("Workers with pool=a100 (1 of 2)"), "{filter}");
    c.find(Locator::Css("#worker-filter button.link")).await.unwrap().click().await.unwrap();
    until(&c, "every worker again", rows, |v| v == "w1 w2").await;

    // Drain from the page: the row and farmctl both say so; then resume.
    c.find(Locator::Css("tr.worker[data-name=w1] button.drain")).await.unwrap().click().await.unwrap();
    until(&c, "w1 drained", "return document.querySelector('tr.worker[data-name=w1] .worker-state').textContent", |v| v == "drained").await;
    let w1 = |listed: Vec<Value>| listed.into_iter().find(|w| w["name"] == "w1").unwrap();
    let listed = w1(workers_as_admin(&farm));
    assert_eq!((listed["draining"].as_bool(), listed["state"].as_str()), (Some(true), Some("ONLINE")), "{listed:?}");
    c.find(Locator::Css("tr.worker[data-name=w1] button.resume")).await.unwrap().click().await.unwrap();
    until(&c, "w1 leasing again", "return document.querySelector('tr.worker[data-name=w1] .worker-state').textContent", |v| v == "online").await;
    assert_eq!(w1(workers_as_admin(&farm))["draining"], false);

    // The job fails with β = 1e300; the page retries it with β = 1000.
    let st = wait_as_admin(&farm, &id, "the job to fail", |s| jobs(s)[0]["state"] == "FAILED");
    let job = jobs(&st)[0]["job_id"].as_str().unwrap().to_string();
    c.goto(&format!("{page}#/j/{job}")).await.unwrap();
    let beta = c.wait().for_element(Locator::Css("#retry-form input[name=beta]")).await.unwrap();
    assert_eq!(beta.prop("value").await.unwrap().as_deref(), Some("1e+300"));
    beta.clear().await.unwrap();
    beta.send_keys("1000").await.unwrap();
    // A value a submit would refuse is named, and nothing changes.
    let iters = c.find(Locator::Css("#retry-form input[name=iters]")).await.unwrap();
    iters.clear().await.unwrap();
    iters.send_keys("-3").await.unwrap();
    c.find(Locator::Id("retry-with-changes")).await.unwrap().click().await.unwrap();
    until(&c, "the refusal", "const a = document.querySelector('#job-detail [role=alert]'); return a ? a.textContent : ''", |v| {
        v.as_str().is_some_and(|s| s.contains("iters"))
    })
    .await;
    assert_eq!(jobs(&wait_as_admin(&farm, &id, "the job's state", |_| true))[0]["state"], "FAILED");
    iters.clear().await.unwrap();
    iters.send_keys("4").await.unwrap();
    c.find(Locator::Id("retry-with-changes")).await.unwrap().click().await.unwrap();
    until(&c, "the retried job to succeed on its page", "return document.querySelector('#job-state').textContent", |v| v == "succeeded").await;
    // Succeeded: its parameters as fields again, to render it anew.
    let params = until(&c, "the new parameters shown", "return [...document.querySelectorAll('#params tr')].map(r => r.textContent + (r.querySelector('input') ? r.querySelector('input').value : '')).join(' ')", |v| {
        v.as_str().is_some_and(|s| s.contains("beta1000"))
    })
    .await;
    let again = c.find(Locator::Id("retry-with-changes")).await.unwrap().text().await.unwrap();
    assert_eq!(again, "Render again with changes");
    assert!(!params.as_str().unwrap().contains("1e300"), "{params}");
    assert_contract_kept(&c).await;
    let attempts = c.execute("return document.querySelectorAll('#attempts tbody tr').length", vec![]).await.unwrap();
    assert_eq!(attempts, 2, "the failed attempt stays listed");
}

/// What a person does with a collection after submitting it, on the page:
/// a running cell shows how far it is from its first heartbeat (no
/// preview yet); "submitted … ago" counts on by itself; pause, resume and
/// a new priority reach the farm (farmctl sees them); a job's attempts
/// name their worker as it registered; the farm page rides out a
/// coordinator outage under a banner, keeping what it showed; the list
/// shows what each collection stores and the farm in all; and Delete
/// removes the collection (another user's token cannot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_is_paused_reprioritised_and_deleted_from_the_page_which_rides_out_an_outage() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries, stylefarm_tests::Need::Browser);
    let http = format!("127.0.0.1:{}", free_port());
    let mut farm = Farm::start_with(&["--http-listen", &http, "--user-token", USER, "--user-token", OTHER, "--worker-token", WORKER]);
    let page = farm.dashboard.clone().unwrap();
    let id = submit_as(&farm, USER, &["--content", &fixture("content.png"), "--content", &fixture("init.png"), "--style", &fixture("style.png"), "--size", "16x12", "--iters", "60"]);
    let storage = farm.dir.path().join("data/storage");
    let mut w = stylefarm_tests::scripted::ScriptedWorker::register(&farm.url, Some(WORKER), &storage, "night-shift").await;
    let driver = chromedriver();
    let c = browser(&driver).await;
    sign_in_strict(&c, &page, USER).await;
    c.goto(&format!("{page}#/c/{id}")).await.unwrap();
    until(&c, "the page live", "return document.querySelector('#live') && document.querySelector('#live').textContent", |v| v == "live").await;

    // Its first heartbeat, no preview: the cell says how far, not "starting".
    // (Leased only now: a browser that starts slowly would outlast the
    // lease of a job leased before it.)
    let job = w.lease().await;
    let job_id = job.spec.job_id.clone();
    let cell = format!("td.cell[data-job='{job_id}']");
    w.progress(&job, 15, 60).await;
    let progress = format!("const td = document.querySelector(\"{cell}\"); return [td.querySelector('.frame').textContent, td.querySelector('.state').textContent]");
    let shown = until(&c, "the cell's progress", &progress, |v| v[1] == "15/60").await;
    assert_eq!(shown[0], "running 25%", "{shown}");

    // "submitted … ago" ticks without the page being drawn again.
    let ago = "const el = document.querySelector('.title [data-ago]'); el.dataset.mark = el.dataset.mark || 'kept'; return [el.textContent, el.dataset.mark]";
    let first = c.execute(ago, vec![]).await.unwrap();
    let later = until(&c, "the submit time to tick", ago, |v| v[0] != first[0]).await;
    assert_eq!(later[1], "kept", "the same element, rewritten: {first} → {later}");

    // Pause and resume, then a new priority: farmctl sees each.
    let status = |farm: &Farm| -> Value {
        let o = Command::new(bin("farmctl")).args(["--coordinator", &farm.url, "--token", USER, "status", &id, "--json"]).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    c.find(Locator::Id("pause-collection")).await.unwrap().click().await.unwrap();
    until(&c, "the button to offer Resume", "return document.querySelector('#pause-collection').textContent", |v| v == "Resume").await;
    assert_eq!(status(&farm)["paused"], true);
    c.find(Locator::Id("pause-collection")).await.unwrap().click().await.unwrap();
    until(&c, "the button to offer Pause", "return document.querySelector('#pause-collection').textContent", |v| v == "Pause").await;
    assert_eq!(status(&farm)["paused"], false);
    let priority = c.find(Locator::Id("priority")).await.unwrap();
    priority.clear().await.unwrap();
    priority.send_keys("7").await.unwrap();
    c.find(Locator::Id("set-priority")).await.unwrap().click().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&farm)["priority"] != 7 {
        assert!(Instant::now() < deadline, "the priority never reached the farm: {}", status(&farm));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The attempt names its worker as it registered (its id in the title).
    c.goto(&format!("{page}#/j/{job_id}")).await.unwrap();
    let named = until(&c, "the attempt's worker", "const td = document.querySelector('#attempts td.worker'); return td ? [td.textContent, td.title] : null", |v| !v.is_null()).await;
    assert_eq!(named[0], "night-shift");
    assert_eq!(named[1].as_str(), Some(w.id.as_str()));

    // The farm page through an outage: a banner, and what it showed stays.
    c.goto(&format!("{page}#/")).await.unwrap();
    until(&c, "the farm page", "return !!document.querySelector('#workers tr.worker[data-name=night-shift]')", |v| v == true).await;
    farm.kill_coordinator();
    let outage = "return [!!document.querySelector('#offline'), !!document.querySelector('#workers'), document.querySelector('main').textContent.includes('Failed to fetch')]";
    let during = until(&c, "the banner over the farm page", outage, |v| v[0] == true).await;
    assert_eq!(during, json!([true, true, false]), "the workers stay shown and no bare error replaces them");
    farm.start_coordinator();
    until(&c, "the banner gone after the restart", "return !!document.querySelector('#offline')", |v| v == false).await;

    // What it stores, per collection and in all.
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(&farm)["stored_bytes"] == "0" {
        assert!(Instant::now() < deadline, "never measured");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.goto(&format!("{page}#/collections")).await.unwrap();
    let row = format!("const r = document.querySelector(\"tr[data-id='{id}'] td.stored\"); return r ? [r.textContent, document.querySelector('#collections-summary').textContent] : null");
    let listed = until(&c, "the list with bytes stored", &row, |v| !v.is_null() && v[0] != "0 B").await;
    assert!(listed[0].as_str().unwrap().ends_with("KiB") || listed[0].as_str().unwrap().ends_with(" B"), "{listed}");
    assert!(listed[1].as_str().unwrap().contains("stored in all"), "{listed}");

    // Another user cannot delete it; its owner can, from the page.
    let refused = reqwest::Client::new().delete(format!("{page}api/collections/{id}?cancel=true")).bearer_auth(OTHER).send().await.unwrap();
    assert_eq!(refused.status(), 404, "another user's collection is not found");
    c.goto(&format!("{page}#/c/{id}")).await.unwrap();
    c.wait().for_element(Locator::Id("delete-collection")).await.unwrap();
    c.execute("window.confirm = () => true", vec![]).await.unwrap();
    c.find(Locator::Id("delete-collection")).await.unwrap().click().await.unwrap();
    until(&c, "the list after the delete", "return location.hash", |v| v == "#/collections").await;
    let o = Command::new(bin("farmctl")).args(["--coordinator", &farm.url, "--token", USER, "status", &id]).output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains(&id[..8]), "{}", String::from_utf8_lossy(&o.stderr));
    assert_contract_kept(&c).await;
    let _ = c.close().await;
}
