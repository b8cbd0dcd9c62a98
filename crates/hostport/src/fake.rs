//! In-memory [`HostPortManager`] for unit tests of callers (feature `test-util`): records
//! each pod's mappings and refuses a host port held by another pod, like the real one.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Mutex;

use crate::{BoxFuture, Error, HostPortManager, PodPorts, PortMapping};

#[derive(Debug, Default)]
pub struct FakeHostPortManager {
    pods: Mutex<BTreeMap<String, PodPorts>>,
}

impl FakeHostPortManager {
    /// The pods currently holding host ports.
    pub fn pods(&self) -> Vec<PodPorts> {
        self.pods
            .lock()
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default()
    }

    fn insert(&self, pod: PodPorts) -> Result<(), Error> {
        let mut pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        for other in pods.values().filter(|p| p.pod_id != pod.pod_id) {
            for mine in pod.mappings.iter().filter(|m| m.host_port != 0) {
                if let Some(theirs) = other.mappings.iter().find(|t| {
                    t.protocol == mine.protocol
                        && t.host_port == mine.host_port
                        && (t.specific_host_ip().is_none()
                            || mine.specific_host_ip().is_none()
                            || t.specific_host_ip() == mine.specific_host_ip())
                }) {
                    return Err(Error::AlreadyExists {
                        protocol: mine.protocol,
                        host_port: mine.host_port,
                        host_ip: mine.specific_host_ip().or(theirs.specific_host_ip()),
                        owner_id: other.pod_id.clone(),
                        owner_name: other.pod_name.clone(),
                    });
                }
            }
        }
        pods.insert(pod.pod_id.clone(), pod);
        Ok(())
    }
}

impl HostPortManager for FakeHostPortManager {
    fn add<'a>(
        &'a self,
        pod_id: &'a str,
        pod_name: &'a str,
        pod_ips: &'a [IpAddr],
        mappings: &'a [PortMapping],
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            self.insert(PodPorts {
                pod_id: pod_id.to_owned(),
                pod_name: pod_name.to_owned(),
                ips: pod_ips.to_vec(),
                mappings: mappings.to_vec(),
            })
        })
    }

    fn remove<'a>(&'a self, pod_id: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            self.pods
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(pod_id);
            Ok(())
        })
    }

    fn sync<'a>(&'a self, live: &'a [PodPorts]) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            self.pods.lock().unwrap_or_else(|e| e.into_inner()).clear();
            for pod in live {
                self.insert(pod.clone())?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ErrorKind, Protocol};

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn refuses_taken_ports_and_forgets_removed_pods() {
        let m = FakeHostPortManager::default();
        let ip: IpAddr = "10.0.0.2".parse().expect("ip");
        let pm = PortMapping {
            protocol: Protocol::Tcp,
            container_port: 80,
            host_port: 8080,
            host_ip: None,
        };
        block_on(m.add("a", "ns/a", &[ip], &[pm])).expect("first add");
        let err = block_on(m.add("b", "ns/b", &[ip], &[pm])).expect_err("conflict");
        assert_eq!(err.kind(), ErrorKind::AlreadyExists);
        block_on(m.remove("a")).expect("remove");
        block_on(m.remove("a")).expect("remove twice");
        block_on(m.add("b", "ns/b", &[ip], &[pm])).expect("port free again");
        assert_eq!(m.pods().len(), 1);
    }
}
