//! The launcher's own processes, and only those: it becomes the subreaper of everything it
//! starts, so a rank that outlives its mpirun is re-parented to the launcher instead of init,
//! and ending a launch means ending the launcher's descendants, found from the kernel's
//! process table. No pid taken from an RPC is ever signalled: a forged Register saying pid 0,
//! 1 or 4294967295 names no descendant.

use std::time::Duration;

/// Makes this process the reaper of its orphaned descendants (Linux `PR_SET_CHILD_SUBREAPER`).
pub fn become_subreaper() {
    // SAFETY: prctl with an integer argument; no memory is shared.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
}

/// A process as /proc/<pid>/stat describes it.
struct Proc {
    pid: u32,
    ppid: u32,
    /// Ended but not yet reaped (state `Z`): nothing left to signal.
    zombie: bool,
}

fn read_proc(pid: u32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses; the last ')' ends it.
    let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
    let zombie = rest.next()? == "Z";
    let ppid = rest.next()?.parse().ok()?;
    Some(Proc { pid, ppid, zombie })
}

/// Every process in /proc.
fn process_table() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| read_proc(e.ok()?.file_name().to_str()?.parse().ok()?))
        .collect()
}

/// Every descendant of `root` (not `root` itself) in `table`, children before grandchildren.
fn descendants_in(table: &[Proc], root: u32) -> Vec<&Proc> {
    let mut found: Vec<&Proc> = Vec::new();
    let mut parents = vec![root];
    while let Some(parent) = parents.pop() {
        for p in table {
            if p.ppid == parent && p.pid != root && !found.iter().any(|f| f.pid == p.pid) {
                found.push(p);
                parents.push(p.pid);
            }
        }
    }
    found
}

/// Every descendant of `root` (not `root` itself).
pub fn descendants(root: u32) -> Vec<u32> {
    descendants_in(&process_table(), root)
        .iter()
        .map(|p| p.pid)
        .collect()
}

/// SIGKILLs every descendant of `root` (a stopped one too: SIGKILL needs no SIGCONT) until
/// none is left, reaping those re-parented to this process. Gives up after about 5 s
/// (a process in uninterruptible sleep cannot be killed sooner), returning what is left.
pub fn kill_descendants(root: u32) -> Vec<u32> {
    let mut alive = Vec::new();
    for _ in 0..100 {
        let table = process_table();
        alive = descendants_in(&table, root)
            .into_iter()
            .filter(|p| !p.zombie)
            .map(|p| p.pid)
            .collect();
        if alive.is_empty() {
            break;
        }
        for &pid in &alive {
            // SAFETY: `pid` is a descendant of `root`, found in the process table just now.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
        reap_orphans();
        std::thread::sleep(Duration::from_millis(50));
    }
    reap_orphans();
    alive
}

/// Collects the exit status of every ended child of this process without blocking
/// (orphans re-parented to the subreaper become its children).
pub fn reap_orphans() {
    loop {
        let mut status = 0;
        // SAFETY: waitpid with WNOHANG only reads the status into a local.
        let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if r <= 0 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Exists and has not ended.
    fn running(pid: u32) -> bool {
        read_proc(pid).is_some_and(|p| !p.zombie)
    }

    #[test]
    fn a_tree_is_ended_and_nothing_outside_it() {
        // A root with two children (the shell starts them, then becomes the root's `sleep`
        // by exec, as mpirun stays the parent of its ranks), and a bystander outside.
        let mut tree = Command::new("sh")
            .args(["-c", "sleep 60 & sleep 60 & exec sleep 60"])
            .spawn()
            .unwrap();
        let mut bystander = Command::new("sleep").arg("60").spawn().unwrap();
        let root = tree.id();
        let mut found = Vec::new();
        for _ in 0..100 {
            found = descendants(root);
            if found.len() == 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(found.len(), 2, "the shell's two sleeps: {found:?}");
        assert!(!found.contains(&bystander.id()));
        // One stopped, as a rank under SIGSTOP would be.
        unsafe {
            libc::kill(found[0] as i32, libc::SIGSTOP);
        }
        assert!(kill_descendants(root).is_empty());
        for pid in &found {
            assert!(!running(*pid), "{pid} survived");
        }
        assert!(running(root), "the root itself is not signalled");
        assert!(
            running(bystander.id()),
            "a process outside the tree was signalled"
        );
        let _ = tree.kill();
        let _ = tree.wait();
        let _ = bystander.kill();
        let _ = bystander.wait();
    }
}
