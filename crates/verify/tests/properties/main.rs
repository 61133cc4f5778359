//! Property tests of `oftq-ortho` against the independent nalgebra reference
//! (`oftq_verify::reference`) and the closed forms of oft-numerics §7 (F1–F8, property tests 1–12);
//! `layer.rs` and `aqlm.rs` check `oftq-layer` on dense and AQLM bases against the same reference
//! (properties named `L<n>.`, with `n` the §7 test number).
//!
//! Case counts: 32 per property by default (4 for the few heavy ones with `b` up to 256);
//! `PROPTEST_CASES=N` sets `N` (heavy ones `max(1, N/8)`). Each property records its worst observed
//! error against its bound and, when it finishes, prints its row of the table and rewrites the file
//! named by `OFTQ_VERIFY_REPORT` (if set) with the rows of every property finished so far: no test
//! depends on the order libtest runs them in. Failing seeds are persisted in
//! `tests/proptest-regressions/<file>.txt` and replayed first.

// Test code: helpers outside `#[test]` functions may unwrap and panic (a failure is the point).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod agreement;
mod aqlm;
mod coft;
mod common;
mod exact_cayley;
mod fixtures;
mod gradients;
mod layer;
mod neumann;
mod packing;
mod rotation;
