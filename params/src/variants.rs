//! A collection's variants, told apart: the keys a variant may set (every
//! render parameter a job may set, one list for the command line's help,
//! its parser and the coordinator's errors) and each variant's one label
//! (the parameters that set it apart), which the coordinator hands every
//! client in `Column.label` — terminal, page, contact sheet and
//! notifications show that and derive nothing.

use serde_json::Value;

/// Every key a variant (or a retry's changes) may set: `preset`, the
/// render parameters by their wire names, and `bit_depth`.
pub const VARIANT_KEYS: &[&str] = &[
    "preset",
    "alpha",
    "beta",
    "tv_weight",
    "optimizer",
    "lr",
    "lbfgs_history",
    "iters",
    "init",
    "noise_ratio",
    "seed",
    "pooling",
    "content_layers",
    "style_layers",
    "style_blend",
    "scales",
    "coarse_iters",
    "preserve_colors",
    "bit_depth",
];

/// [`VARIANT_KEYS`] as help text prints them (a test keeps the two one).
pub const VARIANT_KEYS_TEXT: &str = "preset, alpha, beta, tv_weight, optimizer, lr, lbfgs_history, iters, init, noise_ratio, seed, pooling, content_layers, style_layers, style_blend, scales, coarse_iters, preserve_colors, bit_depth";

/// The label of each variant: the parameters whose values differ between
/// the variants (`key=value`, joined by ", "), in the first variant's key
/// order, a key one variant lacks shown as `-`; when there is one variant,
/// or none differ, `vN` by its index (from 0, as file names count).
pub fn labels(params: &[Value]) -> Vec<String> {
    let mut keys: Vec<&String> = Vec::new();
    for p in params.iter().filter_map(|p| p.as_object()) {
        for k in p.keys() {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    let first = params.first();
    let differ: Vec<&String> = keys.into_iter().filter(|k| params.iter().any(|p| p.get(k.as_str()) != first.and_then(|f| f.get(k.as_str())))).collect();
    params
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if differ.is_empty() {
                return if params.len() > 1 { format!("v{i}") } else { String::new() };
            }
            differ.iter().map(|k| format!("{k}={}", p.get(k.as_str()).map(text).unwrap_or_else(|| "-".into()))).collect::<Vec<_>>().join(", ")
        })
        .collect()
}

/// A parameter's value as a label shows it: a string bare, a layer list as
/// the flag writes it (`conv1_1:0.5+conv2_1:1`), anything else as JSON.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) if !items.is_empty() && items.iter().all(|i| i.get("layer").is_some()) => items
            .iter()
            .map(|i| format!("{}:{}", i["layer"].as_str().unwrap_or("?"), i.get("weight").map(|w| w.to_string()).unwrap_or_default()))
            .collect::<Vec<_>>()
            .join("+"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn variants_are_labelled_by_what_sets_them_apart() {
        let params = [json!({"optimizer": "lbfgs", "alpha": 0.01, "iters": 100}), json!({"optimizer": "lbfgs", "alpha": 0.001, "iters": 100})];
        assert_eq!(labels(&params), vec!["alpha=0.01", "alpha=0.001"]);
        assert_eq!(labels(&params[..1]), vec![""], "one variant needs no label");
        let apart = [json!({"a": 1}), json!({"a": 1, "b": "x"})];
        assert_eq!(labels(&apart), vec!["b=-", "b=x"]);
        let same = [json!({"a": 1}), json!({"a": 1})];
        assert_eq!(labels(&same), vec!["v0", "v1"], "variants nothing sets apart are told by index");
        let layers = [json!({"style_layers": [{"layer": "conv1_1", "weight": 1.0}]}), json!({"style_layers": [{"layer": "conv1_1", "weight": 0.5}, {"layer": "conv4_1", "weight": 1.0}]})];
        assert_eq!(labels(&layers), vec!["style_layers=conv1_1:1.0", "style_layers=conv1_1:0.5+conv4_1:1.0"]);
    }

    /// The list is every key the parameters read: the render's wire names
    /// (every field of a serialised RenderParams, its options set), plus
    /// `preset` and `bit_depth`; its help text is the same list.
    #[test]
    fn the_variant_keys_are_every_parameter_a_job_may_set() {
        let all = crate::RenderParams { coarse_iters: Some(1), preserve_colors: Some(crate::PreserveColors::Luminance), ..Default::default() };
        let mut wire: Vec<String> = serde_json::to_value(&all).unwrap().as_object().unwrap().keys().cloned().collect();
        wire.extend(["preset".to_string(), "bit_depth".to_string()]);
        wire.sort();
        let mut listed: Vec<String> = VARIANT_KEYS.iter().map(|k| k.to_string()).collect();
        listed.sort();
        assert_eq!(listed, wire);
        assert_eq!(VARIANT_KEYS_TEXT, VARIANT_KEYS.join(", "));
    }
}
