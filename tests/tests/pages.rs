//! The dashboard as a person reads it, on a wide screen and on a phone:
//! lists that filter, search, sort and update by themselves; a grid with
//! labelled variants, accessible cells, a state filter, a size control and
//! the keyboard; a loss chart with its legend, ticks, hover and the
//! iteration an attempt resumed from; ids by their start; buttons that say
//! why they cannot act; no sideways scrolling at 390 px; dark mode.
//!
//! Jobs are finished by a scripted worker (no rendering), so every state
//! is on the page at once. `STYLEFARM_SCREENSHOTS=DIR` saves the pages at
//! 1920 and 390 px wide there (the README's come from a real farm:
//! bench/screenshots.sh).

use std::process::Command;

use fantoccini::{Client, Locator};
use serde_json::Value;
use stylefarm_tests::browser::{assert_contract_kept, browser_with, chromedriver, phone, sign_in_strict, until};
use stylefarm_tests::scripted::ScriptedWorker;
use stylefarm_tests::*;

const USER: &str = "alice-token";
const WORKER: &str = "worker-token";

fn submit(farm: &Farm, args: &[&str]) -> String {
    let o = Command::new(bin("farmctl")).args(["--coordinator", &farm.url, "--token", USER, "submit"]).args(args).output().unwrap();
    assert!(o.status.success(), "submit failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().lines().last().unwrap().trim().to_string()
}

fn status(farm: &Farm, id: &str) -> Value {
    let o = Command::new(bin("farmctl")).args(["--coordinator", &farm.url, "--token", USER, "status", id, "--json"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// A loss log as a worker writes it: `n` records, the loss falling.
fn losses(n: u32) -> String {
    (0..n)
        .map(|i| {
            let f = 1.0 / (1.0 + i as f64);
            format!("{{\"iteration\":{i},\"content\":{},\"style\":{},\"tv\":0.0,\"total\":{},\"seconds\":{}}}\n", 50.0 * f, 2.0 * f, 0.5 * f + 2.0 * f * 100.0, i as f64 * 0.1)
        })
        .collect()
}

async fn save(c: &Client, name: &str) {
    if let Ok(dir) = std::env::var("STYLEFARM_SCREENSHOTS") {
        std::fs::write(std::path::Path::new(&dir).join(name), c.screenshot().await.unwrap()).unwrap();
    }
}

/// Whether the page scrolls sideways (its content is wider than the window).
const SIDEWAYS: &str = "return document.documentElement.scrollWidth > window.innerWidth ? \
    [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > window.innerWidth + 1 && !e.closest('.scroll')).slice(0, 5).map(e => e.tagName + '#' + e.id + '.' + e.className).join(' ') || 'yes' : '';";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_read_at_a_glance_from_a_phone_to_a_wide_screen() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries, stylefarm_tests::Need::Browser);
    let farm = Farm::start_with(&["--http-listen", "127.0.0.1:0", "--user-token", USER, "--worker-token", WORKER]);
    let page = farm.dashboard.clone().unwrap();
    let inputs = farm.dir.path().join("inputs");
    std::fs::create_dir_all(&inputs).unwrap();
    let (harbour, meadow) = (named_fixture(&inputs, "harbour", "content.png"), named_fixture(&inputs, "meadow", "init.png"));
    let (starry, waves) = (named_fixture(&inputs, "starry", "style.png"), named_fixture(&inputs, "waves", "content.png"));

    // One job that resumed from a checkpoint and finished, with its loss
    // log: the chart's collection, unnamed (so named by its inputs).
    let single = submit(&farm, &["--content", &harbour, "--style", &starry, "--size", "32x24", "--iters", "60", "--alpha", "2", "--beta", "100"]);
    let storage = farm.dir.path().join("data/storage");
    let mut w = ScriptedWorker::register(&farm.url, Some(WORKER), &storage, "scripted").await;
    let job = w.lease().await;
    let job_id = job.spec.job_id.clone();
    w.checkpoint_and_release(job, 20).await;
    let job = w.lease().await;
    w.resumed(&job, 20).await;
    w.write(&job, &[("losses.jsonl", losses(60).as_bytes())]);
    let photo = std::fs::read(fixture("content.png")).unwrap();
    w.complete(job, &photo).await;

    // Autumn prints: 2 photos × 2 paintings × 2 variants; five succeed,
    // one fails, one is cancelled, one stays queued.
    let autumn = submit(&farm, &[
        "--name", "Autumn prints", "--content", &harbour, "--content", &meadow, "--style", &starry, "--style", &waves,
        "--size", "32x24", "--iters", "3", "--variant", "alpha=0.5", "--variant", "alpha=0.25",
    ]);
    for _ in 0..5 {
        let job = w.lease().await;
        w.complete(job, &photo).await;
    }
    let job = w.lease().await;
    w.fail(job, "the photo could not be decoded").await;
    let autumn_jobs: Vec<String> = jobs(&status(&farm, &autumn)).iter().map(|j| j["job_id"].as_str().unwrap().to_string()).collect();
    let o = Command::new(bin("farmctl")).args(["--coordinator", &farm.url, "--token", USER, "cancel", "--job", &autumn_jobs[6]]).output().unwrap();
    assert!(o.status.success());

    let driver = chromedriver();
    let c = browser_with(&driver, &["--window-size=1920,1080"]).await;
    sign_in_strict(&c, &page, USER).await;
    until(&c, "the farm page", "return document.querySelector('#workers') ? 1 : 0", |v| v == 1).await;

    // A favicon.
    let icon = c.execute("const l = document.querySelector('link[rel=icon]'); return l ? fetch(l.href).then(r => r.status + ' ' + r.headers.get('content-type')) : 'none'", vec![]).await.unwrap();
    assert_eq!(icon, "200 image/svg+xml");

    // Collections: the unnamed one is named by its first photo and
    // painting; search, filter and sort; a new collection appears by
    // itself.
    c.goto(&format!("{page}#/collections")).await.unwrap();
    let names = "return [...document.querySelectorAll('#collections tbody tr')].map(r => r.querySelector('a').textContent)";
    until(&c, "both collections", names, |v| v.as_array().is_some_and(|a| a.len() == 2)).await;
    let listed = c.execute(names, vec![]).await.unwrap();
    assert_eq!(listed, serde_json::json!(["Autumn prints", "harbour × starry"]), "newest first");
    let text = c.find(Locator::Id("collections")).await.unwrap().text().await.unwrap();
    assert!(text.contains("2 photos × 2 paintings × 2 variants") && text.contains("1 photo × 1 painting × 1 variant"), "{text}");
    let year = c.execute("return String(new Date().getFullYear())", vec![]).await.unwrap();
    assert!(text.contains(year.as_str().unwrap()), "dated: {text}");
    c.find(Locator::Id("search")).await.unwrap().send_keys("autumn").await.unwrap();
    until(&c, "the search", names, |v| v == &serde_json::json!(["Autumn prints"])).await;
    c.find(Locator::Id("search")).await.unwrap().clear().await.unwrap();
    c.execute("document.getElementById('search').dispatchEvent(new Event('input'))", vec![]).await.unwrap();
    c.execute("const s = document.getElementById('state-filter'); s.value = 'failed'; s.dispatchEvent(new Event('input'))", vec![]).await.unwrap();
    until(&c, "the state filter", names, |v| v == &serde_json::json!(["Autumn prints"])).await;
    c.execute("const s = document.getElementById('state-filter'); s.value = ''; s.dispatchEvent(new Event('input')); \
               const o = document.getElementById('sort'); o.value = 'oldest'; o.dispatchEvent(new Event('input'))", vec![]).await.unwrap();
    until(&c, "oldest first", names, |v| v == &serde_json::json!(["harbour × starry", "Autumn prints"])).await;
    let third = submit(&farm, &["--name", "Arrived later", "--content", &meadow, "--style", &waves, "--size", "32x24", "--iters", "3"]);
    until(&c, "the new collection, without a reload", names, |v| v.as_array().is_some_and(|a| a.iter().any(|n| n == "Arrived later"))).await;

    // Autumn prints' grid: variants by what sets them apart, cells with
    // accessible names, a state filter, a size control, the keyboard, and
    // buttons that say why they cannot act.
    c.goto(&format!("{page}#/c/{autumn}")).await.unwrap();
    let heads = until(&c, "the grid", "return [...document.querySelectorAll('#grid th.col')].map(t => t.textContent)", |v| v.as_array().is_some_and(|a| a.len() == 4)).await;
    assert_eq!(heads, serde_json::json!(["starryalpha=0.5", "starryalpha=0.25", "wavesalpha=0.5", "wavesalpha=0.25"]));
    let labels = c.execute("return [...document.querySelectorAll('td.cell a.frame')].map(a => a.getAttribute('aria-label'))", vec![]).await.unwrap();
    assert_eq!(labels[0], "harbour × starry (alpha=0.5): succeeded", "{labels}");
    assert!(labels.as_array().unwrap().iter().any(|l| l.as_str().unwrap().ends_with("failed")), "{labels}");
    c.execute("const s = document.getElementById('show'); s.value = 'failed'; s.dispatchEvent(new Event('input'))", vec![]).await.unwrap();
    let dimmed = c.execute("return [document.querySelectorAll('td.cell.dim').length, document.querySelectorAll('td.cell:not(.dim)')[0].dataset.state]", vec![]).await.unwrap();
    assert_eq!(dimmed, serde_json::json!([7, "failed"]));
    c.execute("const z = document.getElementById('zoom'); z.value = 300; z.dispatchEvent(new Event('input'))", vec![]).await.unwrap();
    let width = c.execute("return document.querySelector('td.cell .frame').getBoundingClientRect().width", vec![]).await.unwrap();
    assert_eq!(width.as_f64(), Some(300.0));
    let cells = "return [...document.querySelectorAll('td.cell')].map(td => td.dataset.job)";
    let order = c.execute(cells, vec![]).await.unwrap();
    let focused = "return document.activeElement.closest('td.cell') ? document.activeElement.closest('td.cell').dataset.job : ''";
    c.execute("document.querySelector('td.cell a.frame').focus()", vec![]).await.unwrap();
    c.active_element().await.unwrap().send_keys("\u{E014}").await.unwrap(); // →
    assert_eq!(c.execute(focused, vec![]).await.unwrap(), order[1]);
    c.active_element().await.unwrap().send_keys("\u{E015}").await.unwrap(); // ↓
    assert_eq!(c.execute(focused, vec![]).await.unwrap(), order[5]);
    // The same jobs as a list: searched, filtered by state, sorted.
    let set = |id: &str, value: &str| format!("const e = document.getElementById('{id}'); e.value = '{value}'; e.dispatchEvent(new Event('input'))");
    let listed = "return document.getElementById('job-list').hidden ? null : [...document.querySelectorAll('#job-list tbody tr')].map(r => r.dataset.state + ' ' + r.querySelector('a').textContent)";
    c.execute(&set("show", ""), vec![]).await.unwrap();
    c.execute(&set("view", "list"), vec![]).await.unwrap();
    let rows = c.execute(listed, vec![]).await.unwrap();
    assert_eq!(rows.as_array().map(Vec::len), Some(8), "{rows}");
    assert_eq!(c.execute("return document.querySelector('#grid').closest('.scroll').hidden", vec![]).await.unwrap(), true, "the grid gives way to the list");
    c.execute(&set("job-search", "meadow"), vec![]).await.unwrap();
    c.execute(&set("job-sort", "state"), vec![]).await.unwrap();
    let rows = c.execute(listed, vec![]).await.unwrap();
    assert_eq!(rows, serde_json::json!(["failed meadow", "queued meadow", "cancelled meadow", "succeeded meadow"]));
    c.execute(&set("show", "failed"), vec![]).await.unwrap();
    let why = c.find(Locator::Id("job-list")).await.unwrap().text().await.unwrap();
    assert!(why.contains("the photo could not be decoded") && !why.contains("queued"), "{why}");
    c.execute(&set("show", ""), vec![]).await.unwrap();
    c.execute(&set("view", "grid"), vec![]).await.unwrap();
    let cancel = c.execute("const b = document.getElementById('cancel-collection'); return [b.disabled, b.title]", vec![]).await.unwrap();
    assert_eq!(cancel[0], false, "a job is still queued: {cancel}");
    c.execute("const s = document.getElementById('show'); s.value = ''; s.dispatchEvent(new Event('input')); \
               const z = document.getElementById('zoom'); z.value = 240; z.dispatchEvent(new Event('input'))", vec![]).await.unwrap();
    until(&c, "the thumbnails", "return [...document.querySelectorAll('img.thumb')].filter(i => i.naturalWidth > 0).length", |v| v.as_u64() == Some(5)).await;
    save(&c, "dashboard_1920.png").await;

    // The finished collection: nothing to cancel, nothing to retry, and
    // the page says so.
    c.goto(&format!("{page}#/c/{single}")).await.unwrap();
    let buttons = until(&c, "the buttons", "const b = document.getElementById('cancel-collection'), r = document.getElementById('retry-failed'); \
        const t = document.querySelector('h1'); \
        return b && t && t.textContent === 'harbour × starry' && document.querySelector('td.cell') ? [b.disabled, b.title, r.disabled, r.title] : null", |v| v.is_array()).await;
    assert_eq!(buttons, serde_json::json!([true, "nothing to cancel: every job has ended", true, "no job has failed"]));

    // A job's page names its variant by the collection's label for it.
    let autumn_status = status(&farm, &autumn);
    let second = jobs(&autumn_status).iter().find(|j| j["variant_index"] == 1).unwrap()["job_id"].as_str().unwrap().to_string();
    c.goto(&format!("{page}#/j/{second}")).await.unwrap();
    until(&c, "the job's variant label", "const t = document.querySelector('h1'); return t ? t.textContent : null", |v| v.as_str().is_some_and(|s| s.ends_with(" · alpha=0.25"))).await;

    // An id's start opens what it names, as git takes a commit's.
    c.goto(&format!("{page}#/j/{}", &job_id[..8])).await.unwrap();
    until(&c, "the whole id", "return location.hash", |v| v.as_str() == Some(&format!("#/j/{job_id}"))).await;

    // The chart: α·content, β·style and the total (no TV: its weight is
    // 0), a legend of line samples under the plot, axis titles, 4 to 6
    // ticks a side, the resumed attempt marked, the values on hover.
    let legend = until(&c, "the legend", "return [...document.querySelectorAll('#loss-legend li')].map(l => [l.textContent, !!l.querySelector('svg line')])", |v| {
        v.as_array().is_some_and(|a| !a.is_empty())
    })
    .await;
    assert_eq!(legend, serde_json::json!([["α·content", true], ["β·style", true], ["total", true]]));
    let below = c.execute("return document.getElementById('loss-legend').getBoundingClientRect().top >= document.getElementById('loss-curve').getBoundingClientRect().bottom", vec![]).await.unwrap();
    assert_eq!(below, true, "the legend is outside the plot");
    let ticks = c.execute("return [document.querySelectorAll('#loss-curve .xtick').length, document.querySelectorAll('#loss-curve .ytick').length, \
        [...document.querySelectorAll('#loss-curve .axis-title')].map(t => t.textContent)]", vec![]).await.unwrap();
    let (xs, ys) = (ticks[0].as_u64().unwrap(), ticks[1].as_u64().unwrap());
    assert!((4..=7).contains(&xs) && (3..=7).contains(&ys), "ticks: {ticks}");
    assert_eq!(ticks[2], serde_json::json!(["iteration", "loss (log scale)"]));
    let resumed = c.execute("return [...document.querySelectorAll('#loss-curve .resumed-label')].map(t => t.textContent)", vec![]).await.unwrap();
    assert_eq!(resumed, serde_json::json!(["attempt 2 resumed"]));
    // The style line is β·style: 100 × 2 at iteration 0, the top of the plot.
    c.execute("const s = document.getElementById('loss-curve'), b = s.getBoundingClientRect(); \
        s.dispatchEvent(new MouseEvent('mousemove', { clientX: b.left + 64 * b.width / s.viewBox.baseVal.width + 1, clientY: b.top + 50, bubbles: true }))", vec![]).await.unwrap();
    let tip = c.find(Locator::Id("loss-tip")).await.unwrap().text().await.unwrap();
    assert!(tip.contains("iteration 0") && tip.contains("β·style: 200") && tip.contains("α·content: 100"), "{tip}");
    // The attempts, dated, with how long each took.
    let attempts = c.find(Locator::Id("attempts")).await.unwrap().text().await.unwrap();
    assert!(attempts.contains(year.as_str().unwrap()) && attempts.contains("iteration 20"), "{attempts}");
    // The image at full size over the page.
    c.find(Locator::Css(".image-button")).await.unwrap().click().await.unwrap();
    let full = image::open(fixture("content.png")).unwrap().width() as u64;
    until(&c, "the lightbox", "const d = document.getElementById('lightbox'); return d && d.open ? d.querySelector('img').naturalWidth : 0", |v| v.as_u64() == Some(full)).await;
    c.execute("document.getElementById('lightbox').close()", vec![]).await.unwrap();

    // Every page so far read only what the contract defines.
    assert_contract_kept(&c).await;

    let _ = c.close().await;

    // A phone: no page scrolls sideways; tables become cards.
    let c = phone(&driver, 390, 844).await;
    sign_in_strict(&c, &page, USER).await;
    until(&c, "the farm page", "return document.querySelector('#workers') ? 1 : 0", |v| v == 1).await;
    assert_eq!(c.execute("return window.innerWidth", vec![]).await.unwrap(), 390, "a phone's width");
    for (route, ready) in [
        ("#/", "#workers"),
        ("#/collections", "#collections tbody tr"),
        (&*format!("#/c/{autumn}"), "td.cell"),
        (&*format!("#/j/{job_id}"), "#loss-legend"),
        ("#/submit", "#submit-form"),
        (&*format!("#/c/{third}"), "td.cell"),
    ] {
        c.goto(&format!("{page}{route}")).await.unwrap();
        until(&c, route, &format!("return document.querySelector('{ready}') ? 1 : 0"), |v| v == 1).await;
        let wide = c.execute(SIDEWAYS, vec![]).await.unwrap();
        assert_eq!(wide, "", "{route} scrolls sideways at 390 px: {wide}");
        if route.starts_with("#/j/") {
            save(&c, "dashboard_390.png").await;
            // The chart's text stays readable: drawn at its own size.
            let px = c.execute("return document.querySelector('#loss-curve .xtick').getBoundingClientRect().height", vec![]).await.unwrap();
            assert!(px.as_f64().unwrap() >= 10.0, "tick labels {px} px high");
        }
    }
    assert_contract_kept(&c).await;
    let _ = c.close().await;

    // Dark mode, from the system's preference.
    let dark = browser_with(&driver, &["--window-size=1280,900", "--force-dark-mode", "--blink-settings=preferredColorScheme=0"]).await;
    dark.goto(&page).await.unwrap();
    let colours = until(&dark, "the page", "return document.body ? [matchMedia('(prefers-color-scheme: dark)').matches, getComputedStyle(document.body).backgroundColor] : null", |v| {
        v.is_array()
    })
    .await;
    assert_eq!(colours, serde_json::json!([true, "rgb(18, 20, 23)"]));
    let _ = dark.close().await;
}
