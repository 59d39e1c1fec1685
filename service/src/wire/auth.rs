//! Authentication of every gRPC call: the pair's shared secret as a bearer token,
//! compared in constant time; refusals are logged with the caller's address.

use tonic::metadata::MetadataValue;
use tonic::{Request, Status};

use crate::wire::secret::constant_time_eq;

/// Checks `authorization: Bearer <secret>` on incoming calls.
#[derive(Clone)]
pub struct RequireSecret {
    expected: std::sync::Arc<String>,
}

impl RequireSecret {
    pub fn new(secret: String) -> RequireSecret {
        RequireSecret {
            expected: std::sync::Arc::new(format!("Bearer {secret}")),
        }
    }
}

impl tonic::service::Interceptor for RequireSecret {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let presented = request
            .metadata()
            .get("authorization")
            .map(|value| value.as_bytes());
        match presented {
            Some(token) if constant_time_eq(token, self.expected.as_bytes()) => Ok(request),
            other => {
                let caller = request
                    .remote_addr()
                    .map(|address| address.to_string())
                    .unwrap_or_else(|| "unknown".to_string());
                let what = if other.is_some() {
                    "a wrong secret"
                } else {
                    "no secret"
                };
                tracing::warn!(%caller, "refused a call with {what}");
                Err(Status::unauthenticated(format!(
                    "{what}: this node needs the pair's shared secret"
                )))
            }
        }
    }
}

/// Adds the bearer token to outgoing calls.
#[derive(Clone)]
pub struct AddSecret {
    header: MetadataValue<tonic::metadata::Ascii>,
}

impl AddSecret {
    pub fn new(secret: &str) -> Result<AddSecret, String> {
        let header = format!("Bearer {secret}")
            .parse()
            .map_err(|_| "the secret is not valid in a header".to_string())?;
        Ok(AddSecret { header })
    }
}

impl tonic::service::Interceptor for AddSecret {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.header.clone());
        Ok(request)
    }
}
