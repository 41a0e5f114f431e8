//! Security end to end, on a real coordinator process: bearer tokens with
//! scopes, TLS (a plaintext client is refused cleanly), mutual TLS for
//! workers, names and keys that try to leave their folder, and requests
//! over the size limit.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use stylefarm_proto as pb;
use stylefarm_tests::{bin, fixture};
use stylefarm_shared::client::ClientSecurity;

struct Coordinator {
    child: Child,
    port: u16,
    /// The dashboard's URL, when started with `--http-listen`.
    dashboard: Option<String>,
    _dir: tempfile::TempDir,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn coordinator(extra: &[&str]) -> Coordinator {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin("farm-coordinator"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut line).unwrap();
    let port = line.trim().rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("coordinator said: {line}"));
    let dashboard = extra.contains(&"--http-listen").then(|| {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        stylefarm_tests::dashboard_url(&line)
    });
    Coordinator { child, port, dashboard, _dir: dir }
}

fn farmctl(url: &str, args: &[&str]) -> Output {
    // The environment must not lend a token the test did not ask for.
    Command::new(bin("farmctl")).env_remove("STYLEFARM_TOKEN").arg("--coordinator").arg(url).args(args).output().unwrap()
}

fn submit_args() -> Vec<String> {
    ["submit", "--content", &fixture("content.png"), "--style", &fixture("style.png"), "--size", "8x8", "--iters", "1"].iter().map(|s| s.to_string()).collect()
}

fn refused(o: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "should have been refused");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains(needle), "stderr should mention `{needle}`:\n{stderr}");
}

#[test]
fn tokens_are_required_and_scoped() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries);
    let c = coordinator(&["--user-token", "user-secret", "--worker-token", "worker-secret"]);
    let url = format!("http://127.0.0.1:{}", c.port);
    let args = submit_args();
    let with = |token: Option<&str>| {
        let mut a: Vec<&str> = Vec::new();
        if let Some(t) = token {
            a.extend(["--token", t]);
        }
        a.extend(args.iter().map(String::as_str));
        farmctl(&url, &a)
    };
    refused(&with(None), "bearer token is required");
    refused(&with(Some("guess")), "unknown token");
    refused(&with(Some("worker-secret")), "may not call the user service");
    let ok = with(Some("user-secret"));
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));

    // A user token cannot lease; a worker token can.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        for (token, code) in [("user-secret", Some(tonic::Code::PermissionDenied)), ("worker-secret", None)] {
            let sec = ClientSecurity { token: Some(token.into()), ..Default::default() };
            let channel = sec.connect(&url).await.unwrap();
            let mut w = pb::workers_client::WorkersClient::with_interceptor(channel, sec.bearer().unwrap());
            let r = w.register(pb::RegisterRequest { name: "t".into(), device: "cpu".into(), ..Default::default() }).await;
            assert_eq!(r.as_ref().err().map(|s| s.code()), code, "{token}: {r:?}");
        }
    });
}

/// A CA, a server certificate for localhost and a client certificate.
fn pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf, PathBuf) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names).unwrap().signed_by(&key, &ca).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(vec!["localhost".into(), "127.0.0.1".into()]);
    let (client_cert, client_key) = leaf(vec!["worker".into()]);
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    (write("ca.pem", ca.pem()), write("server.pem", server_cert), write("server.key", server_key), write("client.pem", client_cert), write("client.key", client_key))
}

#[test]
fn tls_serves_tls_clients_and_refuses_plaintext_and_certless_workers() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries);
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key, client_cert, client_key) = pki(dir.path());
    let s = |p: &PathBuf| p.to_string_lossy().into_owned();
    let c = coordinator(&["--tls-cert", &s(&cert), "--tls-key", &s(&key), "--tls-client-ca", &s(&ca), "--http-listen", "127.0.0.1:0"]);
    let https = format!("https://localhost:{}", c.port);
    let args = submit_args();
    let mut a = vec!["--tls-ca", &s(&ca)].into_iter().map(String::from).collect::<Vec<_>>();
    a.extend(args.clone());
    let o = farmctl(&https, &a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "TLS submit: {}", String::from_utf8_lossy(&o.stderr));

    // Plaintext against the TLS port: a clean error, not a hang or a panic.
    let plain = format!("http://127.0.0.1:{}", c.port);
    let o = farmctl(&plain, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && !stderr.contains("panicked") && stderr.contains("submit"), "{stderr}");
    // https without the CA is refused before connecting.
    refused(&farmctl(&https, &args.iter().map(String::as_str).collect::<Vec<_>>()), "--tls-ca");

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        for (with_cert, code) in [(false, Some(tonic::Code::Unauthenticated)), (true, None)] {
            let sec = ClientSecurity {
                tls_ca: Some(ca.clone()),
                tls_cert: with_cert.then(|| client_cert.clone()),
                tls_key: with_cert.then(|| client_key.clone()),
                ..Default::default()
            };
            let channel = sec.connect(&https).await.unwrap();
            let mut w = pb::workers_client::WorkersClient::with_interceptor(channel, sec.bearer().unwrap());
            let r = w.register(pb::RegisterRequest { name: "t".into(), device: "cpu".into(), ..Default::default() }).await;
            assert_eq!(r.as_ref().err().map(|s| s.code()), code, "client cert {with_cert}: {r:?}");
        }

        // The dashboard is served over TLS with the same certificate, and
        // refuses plaintext.
        let page = c.dashboard.clone().unwrap();
        assert!(page.starts_with("https://127.0.0.1:"), "{page}");
        let page = page.replace("127.0.0.1", "localhost");
        let trusted = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap())
            .build()
            .unwrap();
        let r = trusted.get(format!("{page}api/session")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.text().await.unwrap().contains("signed_in"));
        let r = trusted.post(format!("{page}api/session")).json(&serde_json::json!({ "token": "guess" })).send().await.unwrap();
        assert_eq!(r.status(), 200, "no tokens configured here: any token signs in");
        assert!(r.headers()["set-cookie"].to_str().unwrap().contains("Secure"), "a cookie over TLS is Secure");
        let plain = page.replace("https://", "http://");
        assert!(reqwest::get(format!("{plain}api/session")).await.is_err(), "plaintext against the TLS dashboard");
    });
}

#[test]
fn names_and_keys_cannot_escape_and_big_requests_are_refused() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries);
    let c = coordinator(&["--max-request-mb", "1"]);
    let url = format!("http://127.0.0.1:{}", c.port);
    let png = std::fs::read(fixture("content.png")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut farm = pb::farm_client::FarmClient::connect(url.clone()).await.unwrap().max_encoding_message_size(64 << 20);
        let image = |name: &str, data: Vec<u8>| pb::InputImage { name: name.into(), source: Some(pb::input_image::Source::Data(data)) };
        let submit = |content: pb::InputImage| pb::SubmitRequest {
            contents: vec![content],
            styles: vec![image("style", png.clone())],
            width: 8,
            height: 8,
            ..Default::default()
        };
        for bad in ["../evil", "a/b", ".hidden", "nul\0byte", ""] {
            let name = if bad.is_empty() { "x".repeat(101) } else { bad.to_string() };
            let err = farm.submit(submit(image(&name, png.clone()))).await.unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{name:?}: {err:?}");
            assert!(err.message().contains("name"), "{err:?}");
        }
        let good = farm.submit(submit(image("content", png.clone()))).await.unwrap().into_inner().collection_id;
        for key in [format!("collections/{good}/../../farm.db"), "inputs/anything".to_string(), format!("collections/{good}//x"), format!("collections/{good}/a\0b")] {
            let err = farm.fetch(pb::FetchRequest { collection_id: good.clone(), key: key.clone() }).await.unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{key:?}: {err:?}");
        }
        // Over the 1 MiB request limit: refused, and the earlier collection is intact.
        let err = farm.submit(submit(image("big", vec![7u8; 2 << 20]))).await.unwrap_err();
        assert!(matches!(err.code(), tonic::Code::OutOfRange | tonic::Code::ResourceExhausted), "{err:?}");
        let c = farm.get_collection(pb::CollectionRef { collection_id: good }).await.unwrap().into_inner();
        assert_eq!(c.jobs.len(), 1);
    });
}

/// A collection's name is another user's text: printed by farmctl, its
/// escape sequences (a window title, a clipboard write, clear screen) and
/// bidirectional overrides are shown as `\u{…}`, never sent to the
/// terminal as they are.
#[test]
fn names_print_escaped_in_the_terminal() {
    stylefarm_tests::require!(stylefarm_tests::Need::Binaries);
    let farm = stylefarm_tests::Farm::start();
    let hostile = "pretty\u{1b}]0;owned\u{7}\u{1b}]52;c;ZXZpbA==\u{7}\u{1b}[2J\u{202e}gnp.exe";
    let id = farm.submit(&["--content", &fixture("content.png"), "--style", &fixture("style.png"), "--size", "8x8", "--name", hostile]);
    for args in [vec!["status", id.as_str()], vec!["status"]] {
        let o = farm.farmctl(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(!out.contains('\u{1b}') && !out.contains('\u{7}') && !out.contains('\u{202e}'), "{args:?} printed a control character: {out:?}");
        assert!(out.contains("pretty\\u{1b}]0;owned\\u{7}") && out.contains("\\u{202e}gnp.exe"), "{args:?}: {out}");
    }
    // --json keeps the name as it is (JSON escapes it on its own).
    let o = farm.farmctl(&["status", &id, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["name"], hostile);
}
