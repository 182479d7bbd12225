//! Integration tests of the driver: the real `ignis` binary and the library,
//! in local mode on local files, and in cluster mode against real processes.

#![allow(clippy::unwrap_used, reason = "test helpers fail the test on any error")]

mod cluster;
mod commit;
mod common;
mod csv_modes;
mod errors;
mod formats;
mod memory;
mod orders;
mod parity;
mod pieces;
mod receipts;
mod recovery;
mod retry;
mod tenants;
mod udf;
mod write_modes;
