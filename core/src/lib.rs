//! `ignis-core`: the contract between the Ignis driver and its executors, and the
//! data plane they share.
//!
//! What lives here: ids, the job specification, the versioned task protocol
//! (`TaskRequest` / `TaskResult`), the plan-fragment codec (datafusion-proto plus
//! an extension codec for Ignis's own operators), the shuffle operators
//! ([`shuffle::ShuffleWriterExec`], [`shuffle::ShuffleReaderExec`]) and object
//! store resolution.
//!
//! What does not: scheduling (driver), task execution and output writing
//! (executor), HTTP. Nothing here knows which backend runs a task.

pub mod codec;
pub mod csv;
pub mod error;
pub mod ids;
pub mod job;
pub mod protocol;
pub mod session;
pub mod shuffle;
pub mod store;

pub use error::{ErrorKind, IgnisError, Result};
