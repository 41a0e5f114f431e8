//! The farm's wire contract, generated from `proto/farm.proto`: the
//! coordinator, the workers and farmctl share these types and nothing else
//! of each other. Messages and stubs only — how clients authenticate and
//! connect lives with the clients (`stylefarm_shared::client`) and the
//! server (the coordinator's `auth`).

pub mod codec;
pub mod labels;
pub mod limits;
pub mod states;

#[allow(clippy::all)]
mod generated {
    tonic::include_proto!("stylefarm.v2");
    // serde for every message and enum: the canonical proto3 JSON.
    include!(concat!(env!("OUT_DIR"), "/stylefarm.v2.serde.rs"));
}
pub use generated::*;

/// The contract's descriptors (`FileDescriptorSet`, encoded): which
/// messages and fields exist, for tests that hold a JSON reader to them.
pub const FILE_DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/farm_descriptor.bin"));

#[cfg(test)]
mod tests {
    /// Fields (`type name = n;`) with no comment on their line or the line
    /// above.
    fn bare_fields(proto: &str) -> Vec<String> {
        let lines: Vec<&str> = proto.lines().collect();
        let is_field = |l: &str| {
            let l = l.trim().trim_start_matches("optional ").trim_start_matches("repeated ");
            let mut words = l.split_whitespace();
            !l.starts_with("//") && matches!((words.next(), words.next(), words.next()), (Some(_), Some(_), Some("=")))
        };
        lines
            .iter()
            .enumerate()
            .filter(|(i, l)| is_field(l) && !l.contains("//") && !(*i > 0 && lines[i - 1].trim().starts_with("//")))
            .map(|(i, l)| format!("line {}: {}", i + 1, l.trim()))
            .collect()
    }

    /// A message's JSON is the canonical proto3 JSON, with the .proto's
    /// field names and every field present; it reads back the same.
    #[test]
    fn messages_speak_canonical_json_with_every_field() {
        let job = super::Job { job_id: "j1".into(), state: super::JobState::Running as i32, ..Default::default() };
        let v = serde_json::to_value(&job).unwrap();
        assert_eq!(v["job_id"], "j1");
        assert_eq!(v["state"], "RUNNING", "enums by name");
        assert_eq!(v["attempts"], 0, "defaults present");
        let w = super::WorkerInfo { memory_bytes: 1 << 40, ..Default::default() };
        assert_eq!(serde_json::to_value(&w).unwrap()["memory_bytes"], "1099511627776", "64-bit integers as strings");
        let back: super::Job = serde_json::from_value(v).unwrap();
        assert_eq!(back, job);
    }

    /// The contract is read by people writing clients: every field of every
    /// message says what it holds, on its line or the line above.
    #[test]
    fn every_field_of_the_contract_is_commented() {
        let bare = bare_fields(include_str!("../proto/farm.proto"));
        assert!(bare.is_empty(), "fields without a comment:\n{}", bare.join("\n"));
        let sample = "message M {\n  // said\n  string a = 1;\n  uint32 b = 2;  // said\n  repeated string c = 3;\n}\nenum E { E_UNSPECIFIED = 0; }";
        assert_eq!(bare_fields(sample), ["line 5: repeated string c = 3;"]);
    }
}
