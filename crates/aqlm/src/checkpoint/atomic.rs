//! Atomic file writes: temp file in the same folder, fsync, rename.

use std::io::Write;
use std::path::Path;

use crate::error::AqlmError;

/// Writes `bytes` to `path` atomically: a temporary file next to it is written and synced,
/// then renamed over `path`, so readers see either the old or the new file, never a partial one.
///
/// # Errors
/// [`AqlmError::Io`] naming `path` on any I/O failure (the temporary file is removed).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), AqlmError> {
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
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // Persist the rename itself; not every platform can open a directory, so best effort.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
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
}
