//! Starting worker processes: finding the worker binary and building the `mpirun` command.
//!
//! Users never pass root or oversubscription flags themselves: OpenMPI refuses to run as root
//! without `--allow-run-as-root`, and refuses more ranks than cores without `--oversubscribe`
//! (the 2-core laptop demo runs 2 ranks that each want several threads), so single-node
//! launches add both. With a hostfile (a cluster), slots come from the hostfile and
//! oversubscription stays an error, as a misconfigured hostfile should be.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The environment variable the launcher hands each launch's secret to the ranks in (never a
/// command-line argument: those are world-readable in /proc; a process's environment is not).
pub const LAUNCH_SECRET_ENV: &str = "FLG_LAUNCH_SECRET";

/// The gRPC metadata key the ranks send the launch secret in.
pub const LAUNCH_SECRET_HEADER: &str = "x-flg-launch-secret";

/// Name of the worker binary, installed next to `fastlightgen`.
pub const WORKER_BIN: &str = "flg-worker";

/// The worker binary: `$FLG_WORKER_BIN`, or `flg-worker` next to the running executable.
pub fn worker_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("FLG_WORKER_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate this executable: {e}"))?;
    let dir = exe.parent().ok_or("this executable has no directory")?;
    // Test binaries live one level down, in target/<profile>/deps.
    for candidate in [dir.join(WORKER_BIN), dir.join("..").join(WORKER_BIN)] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(format!(
        "the worker binary `{WORKER_BIN}` is not next to {} (build it with `make build`, or set FLG_WORKER_BIN)",
        exe.display()
    ))
}

/// Whether this process runs as root (OpenMPI then needs to be told it is allowed).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// How to start `np` ranks of `program args...`.
#[derive(Clone, Debug, Default)]
pub struct MpiLaunch {
    pub np: u32,
    pub hostfile: Option<PathBuf>,
    /// Extra `mpirun` arguments from the config, passed as they are.
    pub extra_args: Vec<String>,
    /// Variables set for the ranks, on every node (`mpirun -x NAME` carries the name only;
    /// the value travels in mpirun's environment).
    pub env: Vec<(String, String)>,
}

impl MpiLaunch {
    pub fn single_node(np: u32) -> MpiLaunch {
        MpiLaunch {
            np,
            ..MpiLaunch::default()
        }
    }

    /// The `mpirun` command line (not started).
    pub fn command(&self, program: &Path, args: &[OsString]) -> Command {
        let mut cmd = Command::new("mpirun");
        cmd.arg("-np").arg(self.np.to_string());
        if running_as_root() {
            cmd.arg("--allow-run-as-root");
        }
        match &self.hostfile {
            Some(h) => {
                cmd.arg("--hostfile").arg(h);
            }
            None => {
                // One node: allow more ranks than cores, and let each rank's threads use any core
                // (OpenMPI would pin each rank to one core, starving libtorch's thread pool).
                // Ranks waiting in a collective yield the core instead of spinning on it, which
                // matters when there are more ranks than cores.
                cmd.args(["--oversubscribe", "--bind-to", "none"]);
                cmd.env("OMPI_MCA_mpi_yield_when_idle", "1");
            }
        }
        // Containers often forbid the cross-memory-attach syscalls of OpenMPI's shared-memory
        // transport ("Read -1, expected ..."); plain copies work everywhere.
        // A value the user exported wins (e.g. `cma` where the container allows it).
        if std::env::var_os("OMPI_MCA_btl_vader_single_copy_mechanism").is_none() {
            cmd.env("OMPI_MCA_btl_vader_single_copy_mechanism", "none");
        }
        for (name, value) in &self.env {
            cmd.env(name, value);
            cmd.arg("-x").arg(name);
        }
        cmd.args(&self.extra_args);
        cmd.arg(program).args(args);
        cmd
    }
}
