//! Integration tests of the driver: the real `ignis` binary and the library,
//! in local mode on local files.

mod common;
mod errors;
mod orders;
mod retry;
mod write_modes;
