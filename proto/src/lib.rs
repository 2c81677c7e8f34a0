//! Generated gRPC code for fastlightgen. No logic lives here: the coordinator implements the
//! servers, the worker and the `fastlightgen` control client use the clients.

pub mod v1 {
    tonic::include_proto!("fastlightgen.v1");
}

pub use v1::*;
