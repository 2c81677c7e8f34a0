//! Progress bars drawn from the run's events (the same view for `fastlightgen run`, which
//! follows its own coordinator, and `fastlightgen watch`, which follows one over gRPC):
//! a bar per training stage with its losses, a line per event worth knowing.

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use std::sync::mpsc;
use std::thread::JoinHandle;

pub struct Bars {
    bar: Option<ProgressBar>,
    stage: String,
}

fn style(with_len: bool) -> ProgressStyle {
    let template = if with_len {
        "{prefix:>10} [{bar:36.cyan/blue}] {pos}/{len} {per_sec} eta {eta} {msg}"
    } else {
        "{prefix:>10} {spinner} {elapsed} {msg}"
    };
    ProgressStyle::with_template(template)
        .expect("valid template")
        .progress_chars("=> ")
}

fn num(e: &Value, k: &str) -> u64 {
    e.get(k).and_then(Value::as_u64).unwrap_or(0)
}

fn text<'a>(e: &'a Value, k: &str) -> &'a str {
    e.get(k).and_then(Value::as_str).unwrap_or("")
}

impl Default for Bars {
    fn default() -> Self {
        Self::new()
    }
}

impl Bars {
    pub fn new() -> Bars {
        Bars {
            bar: None,
            stage: String::new(),
        }
    }

    fn say(&self, line: String) {
        match &self.bar {
            Some(b) if !b.is_hidden() => b.println(line),
            _ => eprintln!("{line}"),
        }
    }

    fn start_stage(&mut self, stage: &str, total: u64) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        let bar = if total > 0 {
            ProgressBar::new(total).with_style(style(true))
        } else {
            let b = ProgressBar::new_spinner().with_style(style(false));
            b.enable_steady_tick(std::time::Duration::from_millis(200));
            b
        };
        bar.set_prefix(stage.to_string());
        self.stage = stage.to_string();
        self.bar = Some(bar);
    }

    /// Draws one event.
    pub fn handle(&mut self, e: &Value) {
        let kind = text(e, "kind");
        match kind {
            "stage_started" => {
                let stage = text(e, "stage").to_string();
                self.start_stage(&stage, num(e, "total_steps"));
            }
            "step" => {
                let stage = text(e, "stage").to_string();
                if self.bar.is_none() || self.stage != stage {
                    self.start_stage(&stage, num(e, "total_steps"));
                }
                if let Some(b) = &self.bar {
                    b.set_position(num(e, "step"));
                    if let Some(v) = e.get("values").and_then(Value::as_object) {
                        let msg: Vec<String> = v
                            .iter()
                            .filter_map(|(k, x)| x.as_f64().map(|x| format!("{k} {x:.4}")))
                            .collect();
                        b.set_message(msg.join(" "));
                    }
                }
            }
            "stage_done" => {
                let seconds = e.get("seconds").and_then(Value::as_f64).unwrap_or(0.0);
                if let Some(b) = self.bar.take() {
                    b.finish_and_clear();
                }
                eprintln!("{:>10} done in {seconds:.1} s", text(e, "stage"));
            }
            "checkpoint_committed" => self.say(format!(
                "checkpoint step-{} committed ({} step {}, {:.1} MB)",
                num(e, "global_step"),
                text(e, "stage"),
                num(e, "step"),
                num(e, "bytes") as f64 / 1e6
            )),
            "generation_started" => {
                let from = match e.get("resume_from").and_then(Value::as_str) {
                    Some(d) => format!(
                        "resuming {} from {d} (step {})",
                        text(e, "resume_stage"),
                        num(e, "resume_step")
                    ),
                    None => "from the start of its first unfinished stage".to_string(),
                };
                self.say(format!("launch {}: {from}", num(e, "generation")));
            }
            "checkpoint_rejected" => self.say(format!(
                "checkpoint {} rejected: {}",
                text(e, "dir"),
                text(e, "reason")
            )),
            "rank_lost" | "restarting" | "failed" => {
                let why = [text(e, "reason"), text(e, "message")].concat();
                self.say(format!("{kind}: {why}"));
            }
            "paused" | "resumed" | "stopped" | "stop_requested" | "finished" => self.say(format!(
                "{kind} {}",
                [text(e, "stage"), text(e, "reason")].join(" ").trim()
            )),
            _ => {}
        }
    }

    pub fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

/// Bars following a live event channel on a thread of their own.
pub struct EventView {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl EventView {
    pub fn follow(mut rx: tokio::sync::broadcast::Receiver<Value>) -> EventView {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let mut bars = Bars::new();
            loop {
                match rx.try_recv() {
                    Ok(e) => bars.handle(&e),
                    Err(tokio::sync::broadcast::error::TryRecvError::Empty) => {
                        if stopped
                            .recv_timeout(std::time::Duration::from_millis(50))
                            .is_ok()
                        {
                            break;
                        }
                    }
                    Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::TryRecvError::Closed) => break,
                }
            }
            bars.finish();
        });
        EventView { stop, thread }
    }

    pub fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}
