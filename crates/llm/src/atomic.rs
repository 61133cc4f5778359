//! Atomic file writes: a temporary file next to the destination, synced, then renamed over it
//! (oftq-aqlm's one implementation), so an interrupted run never leaves a half-written file.

use std::collections::HashMap;
use std::path::Path;

use oftq_candle::candle_core::Tensor;
use oftq_candle::layer::aqlm::checkpoint::{write_atomic, write_atomic_with};

use crate::error::{LlmError, Result};

/// Writes `bytes` to `path` atomically.
pub(crate) fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, bytes).map_err(LlmError::from)
}

/// Writes `tensors` to `path` as safetensors, atomically.
pub(crate) fn save_tensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    write_atomic_with(path, |tmp| {
        oftq_candle::candle_core::safetensors::save(tensors, tmp).map_err(std::io::Error::other)
    })
    .map_err(LlmError::from)
}
