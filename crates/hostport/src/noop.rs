//! The manager for `[network] hostport_mapping = false`: host ports are someone else's job
//! (for example a CNI `portmap` plugin in the conflist), so every call succeeds doing nothing.

use std::net::IpAddr;

use crate::{BoxFuture, Error, HostPortManager, PodPorts, PortMapping};

#[derive(Debug, Default, Clone, Copy)]
pub struct NoopHostPortManager;

impl HostPortManager for NoopHostPortManager {
    fn add<'a>(
        &'a self,
        pod_id: &'a str,
        _pod_name: &'a str,
        _pod_ips: &'a [IpAddr],
        mappings: &'a [PortMapping],
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            if !mappings.is_empty() {
                tracing::debug!(pod_id, "host-port mapping disabled; ignoring port mappings");
            }
            Ok(())
        })
    }

    fn remove<'a>(&'a self, _pod_id: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }

    fn sync<'a>(&'a self, _live: &'a [PodPorts]) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }
}
