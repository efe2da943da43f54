//! Clients of other members' `TaskEvents` service, one lazily connected
//! channel per member, shared by whoever sends task events (members to
//! each other, media pods to legs' owners), so every sender gets the same
//! connect and call time limits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::grpc::task_events_client::TaskEventsClient;

/// How long connecting to a member, or one delivery, may take.
pub const DELIVER_TIMEOUT: Duration = Duration::from_secs(2);

/// The cached clients, by member (its TaskEvents `host:port`).
#[derive(Clone, Debug, Default)]
pub struct TaskEventsClients {
    clients: Arc<Mutex<HashMap<String, TaskEventsClient<Channel>>>>,
}

/// A member address that does not make a URI.
#[derive(Debug, thiserror::Error)]
#[error("member {member:?}: {source}")]
pub struct BadMember {
    member: String,
    source: tonic::transport::Error,
}

impl TaskEventsClients {
    /// The client of `member`, made on first use; it connects when first
    /// called, so a member that is down costs nothing until then.
    pub fn get(&self, member: &str) -> Result<TaskEventsClient<Channel>, BadMember> {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = clients.get(member) {
            return Ok(c.clone());
        }
        let endpoint =
            Endpoint::from_shared(format!("http://{member}")).map_err(|source| BadMember {
                member: member.to_string(),
                source,
            })?;
        let c = TaskEventsClient::new(
            endpoint
                .connect_timeout(DELIVER_TIMEOUT)
                .timeout(DELIVER_TIMEOUT)
                .connect_lazy(),
        );
        clients.insert(member.to_string(), c.clone());
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_client_per_member_and_a_clear_error_for_a_bad_address() {
        let clients = TaskEventsClients::default();
        assert!(clients.get("10.0.0.1:9446").is_ok());
        assert!(clients.get("10.0.0.1:9446").is_ok());
        assert_eq!(clients.clients.lock().unwrap().len(), 1);
        let bad = clients.get("not a host:x").unwrap_err();
        assert!(bad.to_string().contains("not a host:x"), "{bad}");
    }
}
