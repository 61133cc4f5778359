//! The golden harness (fixed interface, `shared/DESIGN.md`):
//! `cargo test --release -p oftq-verify --test golden`.

use oftq_verify::golden::{check_folder, golden_dir};

#[test]
fn golden() {
    let dir = golden_dir();
    match check_folder(&dir) {
        Ok(summary) => println!("{summary}"),
        Err(e) => panic!("golden check failed in {}: {e}", dir.display()),
    }
}
