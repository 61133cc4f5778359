// Shared by the folder targets: an input is `[u32 LE n][n bytes of JSON config][safetensors file]`,
// written into a RAM-backed temporary folder (the public loaders take folders).

use std::path::PathBuf;

/// Splits `data` into (config JSON, safetensors bytes); `None` if the length prefix is short.
pub fn split(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let n = u32::from_le_bytes(data.get(..4)?.try_into().ok()?) as usize;
    let rest = &data[4..];
    if n > rest.len() {
        return None;
    }
    Some(rest.split_at(n))
}

/// A fresh temporary folder, in /dev/shm when there is one.
pub fn tempdir() -> tempfile::TempDir {
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(&shm) {
            return d;
        }
    }
    tempfile::tempdir().unwrap()
}
