//! Verification for oftq: the golden harness against PEFT/aqlm outputs, an independent nalgebra
//! reference implementation, and property tests (in `tests/`).
//!
//! The golden harness reads the folder named by `OFTQ_GOLDEN_DIR`, or `../shared/golden` relative
//! to the workspace root, and checks every case it finds through the public loading APIs:
//!
//! ```no_run
//! let dir = oftq_verify::golden::golden_dir();
//! let summary = oftq_verify::golden::check_folder(&dir)?;
//! println!("{summary}");
//! # Ok::<(), oftq_verify::GoldenError>(())
//! ```

pub mod error;
pub mod golden;
pub mod reference;
pub mod tensors;

pub use error::GoldenError;
