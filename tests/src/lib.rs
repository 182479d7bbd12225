//! Test support for Ignis's SQL suites: TPC-H data generation and the two
//! engines every `.slt` file runs on, single-node DataFusion (the oracle) and
//! Ignis distributed in local mode (every exchange through object storage),
//! and DataFusion's own `.slt` corpus run through Ignis.

pub mod cluster;
pub mod corpus;
pub mod engines;
pub mod guests;
pub mod tpch;
