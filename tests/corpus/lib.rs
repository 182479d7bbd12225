//! Nothing to build: this package only pins the corpus crate (see Cargo.toml).
