//! The one-shot subcommands; the daemon is [`crate::run`].

pub mod identity;
pub mod register;
pub mod wait;
