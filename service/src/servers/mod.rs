//! What a node answers: the gRPC services (`replication_server`: Pull, FetchChunks;
//! `cluster_server`: Heartbeat, Status, Verify, the operator's calls; `site_server`:
//! Agent and Site) and the HTTP routes (`http`: `/healthz`, `/active`, `/passive`,
//! `/metrics`, and the status `page` at `/`).

pub mod cluster_server;
pub mod http;
pub mod page;
pub mod replication_server;
pub mod site_server;
