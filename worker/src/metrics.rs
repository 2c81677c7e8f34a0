//! `metrics.jsonl`: one JSON object per line, appended and flushed as it is written, so a
//! crash loses at most the line being written; a line torn by a crash is closed when the log
//! is opened again, so the next record is not glued onto it.

use std::fs::File;
use std::io::Write;
use std::path::Path;

pub struct MetricsLog {
    file: File,
}

impl MetricsLog {
    pub fn open(path: &Path) -> std::io::Result<MetricsLog> {
        Ok(MetricsLog {
            file: flg_core::durable::open_jsonl(path)?,
        })
    }

    pub fn write(&mut self, value: &serde_json::Value) -> std::io::Result<()> {
        let mut line = value.to_string();
        line.push('\n');
        self.file.write_all(line.as_bytes())?;
        self.file.flush()
    }
}
