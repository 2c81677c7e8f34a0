//! Progress of long work in a process that draws its own (a run without a coordinator,
//! `data shapes`, Stage I): a bar on a terminal; in a log file one plain line every
//! `$FLG_LOG_EVERY` seconds (30 by default), with the rate counted from where the work
//! stood when this process took it up (a resumed stage does not count its earlier steps).

use indicatif::{ProgressBar, ProgressStyle};
use std::time::{Duration, Instant};

/// A bar, plain lines, or nothing (ranks other than 0).
pub struct Progress(Look);

enum Look {
    Bar(ProgressBar),
    Lines(Lines),
    Hidden,
}

struct Lines {
    what: String,
    total: u64,
    pos: u64,
    /// Where the counting of the rate starts (the position when work began here).
    from: u64,
    since: Instant,
    last_line: Instant,
    every: Duration,
    message: String,
}

impl Lines {
    fn line(&self, now: Instant) -> String {
        let secs = now.saturating_duration_since(self.since).as_secs_f64();
        let done = self.pos.saturating_sub(self.from);
        let mut parts = vec![format!(
            "{} {}/{} ({:.0}%)",
            self.what,
            self.pos,
            self.total,
            100.0 * self.pos as f64 / self.total.max(1) as f64
        )];
        if done > 0 && secs > 0.0 {
            let rate = done as f64 / secs;
            parts.push(format!(
                "{rate:.2}/s, eta {}",
                flg_core::logging::human_seconds(self.total.saturating_sub(self.pos) as f64 / rate)
            ));
        }
        if !self.message.is_empty() {
            parts.push(self.message.clone());
        }
        format!(
            "{}{} {}",
            flg_core::logging::rank_prefix(),
            flg_core::logging::utc_timestamp(),
            parts.join(" | ")
        )
    }

    fn maybe_print(&mut self) {
        let now = Instant::now();
        if now.saturating_duration_since(self.last_line) >= self.every || self.pos == self.total {
            self.last_line = now;
            eprintln!("{}", self.line(now));
        }
    }
}

impl Progress {
    /// Progress for `total` items of work named `what`, as stderr calls for.
    pub fn new(total: u64, what: &str) -> Progress {
        if flg_core::logging::stderr_is_terminal() {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg:>14} [{bar:40.cyan/blue}] {pos}/{len} {per_sec} eta {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_message(what.to_string());
            return Progress(Look::Bar(bar));
        }
        let every = flg_core::logging::log_every().unwrap_or_else(|e| {
            tracing::warn!("{e}; using {} s", flg_core::logging::DEFAULT_LOG_EVERY_S);
            Duration::from_secs_f64(flg_core::logging::DEFAULT_LOG_EVERY_S)
        });
        let now = Instant::now();
        Progress(Look::Lines(Lines {
            what: what.to_string(),
            total,
            pos: 0,
            from: 0,
            since: now,
            last_line: now,
            every,
            message: String::new(),
        }))
    }

    /// Shows nothing.
    pub fn hidden() -> Progress {
        Progress(Look::Hidden)
    }

    /// Progress on rank 0 only.
    pub fn on_lead(lead: bool, total: u64, what: &str) -> Progress {
        if lead {
            Progress::new(total, what)
        } else {
            Progress::hidden()
        }
    }

    /// Where the work stands before any of it is done here (a resumed stage).
    pub fn set_position(&mut self, pos: u64) {
        match &mut self.0 {
            Look::Bar(b) => {
                b.set_position(pos);
                b.reset_eta();
            }
            Look::Lines(l) => {
                l.pos = pos;
                l.from = pos;
                l.since = Instant::now();
            }
            Look::Hidden => {}
        }
    }

    pub fn inc(&mut self, n: u64) {
        match &mut self.0 {
            Look::Bar(b) => b.inc(n),
            Look::Lines(l) => {
                l.pos += n;
                l.maybe_print();
            }
            Look::Hidden => {}
        }
    }

    /// A short text shown beside the count (the latest losses).
    pub fn set_message(&mut self, message: String) {
        match &mut self.0 {
            Look::Bar(b) => b.set_message(message),
            Look::Lines(l) => l.message = message,
            Look::Hidden => {}
        }
    }

    pub fn finish(&mut self) {
        if let Look::Bar(b) = &self.0 {
            b.finish();
        }
    }

    /// Ends the work and removes the bar (a plain line stays: a log keeps its history).
    pub fn finish_and_clear(&mut self) {
        if let Look::Bar(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}
