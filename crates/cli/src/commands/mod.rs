//! One module per subcommand.

pub(crate) mod forward;
pub(crate) mod inspect;
