//! Progress bars drawn from the run's events (the same view for `fastlightgen run`, which
//! follows its own coordinator, and `fastlightgen watch`, which follows one over gRPC):
//! a bar per training stage with its losses, a line per event worth knowing.

use flg_core::events::{Event, Record};
use flg_core::Stage;
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::mpsc;
use std::thread::JoinHandle;

pub struct Bars {
    bar: Option<ProgressBar>,
    stage: Option<Stage>,
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

impl Default for Bars {
    fn default() -> Self {
        Self::new()
    }
}

impl Bars {
    pub fn new() -> Bars {
        Bars {
            bar: None,
            stage: None,
        }
    }

    fn say(&self, line: String) {
        match &self.bar {
            Some(b) if !b.is_hidden() => b.println(line),
            _ => eprintln!("{line}"),
        }
    }

    fn start_stage(&mut self, stage: Stage, total: u64) {
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
        self.stage = Some(stage);
        self.bar = Some(bar);
    }

    /// Draws one event.
    pub fn handle(&mut self, r: &Record) {
        match &r.event {
            Event::StageStarted {
                stage, total_steps, ..
            } => self.start_stage(*stage, *total_steps),
            Event::Step {
                stage,
                step,
                total_steps,
                values,
            } => {
                if self.bar.is_none() || self.stage != Some(*stage) {
                    self.start_stage(*stage, *total_steps);
                }
                if let Some(b) = &self.bar {
                    b.set_position(*step);
                    let msg: Vec<String> =
                        values.iter().map(|(k, x)| format!("{k} {x:.4}")).collect();
                    b.set_message(msg.join(" "));
                }
            }
            Event::StageDone { stage, seconds, .. } => {
                if let Some(b) = self.bar.take() {
                    b.finish_and_clear();
                }
                eprintln!("{:>10} done in {seconds:.1} s", stage.name());
            }
            Event::CheckpointCommitted {
                stage,
                step,
                global_step,
                bytes,
                ..
            } => self.say(format!(
                "checkpoint step-{global_step} committed ({stage} step {step}, {:.1} MB)",
                *bytes as f64 / 1e6
            )),
            Event::GenerationStarted {
                generation,
                resume_from,
                resume_stage,
                resume_step,
                ..
            } => {
                let from = match resume_from {
                    Some(d) => format!(
                        "resuming {} from {d} (step {})",
                        resume_stage.map(Stage::name).unwrap_or(""),
                        resume_step.unwrap_or(0)
                    ),
                    None => "from the start of its first unfinished stage".to_string(),
                };
                self.say(format!("launch {generation}: {from}"));
            }
            Event::CheckpointRejected { dir, reason } => {
                self.say(format!("checkpoint {dir} rejected: {reason}"))
            }
            Event::RankLost { reason, .. } | Event::Restarting { reason, .. } => {
                self.say(format!("{}: {reason}", r.event.kind()))
            }
            Event::Failed { message, .. } => self.say(format!("failed: {message}")),
            Event::Paused { stage, .. } | Event::Resumed { stage, .. } => {
                self.say(format!("{} {stage}", r.event.kind()))
            }
            Event::Stopped { stage, reason, .. } => self.say(
                format!("stopped {stage} {}", reason.as_deref().unwrap_or(""))
                    .trim()
                    .to_string(),
            ),
            Event::StopRequested { reason } => self.say(format!("stop_requested {reason}")),
            Event::Finished { .. } => self.say("finished".to_string()),
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
    pub fn follow(mut rx: tokio::sync::broadcast::Receiver<Record>) -> EventView {
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
