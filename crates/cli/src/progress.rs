//! Progress bars (indicatif) that disappear with `--quiet`.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` steps with a prefix, hidden when `quiet`.
pub(crate) fn bar(len: u64, prefix: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    let style =
        ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos}/{len} {elapsed:>4} {msg}")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb.set_prefix(prefix.to_string());
    pb
}
