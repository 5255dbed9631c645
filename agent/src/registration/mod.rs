//! This node's record on-chain, and its request for a seat while it has none, pure: the [`machine`] that
//! decides what to read and send, and when. The registrar task ([`crate::tasks::registrar`]) drives it with
//! the chain handle, dstack and a clock; its unit tests drive it with none of them.

pub mod machine;
