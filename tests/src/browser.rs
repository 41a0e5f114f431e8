//! A real browser for the dashboard's tests: headless Chromium from
//! Debian's packages, driven over WebDriver by chromedriver on loopback.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::free_port;

/// chromedriver on a free port, in a process group of its own; on drop
/// the whole group is killed, the Chromium it started included (a session
/// a failed or finished test left open would otherwise outlive the suite).
pub struct Driver(Child, u16);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.0.id())]).status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn chromedriver() -> Driver {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver is not installed: `apt-get install chromium chromium-driver` (scripts/test.sh does)");
    Driver(child, port)
}

/// A browser session at 1400 × 1000.
pub async fn browser(driver: &Driver) -> Client {
    browser_with(driver, &["--window-size=1400,1000"]).await
}

/// A browser session with these Chromium flags besides the headless ones.
pub async fn browser_with(driver: &Driver, flags: &[&str]) -> Client {
    session(driver, flags, None).await
}

/// A phone's viewport: `width` CSS pixels wide (Chromium's own windows are
/// never narrower than 500 px, so the page is shown as a phone shows it,
/// through Chromium's device emulation).
pub async fn phone(driver: &Driver, width: u32, height: u32) -> Client {
    let metrics = json!({ "deviceMetrics": { "width": width, "height": height, "pixelRatio": 1.0, "mobile": true, "touch": true } });
    session(driver, &[], Some(metrics)).await
}

async fn session(driver: &Driver, flags: &[&str], mobile: Option<Value>) -> Client {
    let mut args = vec!["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"];
    args.extend_from_slice(flags);
    let mut options = json!({ "args": args });
    if let Some(m) = mobile {
        options["mobileEmulation"] = m;
    }
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".into(), options);
    let url = format!("http://127.0.0.1:{}", driver.1);
    let start = Instant::now();
    loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector).capabilities(caps.clone()).connect(&url).await {
            Ok(c) => return c,
            Err(e) if start.elapsed() < Duration::from_secs(20) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no browser session from chromedriver: {e}"),
        }
    }
}

/// Polls `script`'s value until `pred` holds; panics naming `what`.
pub async fn until(c: &Client, what: &str, script: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let v = c.execute(script, vec![]).await.unwrap_or(Value::Null);
        if pred(&v) {
            return v;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "timed out waiting for {what}; last: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Opens `page` with the page's strict mode on: from then on every read of
/// a field an API message lacks is recorded (see [`assert_contract_kept`]).
pub async fn open_strict(c: &Client, page: &str) {
    c.goto(page).await.unwrap();
    c.execute("localStorage.setItem('stylefarm.strict', '1')", vec![]).await.unwrap();
    c.refresh().await.unwrap();
}

/// Opens `page` in strict mode (see [`open_strict`]) and signs in with
/// `token` through the page's own form, returning once it is signed in.
pub async fn sign_in_strict(c: &Client, page: &str, token: &str) {
    open_strict(c, page).await;
    c.wait().for_element(Locator::Id("token")).await.unwrap().send_keys(token).await.unwrap();
    c.find(Locator::Id("sign-in")).await.unwrap().click().await.unwrap();
    until(c, "signed in", "return !document.querySelector('#token')", |v| v == true).await;
}

/// The page has read no field the contract's messages lack since it was
/// loaded (in strict mode).
pub async fn assert_contract_kept(c: &Client) {
    let unknown = c.execute("return window.stylefarmUnknownFields === undefined ? ['(not loaded)'] : window.stylefarmUnknownFields", vec![]).await.unwrap();
    assert_eq!(unknown, json!([]), "the page read fields the API's messages do not have");
}
