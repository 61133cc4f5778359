//! Property tests (filled in by the verification issue).
