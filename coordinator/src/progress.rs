//! Progress drawn from the run's events (the same view for `fastlightgen run`, which follows
//! its own coordinator, and `fastlightgen watch`, which follows one over gRPC): on a terminal
//! a bar per training stage with its rate, ETA and losses; in a log file (stderr not a
//! terminal) one plain line every `--log-every` seconds instead; a line per event worth
//! knowing either way.

use flg_core::events::{Event, Record};
use flg_core::Stage;
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How progress is shown: bars on a terminal, else plain lines every `every`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Look {
    Bars,
    Lines { every: Duration },
}

impl Look {
    /// Bars when stderr is a terminal; plain lines every `every` when it is a file or pipe.
    pub fn for_stderr(every: Duration) -> Look {
        if flg_core::logging::stderr_is_terminal() {
            Look::Bars
        } else {
            Look::Lines { every }
        }
    }
}

/// The latest step report of the stage being drawn.
#[derive(Clone, Debug, Default)]
struct StepSeen {
    step: u64,
    total: u64,
    values: Vec<(String, f64)>,
    samples_per_s: Option<f64>,
    eta_s: Option<f64>,
}

pub struct Bars {
    look: Look,
    bar: Option<ProgressBar>,
    stage: Option<Stage>,
    /// When the stage started (as far as this view knows) and the last plain line.
    stage_since: Instant,
    last_line: Option<Instant>,
    latest: Option<StepSeen>,
    /// Whether `latest` has been printed as a plain line.
    latest_shown: bool,
    /// Where lines go (stderr, or a buffer in tests).
    out: Box<dyn FnMut(&str) + Send>,
}

fn style(with_len: bool) -> ProgressStyle {
    // The rate and ETA come from the coordinator (`status` shows the same), not from the bar:
    // a view attached mid-stage would otherwise count every step before it as just done.
    let template = if with_len {
        "{prefix:>10} [{bar:36.cyan/blue}] {pos}/{len} {msg}"
    } else {
        "{prefix:>10} {spinner} {elapsed} {msg}"
    };
    ProgressStyle::with_template(template)
        .expect("valid template")
        .progress_chars("=> ")
}

/// The rate, ETA and losses of a step report, as the bar's message and the plain line show
/// them: `15.1 samples/s, eta 7 min 12 s | loss 0.0123, flow_full 0.0456`.
fn step_summary(s: &StepSeen) -> String {
    let mut parts = Vec::new();
    if let Some(r) = s.samples_per_s {
        parts.push(format!("{r:.1} samples/s"));
    }
    if let Some(e) = s.eta_s {
        parts.push(format!("eta {}", flg_core::logging::human_seconds(e)));
    }
    let losses: Vec<String> = s
        .values
        .iter()
        .map(|(k, x)| format!("{k} {x:.4}"))
        .collect();
    match (parts.is_empty(), losses.is_empty()) {
        (_, true) => parts.join(", "),
        (true, false) => losses.join(", "),
        (false, false) => format!("{} | {}", parts.join(", "), losses.join(", ")),
    }
}

/// One plain progress line: `pruning 130/300 (43%) 15.1 samples/s, eta 7 min 12 s | loss 0.0123`.
fn plain_line(stage: Stage, s: &StepSeen) -> String {
    let pct = if s.total > 0 {
        format!(" ({:.0}%)", 100.0 * s.step as f64 / s.total as f64)
    } else {
        String::new()
    };
    let summary = step_summary(s);
    format!(
        "{} {}/{}{pct}{}{summary}",
        stage.name(),
        s.step,
        s.total,
        if summary.is_empty() { "" } else { " " }
    )
}

impl Bars {
    /// Bars or plain lines, as stderr calls for; plain lines every `every`.
    pub fn new(every: Duration) -> Bars {
        Bars::with_look(Look::for_stderr(every), Box::new(|l| eprintln!("{l}")))
    }

    /// A view with the given look, sending its lines to `out`.
    pub fn with_look(look: Look, out: Box<dyn FnMut(&str) + Send>) -> Bars {
        Bars {
            look,
            bar: None,
            stage: None,
            stage_since: Instant::now(),
            last_line: None,
            latest: None,
            latest_shown: true,
            out,
        }
    }

    fn say(&mut self, line: String) {
        let line = match self.look {
            Look::Bars => line,
            Look::Lines { .. } => format!("{} {line}", flg_core::logging::utc_timestamp()),
        };
        match &self.bar {
            Some(b) if !b.is_hidden() => b.println(line),
            _ => (self.out)(&line),
        }
    }

    /// A stage is being drawn from now on; `announced` when it starts now (not a view
    /// attached mid-stage), which a plain line says.
    fn start_stage(&mut self, stage: Stage, total: u64, announced: bool) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        self.stage = Some(stage);
        self.stage_since = Instant::now();
        self.latest = None;
        self.latest_shown = true;
        match self.look {
            Look::Bars => {
                let bar = if total > 0 {
                    ProgressBar::new(total).with_style(style(true))
                } else {
                    let b = ProgressBar::new_spinner().with_style(style(false));
                    b.enable_steady_tick(Duration::from_millis(200));
                    b
                };
                bar.set_prefix(stage.to_string());
                self.bar = Some(bar);
            }
            Look::Lines { .. } if announced => {
                let what = if total > 0 {
                    format!("{stage}: started, {total} steps")
                } else {
                    format!("{stage}: started")
                };
                self.say(what);
                self.last_line = Some(Instant::now());
            }
            Look::Lines { .. } => self.last_line = None,
        }
    }

    /// Plain lines only: prints the latest step, or that a stage without steps is still
    /// running, when `every` has passed since the last line. Call it now and then.
    pub fn tick(&mut self, now: Instant) {
        let Look::Lines { every } = self.look else {
            return;
        };
        let Some(stage) = self.stage else {
            return;
        };
        let due = self
            .last_line
            .is_none_or(|t| now.saturating_duration_since(t) >= every);
        if !due {
            return;
        }
        let line = match &self.latest {
            Some(s) if !self.latest_shown => plain_line(stage, s),
            Some(_) => return, // nothing new since the last line
            None => format!(
                "{stage}: running for {}",
                flg_core::logging::human_seconds(
                    now.saturating_duration_since(self.stage_since)
                        .as_secs_f64()
                )
            ),
        };
        self.latest_shown = true;
        self.last_line = Some(now);
        self.say(line);
    }

    /// Draws one event.
    pub fn handle(&mut self, r: &Record) {
        match &r.event {
            Event::StageStarted {
                stage, total_steps, ..
            } => self.start_stage(*stage, *total_steps, true),
            Event::Step {
                stage,
                step,
                total_steps,
                values,
                samples_per_s,
                eta_s,
            } => {
                if self.stage != Some(*stage) {
                    self.start_stage(*stage, *total_steps, false);
                }
                let seen = StepSeen {
                    step: *step,
                    total: *total_steps,
                    values: values.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                    samples_per_s: *samples_per_s,
                    eta_s: *eta_s,
                };
                if let Some(b) = &self.bar {
                    b.set_position(*step);
                    b.set_message(step_summary(&seen));
                }
                // The first report a view sees and the last of a stage are always shown.
                let first = self.latest.is_none();
                let last = *total_steps > 0 && *step >= *total_steps;
                self.latest = Some(seen);
                self.latest_shown = false;
                if first || last {
                    self.last_line = None;
                }
                self.tick(Instant::now());
            }
            Event::StageDone { stage, seconds, .. } => {
                if let Some(b) = self.bar.take() {
                    b.finish_and_clear();
                }
                if self.stage == Some(*stage) {
                    self.stage = None;
                }
                self.say(format!("{}: done in {seconds:.1} s", stage.name()));
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
    pub fn follow(mut rx: tokio::sync::broadcast::Receiver<Record>, every: Duration) -> EventView {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let mut bars = Bars::new(every);
            loop {
                match rx.try_recv() {
                    Ok(e) => bars.handle(&e),
                    Err(tokio::sync::broadcast::error::TryRecvError::Empty) => {
                        bars.tick(Instant::now());
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn step(step: u64, rate: Option<f64>) -> Record {
        Record::now(Event::Step {
            stage: Stage::Pruning,
            step,
            total_steps: 300,
            values: [("loss".to_string(), 0.0123)].into_iter().collect(),
            samples_per_s: rate,
            eta_s: rate.map(|r| (300 - step) as f64 * 8.0 / r),
        })
    }

    #[test]
    fn plain_lines_carry_the_coordinators_rate_and_come_every_period() {
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = lines.clone();
        let every = Duration::from_secs(3600);
        let mut bars = Bars::with_look(
            Look::Lines { every },
            Box::new(move |l| sink.lock().unwrap().push(l.to_string())),
        );
        // Attached mid-stage (as `watch` is): the first report is shown at once, with the
        // rate the coordinator measured, not 130 steps counted as just done.
        bars.handle(&step(130, Some(15.1)));
        bars.handle(&step(131, Some(15.0)));
        bars.handle(&step(132, Some(15.0)));
        let now = Instant::now();
        bars.tick(now); // within the period: nothing
        let so_far = lines.lock().unwrap().clone();
        assert_eq!(so_far.len(), 1, "{so_far:?}");
        bars.tick(now + every); // the period has passed: the latest step
        bars.tick(now + every * 2); // nothing new since: no line
        bars.handle(&step(300, Some(15.2))); // the stage's last step: always shown
        bars.handle(&Record::now(Event::StageDone {
            stage: Stage::Pruning,
            seconds: 20.0,
            message: String::new(),
        }));
        bars.handle(&Record::now(Event::StageStarted {
            stage: Stage::Export,
            total_steps: 0,
            generation: Some(1),
        }));
        bars.tick(Instant::now() + every);
        let got = lines.lock().unwrap().clone();
        assert_eq!(got.len(), 6, "{got:?}");
        assert!(
            got[0].ends_with("pruning 130/300 (43%) 15.1 samples/s, eta 1 min 30 s | loss 0.0123"),
            "{got:?}"
        );
        assert!(got[1].contains("pruning 132/300"), "{got:?}");
        assert!(
            got[2].contains("pruning 300/300 (100%) 15.2 samples/s, eta 0 s"),
            "{got:?}"
        );
        assert!(got[3].ends_with("pruning: done in 20.0 s"), "{got:?}");
        assert!(got[4].ends_with("export: started"), "{got:?}");
        assert!(got[5].contains("export: running for 1 h 00 min"), "{got:?}");
        for l in &got {
            assert!(!l.contains('\x1b'), "no terminal codes in a log: {l:?}");
            // Every line starts with its UTC time.
            assert!(
                l.len() > 21 && &l[10..11] == "T" && &l[19..21] == "Z ",
                "{l:?}"
            );
        }
        // Before the coordinator has a rate, the line shows the step and losses only.
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = lines.clone();
        let mut bars = Bars::with_look(
            Look::Lines { every },
            Box::new(move |l| sink.lock().unwrap().push(l.to_string())),
        );
        bars.handle(&step(1, None));
        assert!(lines.lock().unwrap()[0].ends_with("pruning 1/300 (0%) loss 0.0123"));
    }
}
