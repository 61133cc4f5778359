//! ortho
