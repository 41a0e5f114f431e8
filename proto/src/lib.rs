//! The farm's wire contract, generated from `proto/farm.proto`: the
//! coordinator, the workers and farmctl share these types and nothing else
//! of each other. Messages and stubs only — how clients authenticate and
//! connect lives with the clients (`stylefarm_shared::client`) and the
//! server (the coordinator's `auth`).

pub mod codec;

#[allow(clippy::all)]
mod generated {
    tonic::include_proto!("stylefarm.v2");
}
pub use generated::*;

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
