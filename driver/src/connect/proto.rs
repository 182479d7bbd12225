//! The Spark Connect messages and service, generated at build time from
//! `driver/proto/` (see `build.rs`).

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod spark {
    tonic::include_proto!("spark.connect");
}

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod rpc {
    tonic::include_proto!("google.rpc");
}
