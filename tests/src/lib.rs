//! Test support for Ignis's SQL suites: TPC-H data generation and the two
//! engines every `.slt` file runs on, single-node DataFusion (the oracle) and
//! Ignis distributed in local mode (every exchange through object storage).

pub mod cluster;
pub mod engines;
pub mod guests;
pub mod tpch;
