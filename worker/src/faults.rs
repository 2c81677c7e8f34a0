//! Fault injection for the recovery tests: `FLG_FAULT` makes a rank kill or stop *itself*
//! with a real signal at a chosen point, so tests exercise the real failure paths (mpirun
//! losing a rank, a silent rank, a checkpoint cut short) without racing an outside `kill`.
//!
//! `FLG_FAULT=<action>:<rank>:<stage>:<step>[:<generation>]`, several separated by commas:
//! - `kill`: SIGKILL at the boundary after `step` steps of `stage`;
//! - `stop`: SIGSTOP there (a hung rank: alive, silent);
//! - `kill-in-checkpoint`: SIGKILL halfway through writing the checkpoint of that step.
//!
//! Only launch `generation` (default 0) is affected, so the restarted launch runs through.

#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    pub action: String,
    pub rank: u32,
    pub stage: String,
    pub step: u64,
    pub generation: u32,
}

pub fn parse(spec: &str) -> Result<Vec<Fault>, String> {
    spec.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|one| {
            let f: Vec<&str> = one.trim().split(':').collect();
            let bad = || {
                format!("FLG_FAULT entry {one:?}: expected <kill|stop|kill-in-checkpoint>:<rank>:<stage>:<step>[:<generation>]")
            };
            if !(4..=5).contains(&f.len())
                || !["kill", "stop", "kill-in-checkpoint"].contains(&f[0])
            {
                return Err(bad());
            }
            Ok(Fault {
                action: f[0].to_string(),
                rank: f[1].parse().map_err(|_| bad())?,
                stage: f[2].to_string(),
                step: f[3].parse().map_err(|_| bad())?,
                generation: f.get(4).map_or(Ok(0), |g| g.parse()).map_err(|_| bad())?,
            })
        })
        .collect()
}

/// The faults of `FLG_FAULT`, read once (none when unset; a malformed value is reported and
/// ignored): this is asked at every step boundary.
fn configured() -> &'static [Fault] {
    static FAULTS: std::sync::OnceLock<Vec<Fault>> = std::sync::OnceLock::new();
    FAULTS.get_or_init(|| match std::env::var("FLG_FAULT") {
        Ok(spec) => parse(&spec).unwrap_or_else(|e| {
            eprintln!("warning: {e}");
            Vec::new()
        }),
        Err(_) => Vec::new(),
    })
}

fn matching(action: &str, rank: u32, generation: u32, stage: &str, step: u64) -> bool {
    configured().iter().any(|f| {
        f.action == action
            && f.rank == rank
            && f.generation == generation
            && f.stage == stage
            && f.step == step
    })
}

fn raise(signal: i32, what: &str, rank: u32, stage: &str, step: u64) {
    eprintln!("FLG_FAULT: rank {rank} sends itself {what} at {stage} step {step}");
    // SAFETY: sending a signal to our own process.
    unsafe {
        libc::kill(libc::getpid(), signal);
    }
}

/// At a step boundary: kill or stop this rank if asked to.
pub fn at_boundary(rank: u32, generation: u32, stage: &str, step: u64) {
    if matching("kill", rank, generation, stage, step) {
        raise(libc::SIGKILL, "SIGKILL", rank, stage, step);
    }
    if matching("stop", rank, generation, stage, step) {
        raise(libc::SIGSTOP, "SIGSTOP", rank, stage, step);
    }
}

/// Halfway through writing a checkpoint file: kill this rank if asked to.
pub fn in_checkpoint(rank: u32, generation: u32, stage: &str, step: u64) {
    if matching("kill-in-checkpoint", rank, generation, stage, step) {
        raise(libc::SIGKILL, "SIGKILL (mid-checkpoint)", rank, stage, step);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_specs_parse_and_bad_ones_are_named() {
        let f = parse("kill:1:distill:7, stop:0:pruning:3:1").unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!((f[0].rank, f[0].step, f[0].generation), (1, 7, 0));
        assert_eq!((f[1].action.as_str(), f[1].generation), ("stop", 1));
        let e = parse("explode:1:distill:7").unwrap_err();
        assert!(e.contains("explode"), "{e}");
    }
}
