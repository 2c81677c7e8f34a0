//! One coordinator per run directory: an advisory lock (`flock`) on `<run dir>/coordinator.lock`
//! held for the coordinator's life. The kernel drops it when the process dies, however it
//! dies, so a stale lock never blocks a restart. The file names the holder.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// The held lock; dropping it (or ending the process) releases it.
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Takes the lock, or says who holds it.
    pub fn take(path: &Path) -> Result<RunLock, String> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        // SAFETY: flock on a descriptor this function owns.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r != 0 {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let dir = path.parent().unwrap_or(path);
            return Err(format!(
                "{} is in use by another coordinator ({}); stop it first (fastlightgen stop), or use another experiment.name",
                dir.display(),
                if holder.trim().is_empty() {
                    "holder unknown".to_string()
                } else {
                    holder.trim().to_string()
                }
            ));
        }
        let me = format!(
            "pid {} on {}, since unix time {}",
            std::process::id(),
            flg_core::hostname(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        );
        let write = |f: &mut File| -> std::io::Result<()> {
            f.set_len(0)?;
            f.rewind()?;
            writeln!(f, "{me}")?;
            f.sync_all()
        };
        write(&mut file).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(RunLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_named_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coordinator.lock");
        let first = RunLock::take(&path).unwrap();
        let e = RunLock::take(&path).err().expect("refused while held");
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        drop(first);
        RunLock::take(&path).expect("free again");
    }
}
