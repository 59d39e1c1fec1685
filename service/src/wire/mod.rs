//! How nodes talk: the pair's shared `secret`, the bearer-token check on every call
//! (`auth`), channels and endpoints (`client`) and wire (protobuf) types <-> engine
//! types (`convert`). Protobuf types stop here, at the servers and at the peer link.

pub mod auth;
pub mod client;
pub mod convert;
pub mod secret;
