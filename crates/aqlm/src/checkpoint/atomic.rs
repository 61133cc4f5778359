//! Atomic file writes: a uniquely named temporary file in the same folder, fsync, rename.
//!
//! This is the workspace's one implementation (the layer's adapter files, the checkpoints, the
//! command line's outputs and plots all go through it). Temporary names come from `tempfile`
//! (`.<file name>.tmp.<random>`), so two threads or processes saving the same path never share a
//! temporary file: each rename installs one complete file, and the last one wins.

use std::io::Write;
use std::path::Path;

use tempfile::NamedTempFile;

use crate::error::AqlmError;

/// Writes `bytes` to `path` atomically: a temporary file next to it is written and synced,
/// then renamed over `path`, so readers see either the old or the new file, never a partial one.
///
/// ```
/// use oftq_aqlm::checkpoint::write_atomic;
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("notes.txt");
/// write_atomic(&path, b"first")?;
/// write_atomic(&path, b"second")?;
/// assert_eq!(std::fs::read(&path)?, b"second");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`AqlmError::Io`] naming `path` on any I/O failure (the temporary file is removed).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), AqlmError> {
    persist_atomic(path, "", |tmp| tmp.write_all(bytes))
}

/// [`write_atomic`] for writers that open a file by path themselves (an image encoder, say):
/// `write` gets the temporary file's path, which ends with `path`'s extension so that a writer
/// choosing a format from it picks the right one, and must leave the whole content there.
///
/// # Errors
/// [`AqlmError::Io`] naming `path` for the error `write` returns or any other I/O failure (the
/// temporary file is removed).
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&Path) -> std::io::Result<()>,
) -> Result<(), AqlmError> {
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    persist_atomic(path, &ext, |tmp| write(tmp.path()))
}

/// Creates the temporary file (`.<name>.tmp.<random><suffix>` next to `path`, with the
/// permissions a plain `File::create` would give), lets `fill` write it, syncs it and renames it
/// over `path`; syncs the folder, best effort.
fn persist_atomic(
    path: &Path,
    suffix: &str,
    fill: impl FnOnce(&mut NamedTempFile) -> std::io::Result<()>,
) -> Result<(), AqlmError> {
    let io = |source| AqlmError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!(".{name}.tmp.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(suffix);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // 0o666 minus the umask, as `File::create` (tempfile's default is 0o600).
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let mut tmp = builder.tempfile_in(dir).map_err(io)?;
    fill(&mut tmp).map_err(io)?;
    // Syncing any handle of the file flushes everything written to it, also through other handles.
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    // Persist the rename itself; not every platform can open a directory, so best effort.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.bin");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let missing = dir.path().join("no/such/dir/a.bin");
        assert!(matches!(
            write_atomic(&missing, b"x"),
            Err(AqlmError::Io { .. })
        ));
    }

    #[test]
    fn writer_by_path_gets_the_extension_and_errors_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("plot.png");
        write_atomic_with(&p, |tmp| {
            assert_eq!(tmp.extension().unwrap(), "png");
            assert!(
                tmp.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(".plot.png.tmp.")
            );
            std::fs::write(tmp, b"pixels")
        })
        .unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"pixels");
        let err = write_atomic_with(&p, |_| Err(std::io::Error::other("encoder failed")));
        assert!(matches!(err, Err(AqlmError::Io { .. })));
        assert_eq!(std::fs::read(&p).unwrap(), b"pixels");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn permissions_are_those_of_file_create() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (plain, atomic) = (dir.path().join("plain"), dir.path().join("atomic"));
        std::fs::File::create(&plain).unwrap();
        write_atomic(&atomic, b"x").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&atomic), mode(&plain));
    }

    /// Two threads saving the same path at once: every save succeeds, the file is always one
    /// complete version, and no temporary file is left (a temporary name shared by the threads
    /// — the process id alone — made one thread's rename fail or install the other's bytes).
    #[test]
    fn concurrent_saves_of_one_path_do_not_collide() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("shared.bin");
        let versions: Vec<Vec<u8>> = (0..2u8).map(|t| vec![t; 64 * 1024]).collect();
        std::thread::scope(|s| {
            for v in &versions {
                let p = &p;
                s.spawn(move || {
                    for _ in 0..50 {
                        write_atomic(p, v).unwrap();
                        let now = std::fs::read(p).unwrap();
                        assert!(now.len() == v.len() && now.iter().all(|&b| b == now[0]));
                    }
                });
            }
        });
        let last = std::fs::read(&p).unwrap();
        assert!(versions.contains(&last));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
