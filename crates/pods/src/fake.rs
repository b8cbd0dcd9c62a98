//! In-memory [`PodNetworking`] and [`Cgroups`] for unit tests of the lifecycle (feature
//! `test-util`). Together with `nsmgr::fake` and `hostport::fake` they let the state machine
//! be tested without privileges; the real implementations are covered by kernel and
//! end-to-end tests.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;

use crate::cgroup::{CgroupError, Cgroups};
use crate::net::{Attached, BoxFuture, NetAttach, NetError, PodNetworking, Readiness};

/// Fake network: hands out 10.99.0.x addresses; can be made unready or failing.
#[derive(Debug, Default)]
pub struct FakeNetworking {
    state: Mutex<FakeNetState>,
}

#[derive(Debug, Default)]
struct FakeNetState {
    not_ready: Option<String>,
    fail_attach: Option<String>,
    next: u8,
    attached: BTreeMap<String, IpAddr>,
    gc_calls: Vec<Vec<String>>,
}

impl FakeNetworking {
    fn state(&self) -> std::sync::MutexGuard<'_, FakeNetState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes readiness report false with `message` (None: ready again).
    pub fn set_not_ready(&self, message: Option<&str>) {
        self.state().not_ready = message.map(str::to_string);
    }

    /// Makes every attach fail with `message`.
    pub fn fail_attach(&self, message: Option<&str>) {
        self.state().fail_attach = message.map(str::to_string);
    }

    /// Pod ids currently attached.
    pub fn attached(&self) -> Vec<String> {
        self.state().attached.keys().cloned().collect()
    }

    /// The live lists passed to gc.
    pub fn gc_calls(&self) -> Vec<Vec<String>> {
        self.state().gc_calls.clone()
    }
}

impl PodNetworking for FakeNetworking {
    fn readiness(&self) -> BoxFuture<'_, Readiness> {
        Box::pin(async move {
            match &self.state().not_ready {
                Some(m) => Readiness {
                    ready: false,
                    message: m.clone(),
                },
                None => Readiness {
                    ready: true,
                    message: String::new(),
                },
            }
        })
    }

    fn attach<'a>(&'a self, pod: &'a NetAttach) -> BoxFuture<'a, Result<Attached, NetError>> {
        Box::pin(async move {
            let mut s = self.state();
            if let Some(m) = &s.fail_attach {
                return Err(m.clone().into());
            }
            s.next = s.next.wrapping_add(1);
            let ip = IpAddr::V4(Ipv4Addr::new(10, 99, 0, s.next));
            s.attached.insert(pod.pod_id.clone(), ip);
            Ok(Attached {
                network: "fake".into(),
                ips: vec![ip],
                result: serde_json::json!({"ips": [{"address": format!("{ip}/24")}]}),
            })
        })
    }

    fn detach<'a>(&'a self, pod: &'a NetAttach) -> BoxFuture<'a, Result<(), NetError>> {
        Box::pin(async move {
            self.state().attached.remove(&pod.pod_id);
            Ok(())
        })
    }

    fn gc<'a>(&'a self, live: &'a [String]) -> BoxFuture<'a, Result<(), NetError>> {
        Box::pin(async move {
            let mut s = self.state();
            s.gc_calls.push(live.to_vec());
            let keep: BTreeSet<&String> = live.iter().collect();
            s.attached.retain(|k, _| keep.contains(k));
            Ok(())
        })
    }
}

/// Fake cgroups: a set of paths.
#[derive(Debug, Default)]
pub struct FakeCgroups {
    paths: Mutex<BTreeSet<String>>,
}

impl FakeCgroups {
    pub fn paths(&self) -> Vec<String> {
        self.paths
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }
}

impl Cgroups for FakeCgroups {
    fn add_process(&self, _path: &str, _pid: i32) -> Result<(), CgroupError> {
        Ok(())
    }

    fn create(&self, path: &str) -> Result<(), CgroupError> {
        self.paths
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(path.to_string());
        Ok(())
    }

    fn remove(&self, path: &str) -> Result<(), CgroupError> {
        self.paths
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(path);
        Ok(())
    }
}

/// Fake image source: every image name resolves to a one-layer image under `layer`.
#[derive(Debug, Default)]
pub struct FakeImages {
    pub layer: std::path::PathBuf,
    missing: Mutex<BTreeSet<String>>,
}

impl FakeImages {
    pub fn new(layer: std::path::PathBuf) -> Self {
        Self {
            layer,
            missing: Mutex::default(),
        }
    }

    /// Makes `image` unknown.
    pub fn remove(&self, image: &str) {
        self.missing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(image.to_string());
    }
}

impl crate::containers::ImageSource for FakeImages {
    fn resolve(&self, image: &str) -> Result<Option<crate::ResolvedImage>, String> {
        if self
            .missing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(image)
        {
            return Ok(None);
        }
        Ok(Some(crate::ResolvedImage {
            id: format!("sha256:{:0>64}", image.len()),
            image_ref: format!("{image}@sha256:{:0>64}", image.len()),
            layers: vec![self.layer.clone()],
            config: oci::spec::ImageConfig {
                cmd: vec!["sh".into()],
                ..Default::default()
            },
            stop_signal: None,
        }))
    }
}
