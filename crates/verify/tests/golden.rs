//! The golden harness (fixed interface, `shared/DESIGN.md`):
//! `cargo test --release -p oftq-verify --test golden`.

use std::io::Write;

use oftq_verify::golden::{check_folder, golden_dir};

#[test]
fn golden() {
    let dir = golden_dir();
    match check_folder(&dir) {
        // Written to the process's stdout directly, not through `println!`, so that the summary
        // line shows even though the test harness captures `println!` output of passing tests.
        Ok(summary) => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{summary}");
            let _ = out.flush();
        }
        Err(e) => panic!("golden check failed in {}: {e}", dir.display()),
    }
}
