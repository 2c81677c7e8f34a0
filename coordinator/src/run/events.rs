//! `events.jsonl`: the run's history, one JSON object a line (`unix_time`, `kind`, `stage`,
//! `step`, ... ). It is the run state machine's persistence: a restarted coordinator reads it
//! to learn the run id, the stages already done, the launches so far and whether the run
//! ended. Step progress is not written here (it is in `metrics.jsonl`); it is only streamed.

use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};

pub fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// An event: `kind` and `fields` (merged into the JSON object).
pub fn event(kind: &str, fields: Value) -> Value {
    let mut v = json!({"unix_time": now_unix(), "kind": kind});
    if let (Some(o), Value::Object(f)) = (v.as_object_mut(), fields) {
        o.extend(f);
    }
    v
}

pub struct EventLog {
    path: PathBuf,
}

impl EventLog {
    pub fn new(run_dir: &Path) -> EventLog {
        EventLog {
            path: run_dir.join("events.jsonl"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event (flushed and synced: it is the state a restart reads). After a torn
    /// last line (a crash mid-write) it starts a new line, so only the torn event is lost.
    pub fn append(&self, event: &Value) -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&self.path)?;
        if ends_torn(&mut f)? {
            writeln!(f)?;
        }
        writeln!(f, "{event}")?;
        f.sync_data()
    }

    /// Every event so far; a torn last line (a crash mid-write) is skipped.
    pub fn read_all(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// Whether a non-empty file's last byte is not a newline (only that byte is read).
fn ends_torn(f: &mut std::fs::File) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    if f.metadata()?.len() == 0 {
        return Ok(false);
    }
    f.seek(SeekFrom::End(-1))?;
    let mut last = [0u8];
    f.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

/// What a run's history says about where it stands.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    pub run_id: Option<String>,
    /// The settings the run started with (`run_started`).
    pub settings: Option<std::collections::BTreeMap<String, String>>,
    pub completed_stages: Vec<String>,
    /// Launches of the workers so far.
    pub generations: u32,
    pub restarts: u32,
    /// `finished` when the last stage is done.
    pub finished: bool,
}

impl History {
    pub fn from_events(events: &[Value]) -> History {
        let mut h = History::default();
        for e in events {
            let s = |k: &str| e.get(k).and_then(Value::as_str).map(str::to_string);
            match e.get("kind").and_then(Value::as_str).unwrap_or("") {
                "run_started" => {
                    h.run_id = s("run_id");
                    h.settings = e
                        .get("settings")
                        .and_then(|v| serde_json::from_value(v.clone()).ok());
                }
                "stage_done" => {
                    if let Some(st) = s("stage") {
                        if !h.completed_stages.contains(&st) {
                            h.completed_stages.push(st);
                        }
                    }
                }
                "generation_started" => h.generations += 1,
                "restarting" => h.restarts += 1,
                "finished" => h.finished = true,
                _ => {}
            }
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_survives_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::new(dir.path());
        log.append(&event(
            "run_started",
            json!({"run_id": "r1", "settings": {"a": "1"}}),
        ))
        .unwrap();
        log.append(&event("generation_started", json!({"generation": 0})))
            .unwrap();
        log.append(&event("stage_done", json!({"stage": "pruning"})))
            .unwrap();
        log.append(&event("restarting", json!({}))).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(log.path())
            .unwrap();
        write!(f, "{{\"kind\": \"stage_do").unwrap();
        log.append(&event("stage_done", json!({"stage": "distill"})))
            .unwrap();
        let h = History::from_events(&log.read_all());
        assert_eq!(h.run_id.as_deref(), Some("r1"));
        assert_eq!(
            h.completed_stages,
            vec!["pruning".to_string(), "distill".to_string()]
        );
        assert_eq!((h.generations, h.restarts, h.finished), (1, 1, false));
        assert_eq!(h.settings.unwrap()["a"], "1");
    }
}
