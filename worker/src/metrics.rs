//! `metrics.jsonl`: one JSON object per line, appended and flushed as it is written, so a
//! crash loses at most the line being written.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

pub struct MetricsLog {
    file: File,
}

impl MetricsLog {
    pub fn open(path: &Path) -> std::io::Result<MetricsLog> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        Ok(MetricsLog {
            file: OpenOptions::new().create(true).append(true).open(path)?,
        })
    }

    pub fn write(&mut self, value: &serde_json::Value) -> std::io::Result<()> {
        let mut line = value.to_string();
        line.push('\n');
        self.file.write_all(line.as_bytes())?;
        self.file.flush()
    }
}
