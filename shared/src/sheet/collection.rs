//! A farm collection's sheet: its labels from the collection and its
//! variants' parameters, every cell that has no image marked from its
//! job's state. The caller adds the finished images (`farmctl fetch` over
//! gRPC, the dashboard's zip from storage).

use stylefarm_proto as pb;

use super::{shared_params, Cell, Column, Sheet};

/// The column of `job` on the sheet: its style's variants side by side.
pub fn column_of(c: &pb::Collection, job: &pb::Job) -> usize {
    (job.style_index * c.variants.max(1) + job.variant_index) as usize
}

/// "submitted 2026-12-05 11:20 UTC · 2 photos × 3 paintings × 2 variants ·
/// lbfgs, 100 iterations" (the last part: what the variants share).
pub fn caption(c: &pb::Collection, variant_params: &[serde_json::Value]) -> String {
    let plural = |n: u32, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let mut parts = vec![format!("submitted {}", date_time(c.created_unix))];
    parts.push(format!(
        "{} × {} × {}",
        plural(c.contents, "photo", "photos"),
        plural(c.styles, "painting", "paintings"),
        plural(c.variants.max(1), "variant", "variants")
    ));
    let shared = shared_params(variant_params);
    if !shared.is_empty() {
        parts.push(shared);
    }
    parts.join(" · ")
}

/// `unix` as "2026-12-05 11:20 UTC".
pub fn date_time(unix: f64) -> String {
    match chrono::DateTime::from_timestamp(unix as i64, 0) {
        Some(t) => t.format("%Y-%m-%d %H:%M UTC").to_string(),
        None => "at an unknown time".into(),
    }
}

/// Each variant's parameters, from the collection's columns (the first
/// style's); a variant not among them, or not JSON, is `null`.
pub fn variant_params(c: &pb::Collection) -> Vec<serde_json::Value> {
    let mut params = vec![serde_json::Value::Null; c.variants.max(1) as usize];
    for col in c.columns.iter().filter(|col| col.style_index == 0) {
        if let Some(p) = params.get_mut(col.variant_index as usize) {
            *p = serde_json::from_str(&col.params_json).unwrap_or(serde_json::Value::Null);
        }
    }
    params
}

/// The sheet of `c` (its jobs and columns listed, as GetCollection
/// returns it): rows and columns labelled, failed, cancelled and
/// unfinished jobs marked.
pub fn sheet(c: &pb::Collection) -> Sheet {
    let params = variant_params(c);
    let variants = params.len();
    // Each variant's label as the coordinator gave it (Column.label).
    let labels: Vec<String> = (0..variants as u32).map(|v| c.variant_label(v).to_string()).collect();
    let mut rows = vec![String::new(); c.contents as usize];
    let mut columns = vec![Column { style: String::new(), variant: String::new() }; c.styles as usize * variants];
    for j in &c.jobs {
        if let Some(row) = rows.get_mut(j.content_index as usize) {
            *row = j.content_name.clone();
        }
        if let Some(col) = columns.get_mut(column_of(c, j)) {
            *col = Column { style: j.style_name.clone(), variant: labels.get(j.variant_index as usize).cloned().unwrap_or_default() };
        }
    }
    let title = if c.name.is_empty() { c.collection_id.clone() } else { c.name.clone() };
    let mut s = Sheet::new(title, caption(c, &params), rows, columns);
    for j in &c.jobs {
        let mark = match pb::JobState::try_from(j.state).unwrap_or(pb::JobState::Unspecified) {
            pb::JobState::Succeeded => continue,
            pb::JobState::Failed => Cell::Failed(j.error.clone()),
            pb::JobState::Cancelled => Cell::Cancelled,
            pb::JobState::Running => Cell::Unfinished("running".into()),
            pb::JobState::Queued | pb::JobState::Unspecified => Cell::Unfinished("queued".into()),
        };
        s.set(j.content_index as usize, column_of(c, j), mark);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(content: u32, style: u32, variant: u32, state: pb::JobState) -> pb::Job {
        pb::Job {
            content_index: content,
            style_index: style,
            variant_index: variant,
            content_name: format!("photo{content}"),
            style_name: format!("painting{style}"),
            state: state as i32,
            error: if state == pb::JobState::Failed { "diverged".into() } else { String::new() },
            ..Default::default()
        }
    }

    #[test]
    fn a_collection_labels_its_rows_columns_and_variants_and_marks_what_did_not_succeed() {
        let c = pb::Collection {
            collection_id: "c1".into(),
            name: String::new(),
            contents: 2,
            styles: 1,
            variants: 2,
            created_unix: 1_796_469_600.0,
            jobs: vec![
                job(0, 0, 0, pb::JobState::Succeeded),
                job(0, 0, 1, pb::JobState::Failed),
                job(1, 0, 0, pb::JobState::Cancelled),
                job(1, 0, 1, pb::JobState::Running),
            ],
            ..Default::default()
        };
        // The labels as the coordinator gives them (Column.label).
        let column = |v: u32, params: serde_json::Value, label: &str| pb::Column { style_index: 0, variant_index: v, style_name: "painting0".into(), params_json: params.to_string(), label: label.into() };
        let c = pb::Collection { columns: vec![column(0, json!({"optimizer": "adam", "alpha": 1}), "alpha=1"), column(1, json!({"optimizer": "adam", "alpha": 2}), "alpha=2")], ..c };
        let s = sheet(&c);
        assert_eq!(s.title, "c1", "an unnamed collection is titled by its id");
        assert_eq!(s.caption, "submitted 2026-12-05 11:20 UTC · 2 photos × 1 painting × 2 variants · adam");
        assert_eq!(s.rows, vec!["photo0", "photo1"]);
        assert_eq!(s.columns, vec![Column { style: "painting0".into(), variant: "alpha=1".into() }, Column { style: "painting0".into(), variant: "alpha=2".into() }]);
        assert!(s.cell(0, 0).is_none(), "a succeeded job waits for its image");
        assert!(matches!(s.cell(0, 1), Some(Cell::Failed(why)) if why == "diverged"));
        assert!(matches!(s.cell(1, 0), Some(Cell::Cancelled)));
        assert!(matches!(s.cell(1, 1), Some(Cell::Unfinished(state)) if state == "running"));
    }
}
