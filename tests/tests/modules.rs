//! No import circles: within the engine, the tensor-free parameters crate
//! below it and the coordinator, every module uses only modules that do
//! not use it back (directly or through others). A circle is how a "leaf"
//! such as the parameters ends up needing the network, or a handler module
//! the whole service; this test names the circle when one appears.

use std::collections::BTreeMap;
use std::path::Path;

/// Each module of the crate at `src` (one file each) and the modules of
/// the same crate its code (tests and comments left out) names as
/// `crate::NAME`.
fn imports(src: &Path) -> BTreeMap<String, Vec<String>> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            files.insert(name, std::fs::read_to_string(&path).unwrap());
        }
    }
    let mut graph = BTreeMap::new();
    for (name, text) in &files {
        if name == "lib" {
            continue;
        }
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        let mut uses: Vec<String> = Vec::new();
        for line in code.lines().map(str::trim).filter(|l| !l.starts_with("//")) {
            let line = line.split(" //").next().unwrap_or_default();
            for part in line.split("crate::").skip(1) {
                let used: String = part.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if used != *name && files.contains_key(&used) && used != "lib" && !uses.contains(&used) {
                    uses.push(used);
                }
            }
        }
        uses.sort();
        graph.insert(name.clone(), uses);
    }
    graph
}

/// A circle in `graph`, as the modules along it, if there is one.
fn circle(graph: &BTreeMap<String, Vec<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(node: &str, graph: &BTreeMap<String, Vec<String>>, marks: &mut BTreeMap<String, Mark>, path: &mut Vec<String>) -> Option<Vec<String>> {
        marks.insert(node.to_string(), Mark::Open);
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            match marks.get(next).copied().unwrap_or(Mark::New) {
                Mark::Open => {
                    let start = path.iter().position(|n| n == next).unwrap_or(0);
                    let mut found = path[start..].to_vec();
                    found.push(next.clone());
                    return Some(found);
                }
                Mark::New => {
                    if let Some(found) = visit(next, graph, marks, path) {
                        return Some(found);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks.insert(node.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if marks.get(node).copied().unwrap_or(Mark::New) == Mark::New {
            if let Some(found) = visit(node, graph, &mut marks, &mut Vec::new()) {
                return Some(found);
            }
        }
    }
    None
}

#[test]
fn the_finder_finds_a_circle_it_is_shown() {
    let graph: BTreeMap<String, Vec<String>> =
        [("a", vec!["b"]), ("b", vec!["c"]), ("c", vec!["a"]), ("d", vec![])].into_iter().map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect())).collect();
    assert_eq!(circle(&graph), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
}

#[test]
fn no_module_of_the_engine_the_parameters_or_the_coordinator_imports_itself_through_others() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let crates = [
        ("engine", [("session", "render"), ("tiled", "loss")]),
        ("params", [("memory", "geometry"), ("geometry", "arch")]),
        // The handlers by resource use the state and the database, never
        // the service that dispatches to them.
        ("coordinator", [("service", "submit"), ("submit", "db")]),
    ];
    for (krate, edges_seen) in crates {
        let graph = imports(&root.join(krate).join("src"));
        // The reader sees the imports it must (else a circle could hide).
        for (from, to) in edges_seen {
            assert!(graph.get(from).is_some_and(|u| u.iter().any(|m| m == to)), "{krate}: {from} should use {to}: {graph:?}");
        }
        assert_eq!(circle(&graph), None, "{krate}: an import circle");
    }
}
