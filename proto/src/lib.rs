//! Generated gRPC code for `standin.v1` (see `proto/standin/v1/standin.proto`).
//!
//! Only the `service` crate uses these types; it converts them to engine types at the
//! edge. The standard `grpc.health.v1` service comes from `tonic-health`.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("standin.v1");
}
