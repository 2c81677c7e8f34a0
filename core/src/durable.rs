//! Files that must survive a crash: written to a temporary name, fsynced, renamed into place
//! and the directory fsynced, so that once a stage says it is done its output is on disk
//! whole; JSON-lines logs that repair a torn last line; and the check that a finished
//! stage's output is still there and readable.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// `path` with `.tmp` after its extension: the temporary name beside it.
pub fn tmp_beside(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Makes a directory's entries (a rename into it) durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Makes the rename of `path` durable (fsyncs its directory).
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => sync_dir(d),
        _ => sync_dir(Path::new(".")),
    }
}

/// Writes `bytes` to `path` durably: a temporary file beside it, fsynced, renamed into
/// place, the directory fsynced. A crash leaves the old file or the new one, never a part.
pub fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_with_mode(path, bytes, 0o666)
}

/// `write_file` for a secret: readable by its owner only (0600). Whatever was at `path`
/// before (a file of another mode, a symlink planted there) is replaced, not written
/// through.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_with_mode(path, bytes, 0o600)
}

/// The temporary file is always new (a stale one from a crash is removed first) and never
/// opened through a link, so its mode is `mode` (less the umask) and nobody else's file is
/// written.
fn write_with_mode(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let with_path =
        |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(with_path)?;
    }
    let tmp = tmp_beside(path);
    let _ = std::fs::remove_file(&tmp);
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_parent(path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        with_path(e)
    })
}

/// Whether a non-empty file's last byte is not a newline (only that byte is read).
pub fn ends_torn(f: &mut File) -> std::io::Result<bool> {
    if f.metadata()?.len() == 0 {
        return Ok(false);
    }
    f.seek(SeekFrom::End(-1))?;
    let mut last = [0u8];
    f.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

/// Opens a JSON-lines file for appending. After a torn last line (a crash mid-write) it
/// starts a new line, so the next record is not glued onto the fragment: only the torn
/// record is lost, and readers skip it.
pub fn open_jsonl(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    if ends_torn(&mut f)? {
        writeln!(f)?;
    }
    Ok(f)
}

/// Whether a stage output is there and readable: a safetensors file's header parses and its
/// offsets fit the file (a truncated file fails), a JSON file parses, any other file is not
/// empty. Says what is wrong.
pub fn check_output(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() == 0 {
        return Err(format!("{}: empty", path.display()));
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => crate::weights::source::read_header(path)
            .map(|_| ())
            .map_err(|e| format!("{e:#}")),
        Some("json") => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            serde_json::from_str::<serde_json::Value>(&text)
                .map(|_| ())
                .map_err(|e| format!("{}: not JSON: {e}", path.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_jsonl_line_is_closed_before_the_next_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        std::fs::write(&path, "{\"step\":1}\n{\"step\":2,\"lo").unwrap();
        let mut f = open_jsonl(&path).unwrap();
        writeln!(f, "{{\"step\":3}}").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let parsed: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        assert_eq!(parsed.len(), 2, "{text}");
        assert_eq!(parsed[1]["step"], 3);
    }

    #[test]
    fn a_durable_write_replaces_the_file_whole_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/eval.json");
        write_file(&path, b"{\"a\":1}").unwrap();
        write_file(&path, b"{\"a\":2}").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"a\":2}");
        assert!(!tmp_beside(&path).exists());
        assert!(check_output(&path).is_ok());
        std::fs::write(&path, b"{\"a\":").unwrap();
        assert!(check_output(&path).unwrap_err().contains("not JSON"));
        std::fs::write(&path, b"").unwrap();
        assert!(check_output(&path).unwrap_err().contains("empty"));
        assert!(check_output(&dir.path().join("gone.safetensors")).is_err());
    }
}
