//! `metrics.jsonl` and TensorBoard: every metrics line rank 0 writes is one JSON object per
//! line, appended and flushed as it is written, so a crash loses at most the line being
//! written (a line torn by a crash is closed when the log is opened again, so the next record
//! is not glued onto it); and the same line's numbers as TensorBoard scalars in
//! `<run dir>/tensorboard/`, tagged `<stage>/<field>` (nested objects such as Stage III's
//! `monitor` as `<stage>/<field>/<key>`), at the stage's step. The eval stage adds its scores
//! and sample grids (`eval/<row>/...`).

use flg_tensorboard::EventWriter;
use std::fs::File;
use std::io::Write;
use std::path::Path;

pub struct MetricsLog {
    file: File,
    /// `None` when the event file could not be made or written: training goes on, with a
    /// warning, since metrics.jsonl keeps every number.
    board: Option<EventWriter>,
}

impl MetricsLog {
    /// The log at `path`, and a new TensorBoard event file in `board_dir`.
    pub fn open(path: &Path, board_dir: &Path) -> std::io::Result<MetricsLog> {
        let file = flg_core::durable::open_jsonl(path)?;
        let board = match EventWriter::create(board_dir, &flg_core::hostname()) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(dir = %board_dir.display(), "no TensorBoard events: {e}");
                None
            }
        };
        Ok(MetricsLog { file, board })
    }

    pub fn write(&mut self, value: &serde_json::Value) -> std::io::Result<()> {
        let mut line = value.to_string();
        line.push('\n');
        self.file.write_all(line.as_bytes())?;
        self.file.flush()?;
        if let (Some(stage), Some(step)) = (value["stage"].as_str(), value["step"].as_u64()) {
            let mut scalars = Vec::new();
            flatten(stage, value, &mut scalars);
            let tagged = scalars.iter().map(|(t, v)| (t.as_str(), *v));
            self.board_do(|b| b.scalars(step, tagged));
        }
        Ok(())
    }

    /// Scalars under `prefix/` at `step` (TensorBoard only).
    pub fn scalars(&mut self, prefix: &str, step: u64, values: &[(&str, f64)]) {
        let tagged: Vec<(String, f64)> = values
            .iter()
            .map(|(k, v)| (format!("{prefix}/{k}"), *v))
            .collect();
        self.board_do(|b| b.scalars(step, tagged.iter().map(|(t, v)| (t.as_str(), *v))));
    }

    /// A PNG file as an image at `step` (TensorBoard only).
    pub fn image(&mut self, tag: &str, step: u64, png: &Path) {
        self.board_do(|b| b.png_file(tag, step, png));
    }

    /// Writes to the event file; on an error warns once and stops writing there.
    fn board_do(&mut self, f: impl FnOnce(&mut EventWriter) -> std::io::Result<()>) {
        if let Some(b) = self.board.as_mut() {
            if let Err(e) = f(b) {
                tracing::warn!(file = %b.path().display(), "TensorBoard events stop here: {e}");
                self.board = None;
            }
        }
    }
}

/// The numbers of a metrics line as (`prefix/key`, value), nested objects as
/// `prefix/key/inner`; the step and the clock are the axes, not series.
fn flatten(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, f64)>) {
    let Some(map) = value.as_object() else {
        return;
    };
    for (k, v) in map {
        if matches!(k.as_str(), "step" | "stage") {
            continue;
        }
        match v {
            serde_json::Value::Number(n) => {
                if let Some(x) = n.as_f64() {
                    out.push((format!("{prefix}/{k}"), x));
                }
            }
            serde_json::Value::Object(_) => flatten(&format!("{prefix}/{k}"), v, out),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lines_flatten_to_tags() {
        let line = serde_json::json!({
            "stage": "distill", "step": 4, "loss": 0.5, "skipped": [3],
            "monitor": {"average": 0.7, "per_class": {"0": 2}}, "note": "x",
        });
        let mut out = Vec::new();
        super::flatten("distill", &line, &mut out);
        out.sort_by(|a, b| a.0.cmp(&b.0));
        let tags: Vec<&str> = out.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            tags,
            [
                "distill/loss",
                "distill/monitor/average",
                "distill/monitor/per_class/0"
            ]
        );
    }
}
