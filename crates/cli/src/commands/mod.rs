//! One module per subcommand.

pub(crate) mod demo;
pub(crate) mod forward;
pub(crate) mod inspect;
pub(crate) mod llm;
pub(crate) mod quantize;
pub(crate) mod train;
