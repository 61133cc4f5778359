//! `cargo xtask docs` (placeholder until the site generator lands).

use std::path::Path;

use anyhow::Result;

/// Builds the documentation site.
pub(crate) fn run(_root: &Path) -> Result<()> {
    anyhow::bail!("docs: not implemented yet")
}
