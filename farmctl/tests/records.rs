//! What a render leaves beside its output for a person to look at: the loss
//! plot (SVG), TensorBoard event files (read back here with their CRCs
//! checked) and the model's graph (DOT).

use std::path::Path;
use std::process::Command;

/// A file in `tests/fixtures/`, found from farmctl's folder at run time (cargo
/// sets CARGO_MANIFEST_DIR for test processes; the compile-time value goes
/// stale when a shared target folder is reused from another checkout).
fn fixture(name: &str) -> String {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    Path::new(&dir).join("../tests/fixtures").join(name).to_string_lossy().into_owned()
}

/// TFRecord's masked CRC-32C, computed independently of the writer.
fn masked(data: &[u8]) -> u32 {
    crc32c::crc32c(data).rotate_right(15).wrapping_add(0xa282_ead8)
}

fn varint(b: &[u8], i: &mut usize) -> u64 {
    let (mut v, mut shift) = (0u64, 0);
    loop {
        let byte = b[*i];
        *i += 1;
        v |= ((byte & 0x7f) as u64) << shift;
        if byte < 0x80 {
            return v;
        }
        shift += 7;
    }
}

/// Protobuf fields of one message: (field number, wire type, bytes or value).
fn fields(b: &[u8]) -> Vec<(u64, u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let key = varint(b, &mut i);
        let (field, wire) = (key >> 3, (key & 7) as u8);
        let value = match wire {
            0 => varint(b, &mut i).to_le_bytes().to_vec(),
            1 => {
                i += 8;
                b[i - 8..i].to_vec()
            }
            2 => {
                let n = varint(b, &mut i) as usize;
                i += n;
                b[i - n..i].to_vec()
            }
            5 => {
                i += 4;
                b[i - 4..i].to_vec()
            }
            w => panic!("unexpected wire type {w}"),
        };
        out.push((field, wire, value));
    }
    out
}

/// Every record of an event file, CRCs checked.
fn records(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let len_bytes = &bytes[i..i + 8];
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        assert_eq!(u32::from_le_bytes(bytes[i + 8..i + 12].try_into().unwrap()), masked(len_bytes), "length CRC");
        let data = &bytes[i + 12..i + 12 + len];
        assert_eq!(u32::from_le_bytes(bytes[i + 12 + len..i + 16 + len].try_into().unwrap()), masked(data), "data CRC");
        out.push(data.to_vec());
        i += 16 + len;
    }
    out
}

#[test]
fn plot_events_and_graph_are_written_and_agree_with_the_log() {
    stylefarm_tests::require!(stylefarm_tests::Need::Weights);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = Command::new(env!("CARGO_BIN_EXE_farmctl"))
        .args(["render", "-q", "--size", "24x18", "--iters", "6", "--snapshot-every", "3", "--tv-weight", "0.1"])
        .args(["--content", &fixture("content.png"), "--style", &fixture("style.png")])
        .arg("-o")
        .arg(d.join("cat.png"))
        .arg("--log")
        .arg(d.join("cat.jsonl"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let log: Vec<serde_json::Value> =
        std::fs::read_to_string(d.join("cat.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();

    let files: Vec<_> = std::fs::read_dir(d.join("cat.tb")).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].file_name().unwrap().to_string_lossy().starts_with("events.out.tfevents."));
    let recs = records(&std::fs::read(&files[0]).unwrap());
    assert_eq!(recs.len(), 1 + log.len(), "a version event and one event per log line");
    let first = fields(&recs[0]);
    assert!(first.iter().any(|(f, _, v)| *f == 3 && v == b"brain.Event:2"));
    for (rec, line) in recs[1..].iter().zip(&log) {
        let event = fields(rec);
        let step = event.iter().find(|(f, _, _)| *f == 2).map(|(_, _, v)| u64::from_le_bytes(v[..8].try_into().unwrap())).unwrap();
        assert_eq!(step, line["iteration"].as_u64().unwrap());
        let summary = &event.iter().find(|(f, _, _)| *f == 5).expect("summary").2;
        let mut seen = 0;
        for (_, _, value) in fields(summary) {
            let v = fields(&value);
            let tag = String::from_utf8(v.iter().find(|(f, _, _)| *f == 1).unwrap().2.clone()).unwrap();
            let x = f32::from_le_bytes(v.iter().find(|(f, _, _)| *f == 2).unwrap().2[..4].try_into().unwrap());
            let key = tag.strip_prefix("loss/").unwrap();
            assert_eq!(x, line[key].as_f64().unwrap() as f32, "{tag} at step {step}");
            seen += 1;
        }
        assert_eq!(seen, 4, "total, content, style and tv");
    }

    let svg = std::fs::read_to_string(d.join("cat_losses.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("iteration") && svg.contains("β·style"));
    assert!(svg.matches("<polyline").count() >= 4, "one curve per loss term");

    let dot = std::fs::read_to_string(d.join("cat.dot")).unwrap();
    assert!(dot.starts_with("digraph") && dot.contains("conv4_2 -> content_loss") && dot.contains("tv_loss -> total"));
}

#[test]
fn graph_command_writes_dot() {
    let o = Command::new(env!("CARGO_BIN_EXE_farmctl")).args(["graph", "--pooling", "max", "--style-layers", "conv1_1,conv3_2"]).output().unwrap();
    assert!(o.status.success());
    let dot = String::from_utf8(o.stdout).unwrap();
    assert!(dot.contains("max pool") && dot.contains("conv3_2 -> style_loss") && dot.contains("conv4_2"));
    let o = Command::new(env!("CARGO_BIN_EXE_farmctl")).args(["graph", "--style-layers", "conv6_1"]).output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("conv6_1"));
}

/// `farmctl … | head` closes the pipe early: farmctl ends quietly with the
/// status a shell gives a death by SIGPIPE (141), instead of panicking on
/// the write.
#[test]
fn a_closed_pipe_ends_farmctl_quietly() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let o = Command::new(env!("CARGO_BIN_EXE_farmctl")).args(["graph"]).stdout(writer).stderr(std::process::Stdio::piped()).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(o.status.code(), Some(141), "{:?} {stderr}", o.status);
}
