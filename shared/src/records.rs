//! The files a render leaves beside its image — loss log, TensorBoard
//! events, loss plot, model graph — written the same way by `farmctl render`
//! (to files) and by a worker (to the job's storage), and the names a job's
//! files have in storage.

use std::io::Write;

use stylefarm_params::LossRecord;

use crate::tfevents::EventWriter;

/// Names of a job's files, relative to the job's storage prefix.
pub mod job_files {
    /// The final image.
    pub const OUTPUT: &str = "output.png";
    /// One JSON object per line: iteration, content, style, tv, total, seconds.
    pub const LOSS_LOG: &str = "losses.jsonl";
    /// The loss curves (SVG, log scale).
    pub const LOSS_PLOT: &str = "losses.svg";
    /// The model's graph (Graphviz DOT).
    pub const GRAPH: &str = "graph.dot";
    /// The image as it stands, its longer side at most [`PREVIEW_SIDE`]:
    /// written at each snapshot and checkpoint and at the end, for the
    /// dashboard's live thumbnails.
    pub const PREVIEW: &str = "preview.png";
    pub const PREVIEW_SIDE: u32 = 160;
    /// What the worker logged during the attempt (info and above), written
    /// at each checkpoint and when the attempt ends, however it ends.
    pub const WORKER_LOG: &str = "worker.log";
    /// Folder of the TensorBoard event file (`tensorboard --logdir`).
    pub const TENSORBOARD: &str = "tb";

    /// `snapshot_0010.png`: the image after that many iterations.
    pub fn snapshot(iteration: usize) -> String {
        format!("snapshot_{iteration:04}.png")
    }

    /// `ckpt-00000120.safetensors`: the checkpoint at that iteration.
    pub fn checkpoint(iteration: usize) -> String {
        format!("ckpt-{iteration:08}.safetensors")
    }

    /// The iteration of a [`checkpoint`] name; `None` for any other file.
    pub fn checkpoint_iteration(name: &str) -> Option<usize> {
        name.strip_prefix("ckpt-")?.strip_suffix(".safetensors")?.parse().ok()
    }
}

/// One line of the loss log, newline included.
pub fn log_line(record: &LossRecord) -> String {
    // A record is plain numbers: serialising cannot fail, but say so if it does.
    let json = serde_json::to_string(record).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    json + "\n"
}

/// The record's losses as TensorBoard scalars at its iteration.
pub fn write_scalars<W: Write>(events: &mut EventWriter<W>, record: &LossRecord) -> std::io::Result<()> {
    let l = &record.losses;
    events.scalars(record.iteration as i64, &[("loss/total", l.total), ("loss/content", l.content), ("loss/style", l.style), ("loss/tv", l.tv)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use stylefarm_params::Losses;

    #[test]
    fn a_log_line_has_the_documented_fields_and_reads_back() {
        let r = LossRecord { iteration: 7, losses: Losses { content: 1.5, style: 2.0, tv: 0.0, total: 3.25 }, seconds: 0.1 + 0.2 };
        let line = log_line(&r);
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        for key in ["iteration", "content", "style", "tv", "total", "seconds"] {
            assert!(v.get(key).is_some(), "{key} missing in {line}");
        }
        assert_eq!(serde_json::from_str::<LossRecord>(&line).unwrap(), r, "every bit of the f64s survives");
    }
}
