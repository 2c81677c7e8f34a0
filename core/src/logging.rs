//! Log output for every fastlightgen process, for a terminal and for a log file alike.
//!
//! - `tracing` lines go to stderr, with colours only when stderr is a terminal: an sbatch log
//!   or `make demo > log` gets plain text, no escape codes.
//! - A worker rank's lines start with `[rank N]`, from the launcher's environment (OpenMPI,
//!   PMI, Slurm) at start and from MPI once it is up, so lines interleaved by `mpirun` or
//!   `srun` say who wrote them.
//! - Where a progress bar cannot be drawn (stderr not a terminal), long work prints one plain
//!   line every [`log_every`] instead (`FLG_LOG_EVERY`, seconds).

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// The variable that sets the plain progress lines' period in seconds.
pub const LOG_EVERY_ENV: &str = "FLG_LOG_EVERY";

/// The default period of plain progress lines.
pub const DEFAULT_LOG_EVERY_S: f64 = 30.0;

/// This process's rank, -1 until one is known.
static RANK: AtomicI64 = AtomicI64::new(-1);

/// This process's rank as its launcher announces it (OpenMPI, PMIx, PMI, Slurm), if any.
pub fn rank_from_env() -> Option<u32> {
    [
        "OMPI_COMM_WORLD_RANK",
        "PMIX_RANK",
        "PMI_RANK",
        "SLURM_PROCID",
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok()?.trim().parse().ok())
}

/// Marks every later log line of this process with `[rank N]`.
pub fn set_rank(rank: u32) {
    RANK.store(i64::from(rank), Ordering::Relaxed);
}

/// `"[rank N] "` in a rank's process, else empty: the prefix of every line it logs.
pub fn rank_prefix() -> String {
    match RANK.load(Ordering::Relaxed) {
        r if r >= 0 => format!("[rank {r}] "),
        _ => String::new(),
    }
}

/// Whether stderr is a terminal (progress bars and colours) or a file or pipe (plain lines).
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// The period of plain progress lines: `$FLG_LOG_EVERY` seconds, else 30.
pub fn log_every() -> Result<Duration, String> {
    match std::env::var(LOG_EVERY_ENV) {
        Ok(v) if !v.trim().is_empty() => {
            parse_period(&v).map_err(|e| format!("{LOG_EVERY_ENV}={e}"))
        }
        _ => Ok(Duration::from_secs_f64(DEFAULT_LOG_EVERY_S)),
    }
}

/// Seconds between 0.1 and a day, as a period (`--log-every`, `FLG_LOG_EVERY`).
pub fn parse_period(text: &str) -> Result<Duration, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && (0.1..=86_400.0).contains(s))
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{text:?}: expected seconds between 0.1 and 86400"))
}

/// A stderr writer that puts the rank prefix in front of every line of one log record
/// (tracing writes a whole record at once, so a record's lines stay together).
pub struct PrefixedStderr {
    buf: Vec<u8>,
}

impl Write for PrefixedStderr {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for PrefixedStderr {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let text = prefix_lines(&rank_prefix(), &String::from_utf8_lossy(&self.buf));
        // One write per record, so records from threads do not interleave mid-line.
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }
}

/// `text` with `prefix` in front of each of its lines.
pub fn prefix_lines(prefix: &str, text: &str) -> String {
    if prefix.is_empty() {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + prefix.len() * 2);
    for line in text.split_inclusive('\n') {
        out.push_str(prefix);
        out.push_str(line);
    }
    out
}

/// Sets up `tracing` output on stderr; `RUST_LOG` picks the level (default `info`). Colours
/// only on a terminal; a rank's lines carry `[rank N]` (see the module's notes).
pub fn init_logging() {
    if let Some(r) = rank_from_env() {
        set_rank(r);
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(stderr_is_terminal())
        .with_writer(|| PrefixedStderr { buf: Vec::new() })
        .try_init();
}

/// Seconds as people read them in a progress line: `42 s`, `7 min 12 s`, `3 h 05 min`.
pub fn human_seconds(s: f64) -> String {
    if !s.is_finite() || s < 0.0 {
        return "?".into();
    }
    let s = s.round() as u64;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {:02} s", s / 60, s % 60),
        _ => format!("{} h {:02} min", s / 3600, (s % 3600) / 60),
    }
}

/// The time now as `2026-11-28T06:40:01Z`, which starts every plain progress line.
pub fn utc_timestamp() -> String {
    utc_of(crate::now_unix())
}

/// `unix` seconds as an ISO 8601 UTC time (whole seconds).
pub fn utc_of(unix: f64) -> String {
    let secs = unix.max(0.0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (Howard Hinnant's days_from_civil, inverted).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_of_a_record_gets_the_prefix() {
        assert_eq!(
            prefix_lines("[rank 1] ", "a\nb\n"),
            "[rank 1] a\n[rank 1] b\n"
        );
        assert_eq!(prefix_lines("", "a\n"), "a\n");
        assert_eq!(
            prefix_lines("[rank 0] ", "no newline"),
            "[rank 0] no newline"
        );
    }

    #[test]
    fn periods_are_bounded_and_seconds_read_well() {
        assert_eq!(parse_period("2.5"), Ok(Duration::from_millis(2500)));
        for bad in ["0", "-1", "nan", "inf", "1e9", "x"] {
            assert!(
                parse_period(bad)
                    .unwrap_err()
                    .contains("between 0.1 and 86400"),
                "{bad}"
            );
        }
        assert_eq!(human_seconds(42.4), "42 s");
        assert_eq!(human_seconds(432.0), "7 min 12 s");
        assert_eq!(human_seconds(3.0 * 3600.0 + 300.0), "3 h 05 min");
        assert_eq!(human_seconds(f64::NAN), "?");
    }

    #[test]
    fn utc_times() {
        assert_eq!(utc_of(0.0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_of(951_782_400.0), "2000-02-29T00:00:00Z");
        assert_eq!(utc_of(1_795_847_401.5), "2026-11-28T06:30:01Z");
    }
}
