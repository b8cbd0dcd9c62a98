//! `runtime.v1.RuntimeService`: runtime identity, readiness and node-level runtime config.
//! Sandbox and container RPCs answer `Unimplemented` (generated default stubs) until their
//! issues land.

use std::sync::{Arc, RwLock};

use cri_api::runtime::v1::runtime_service_server::RuntimeService;
use cri_api::runtime::v1::{
    CgroupDriver, ContainerStatsRequest, ContainerStatsResponse, ContainerStatusRequest,
    ContainerStatusResponse, CreateContainerRequest, CreateContainerResponse, ExecSyncRequest,
    ExecSyncResponse, LinuxRuntimeConfiguration, ListContainerStatsRequest,
    ListContainerStatsResponse, ListContainersRequest, ListContainersResponse,
    ListPodSandboxRequest, ListPodSandboxResponse, ListPodSandboxStatsRequest,
    ListPodSandboxStatsResponse, PodSandboxStatsRequest, PodSandboxStatsResponse,
    PodSandboxStatusRequest, PodSandboxStatusResponse, RemoveContainerRequest,
    RemoveContainerResponse, RemovePodSandboxRequest, RemovePodSandboxResponse,
    ReopenContainerLogRequest, ReopenContainerLogResponse, RunPodSandboxRequest,
    RunPodSandboxResponse, RuntimeCondition, RuntimeConfigRequest, RuntimeConfigResponse,
    RuntimeFeatures, RuntimeHandler, RuntimeHandlerFeatures, RuntimeStatus, StartContainerRequest,
    StartContainerResponse, StatusRequest, StatusResponse, StopContainerRequest,
    StopContainerResponse, StopPodSandboxRequest, StopPodSandboxResponse,
    UpdateContainerResourcesRequest, UpdateContainerResourcesResponse, UpdateRuntimeConfigRequest,
    UpdateRuntimeConfigResponse, VersionRequest, VersionResponse,
};
use tonic::{Request, Response, Status};

use crate::{container, sandbox, validate};

/// The CRI API version sluice serves.
pub const RUNTIME_API_VERSION: &str = "v1";
/// The kubelet-facing "version" field of `VersionResponse`; every CRI runtime reports 0.1.0.
pub const KUBELET_API_VERSION: &str = "0.1.0";

/// `RuntimeReady` / `NetworkReady`: the condition types the kubelet looks for.
pub const RUNTIME_READY: &str = "RuntimeReady";
pub const NETWORK_READY: &str = "NetworkReady";
/// Reason the kubelet and operators see while pod networking is not usable.
pub const NETWORK_PLUGIN_NOT_READY: &str = "NetworkPluginNotReady";

/// Static facts about this daemon, given at construction.
#[derive(Debug, Clone)]
pub struct RuntimeInfo {
    /// `sluice`.
    pub name: String,
    /// The daemon's version (from Cargo).
    pub version: String,
    /// The effective configuration as JSON, returned by verbose `Status` under `config`.
    pub config_json: String,
}

/// Network readiness as the `NetworkReady` condition reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkReadiness {
    pub ready: bool,
    /// Machine-readable reason (CamelCase) when not ready, e.g. `NetworkPluginNotReady`.
    pub reason: String,
    /// Human-readable explanation.
    pub message: String,
}

/// Where `Status` learns whether pod networking is ready; the CNI manager implements it
/// (asynchronously: CNI 1.1.0 networks answer through a STATUS plugin call).
#[tonic::async_trait]
pub trait NetworkStatus: Send + Sync + 'static {
    async fn readiness(&self) -> NetworkReadiness;
}

/// No network manager is wired in: pod networking is honestly not ready.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoNetwork;

#[tonic::async_trait]
impl NetworkStatus for NoNetwork {
    async fn readiness(&self) -> NetworkReadiness {
        NetworkReadiness {
            ready: false,
            reason: NETWORK_PLUGIN_NOT_READY.to_string(),
            message: "no CNI network manager is configured in this sluice".to_string(),
        }
    }
}

/// The CRI runtime service.
#[derive(Clone)]
pub struct RuntimeSvc {
    info: Arc<RuntimeInfo>,
    network: Arc<dyn NetworkStatus>,
    pods: Arc<pods::PodManager>,
    /// Pod CIDRs the kubelet pushed with `UpdateRuntimeConfig` (informational: CNI IPAM config
    /// decides pod addresses; sluice reports them in verbose `Status`).
    pod_cidrs: Arc<RwLock<Vec<String>>>,
    /// The streaming server for Exec, Attach and PortForward; without one those RPCs answer
    /// `Unavailable`.
    streams: Option<Arc<streaming::StreamServer>>,
}

impl std::fmt::Debug for RuntimeSvc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeSvc")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl RuntimeSvc {
    pub fn new(
        info: RuntimeInfo,
        network: Arc<dyn NetworkStatus>,
        pods: Arc<pods::PodManager>,
    ) -> Self {
        Self {
            info: Arc::new(info),
            network,
            pods,
            pod_cidrs: Arc::default(),
            streams: None,
        }
    }

    /// Serves Exec, Attach and PortForward through `streams`.
    #[must_use]
    pub fn with_streaming(mut self, streams: Arc<streaming::StreamServer>) -> Self {
        self.streams = Some(streams);
        self
    }

    fn streams(&self) -> Result<&streaming::StreamServer, Status> {
        self.streams
            .as_deref()
            .ok_or_else(|| Status::unavailable("this sluice runs without a streaming server"))
    }

    fn pod_cidrs(&self) -> Vec<String> {
        // A poisoned lock only means a writer panicked mid-assignment of a Vec; the value is
        // still a whole Vec, so keep serving it.
        match self.pod_cidrs.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

#[tonic::async_trait]
impl RuntimeService for RuntimeSvc {
    #[tracing::instrument(skip_all)]
    async fn version(
        &self,
        _request: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(VersionResponse {
            version: KUBELET_API_VERSION.to_string(),
            runtime_name: self.info.name.clone(),
            runtime_version: self.info.version.clone(),
            runtime_api_version: RUNTIME_API_VERSION.to_string(),
        }))
    }

    #[tracing::instrument(skip_all, fields(verbose = request.get_ref().verbose))]
    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let net = self.network.readiness().await;
        let conditions = vec![
            RuntimeCondition {
                r#type: RUNTIME_READY.to_string(),
                status: true,
                reason: String::new(),
                message: String::new(),
            },
            RuntimeCondition {
                r#type: NETWORK_READY.to_string(),
                status: net.ready,
                reason: net.reason,
                message: net.message,
            },
        ];
        let mut info = std::collections::HashMap::new();
        if request.get_ref().verbose {
            info.insert("config".to_string(), self.info.config_json.clone());
            let cidrs = serde_json::to_string(&self.pod_cidrs())
                .map_err(|e| Status::internal(format!("encoding pod CIDRs: {e}")))?;
            info.insert("podCIDRs".to_string(), cidrs);
        }
        Ok(Response::new(StatusResponse {
            status: Some(RuntimeStatus { conditions }),
            info,
            // The default handler (""), with the features sluice does not offer yet said so.
            runtime_handlers: vec![RuntimeHandler {
                name: String::new(),
                features: Some(RuntimeHandlerFeatures {
                    recursive_read_only_mounts: false,
                    user_namespaces: false,
                }),
            }],
            features: Some(RuntimeFeatures {
                supplemental_groups_policy: false,
                user_namespaces_host_network: false,
            }),
        }))
    }

    #[tracing::instrument(skip_all, fields(
        name = request.get_ref().config.as_ref().and_then(|c| c.metadata.as_ref()).map(|m| m.name.as_str()).unwrap_or_default(),
        namespace = request.get_ref().config.as_ref().and_then(|c| c.metadata.as_ref()).map(|m| m.namespace.as_str()).unwrap_or_default(),
    ))]
    async fn run_pod_sandbox(
        &self,
        request: Request<RunPodSandboxRequest>,
    ) -> Result<Response<RunPodSandboxResponse>, Status> {
        let config = sandbox::sandbox_config(request.into_inner())?;
        let pod = self.pods.run(config).await.map_err(sandbox::fail)?;
        Ok(Response::new(RunPodSandboxResponse {
            pod_sandbox_id: pod.id,
        }))
    }

    #[tracing::instrument(skip_all, fields(pod_id = %request.get_ref().pod_sandbox_id))]
    async fn stop_pod_sandbox(
        &self,
        request: Request<StopPodSandboxRequest>,
    ) -> Result<Response<StopPodSandboxResponse>, Status> {
        let id = sandbox::sandbox_id(&request.get_ref().pod_sandbox_id)?;
        self.pods.stop(id).await.map_err(sandbox::fail)?;
        Ok(Response::new(StopPodSandboxResponse {}))
    }

    #[tracing::instrument(skip_all, fields(pod_id = %request.get_ref().pod_sandbox_id))]
    async fn remove_pod_sandbox(
        &self,
        request: Request<RemovePodSandboxRequest>,
    ) -> Result<Response<RemovePodSandboxResponse>, Status> {
        let id = sandbox::sandbox_id(&request.get_ref().pod_sandbox_id)?;
        self.pods.remove(id).await.map_err(sandbox::fail)?;
        Ok(Response::new(RemovePodSandboxResponse {}))
    }

    #[tracing::instrument(skip_all, fields(pod_id = %request.get_ref().pod_sandbox_id))]
    async fn pod_sandbox_status(
        &self,
        request: Request<PodSandboxStatusRequest>,
    ) -> Result<Response<PodSandboxStatusResponse>, Status> {
        let req = request.get_ref();
        let id = sandbox::sandbox_id(&req.pod_sandbox_id)?;
        let pod = self.pods.status(id).map_err(sandbox::fail)?;
        let info = if req.verbose {
            sandbox::verbose_info(&pod)?
        } else {
            Default::default()
        };
        Ok(Response::new(PodSandboxStatusResponse {
            status: Some(sandbox::sandbox_status(&pod)),
            info,
            containers_statuses: Vec::new(),
            timestamp: now_nanos(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_pod_sandbox(
        &self,
        request: Request<ListPodSandboxRequest>,
    ) -> Result<Response<ListPodSandboxResponse>, Status> {
        let filter = sandbox::filter(request.into_inner().filter)?;
        let items = self
            .pods
            .list(&filter)
            .iter()
            .map(sandbox::sandbox_item)
            .collect();
        Ok(Response::new(ListPodSandboxResponse { items }))
    }

    #[tracing::instrument(skip_all, fields(
        pod_id = %request.get_ref().pod_sandbox_id,
        name = request.get_ref().config.as_ref().and_then(|c| c.metadata.as_ref()).map(|m| m.name.as_str()).unwrap_or_default(),
    ))]
    async fn create_container(
        &self,
        request: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        let (pod_id, config) = container::container_config(request.into_inner())?;
        let rec = self
            .pods
            .create_container(&pod_id, config)
            .await
            .map_err(container::fail)?;
        Ok(Response::new(CreateContainerResponse {
            container_id: rec.id,
        }))
    }

    #[tracing::instrument(skip_all, fields(container_id = %request.get_ref().container_id))]
    async fn start_container(
        &self,
        request: Request<StartContainerRequest>,
    ) -> Result<Response<StartContainerResponse>, Status> {
        let id = container::container_id(&request.get_ref().container_id)?;
        self.pods
            .start_container(id)
            .await
            .map_err(container::fail)?;
        Ok(Response::new(StartContainerResponse {}))
    }

    #[tracing::instrument(skip_all, fields(
        container_id = %request.get_ref().container_id,
        timeout = request.get_ref().timeout,
    ))]
    async fn stop_container(
        &self,
        request: Request<StopContainerRequest>,
    ) -> Result<Response<StopContainerResponse>, Status> {
        let req = request.get_ref();
        let id = container::container_id(&req.container_id)?;
        let timeout = container::stop_timeout(req.timeout)?;
        self.pods
            .stop_container(id, timeout)
            .await
            .map_err(container::fail)?;
        Ok(Response::new(StopContainerResponse {}))
    }

    #[tracing::instrument(skip_all, fields(container_id = %request.get_ref().container_id))]
    async fn remove_container(
        &self,
        request: Request<RemoveContainerRequest>,
    ) -> Result<Response<RemoveContainerResponse>, Status> {
        let id = container::container_id(&request.get_ref().container_id)?;
        self.pods
            .remove_container(id)
            .await
            .map_err(container::fail)?;
        Ok(Response::new(RemoveContainerResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn list_containers(
        &self,
        request: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        let filter = container::filter(request.into_inner().filter)?;
        let containers = self
            .pods
            .list_containers(&filter)
            .await
            .iter()
            .map(container::container_item)
            .collect();
        Ok(Response::new(ListContainersResponse { containers }))
    }

    #[tracing::instrument(skip_all, fields(container_id = %request.get_ref().container_id))]
    async fn container_status(
        &self,
        request: Request<ContainerStatusRequest>,
    ) -> Result<Response<ContainerStatusResponse>, Status> {
        let req = request.get_ref();
        let id = container::container_id(&req.container_id)?;
        let rec = self
            .pods
            .container_status(id)
            .await
            .map_err(container::fail)?;
        Ok(Response::new(container::status_response(
            &rec,
            req.verbose,
        )?))
    }

    #[tracing::instrument(skip_all, fields(container_id = %request.get_ref().container_id))]
    async fn update_container_resources(
        &self,
        request: Request<UpdateContainerResourcesRequest>,
    ) -> Result<Response<UpdateContainerResourcesResponse>, Status> {
        let req = request.get_ref();
        let resources = container::update_resources(req)?;
        self.pods
            .update_container_resources(&req.container_id, resources)
            .await
            .map_err(container::fail)?;
        Ok(Response::new(UpdateContainerResourcesResponse {}))
    }

    #[tracing::instrument(skip_all, fields(container_id = %request.get_ref().container_id))]
    async fn reopen_container_log(
        &self,
        request: Request<ReopenContainerLogRequest>,
    ) -> Result<Response<ReopenContainerLogResponse>, Status> {
        let id = container::container_id(&request.get_ref().container_id)?;
        self.pods
            .reopen_container_log(id)
            .await
            .map_err(container::fail)?;
        Ok(Response::new(ReopenContainerLogResponse {}))
    }

    #[tracing::instrument(skip_all, fields(
        container_id = %request.get_ref().container_id,
        timeout = request.get_ref().timeout,
    ))]
    async fn exec_sync(
        &self,
        request: Request<ExecSyncRequest>,
    ) -> Result<Response<ExecSyncResponse>, Status> {
        let (id, cmd, timeout) = container::exec_request(request.into_inner())?;
        let result = self
            .pods
            .exec_sync(&id, cmd.clone(), timeout)
            .await
            .map_err(container::fail)?;
        Ok(Response::new(container::exec_response(
            result, &cmd, timeout,
        )?))
    }

    #[tracing::instrument(skip_all, fields(container_id = %request.get_ref().container_id))]
    async fn exec(
        &self,
        request: Request<cri_api::runtime::v1::ExecRequest>,
    ) -> Result<Response<cri_api::runtime::v1::ExecResponse>, Status> {
        let resp = crate::stream::exec(self.streams()?, &self.pods, request.into_inner()).await?;
        Ok(Response::new(resp))
    }

    #[tracing::instrument(skip_all, fields(container_id = %request.get_ref().container_id))]
    async fn attach(
        &self,
        request: Request<cri_api::runtime::v1::AttachRequest>,
    ) -> Result<Response<cri_api::runtime::v1::AttachResponse>, Status> {
        let resp = crate::stream::attach(self.streams()?, &self.pods, request.into_inner()).await?;
        Ok(Response::new(resp))
    }

    #[tracing::instrument(skip_all, fields(pod_sandbox_id = %request.get_ref().pod_sandbox_id))]
    async fn port_forward(
        &self,
        request: Request<cri_api::runtime::v1::PortForwardRequest>,
    ) -> Result<Response<cri_api::runtime::v1::PortForwardResponse>, Status> {
        let resp = crate::stream::port_forward(self.streams()?, &self.pods, request.into_inner())?;
        Ok(Response::new(resp))
    }

    #[tracing::instrument(skip_all, fields(container_id = %request.get_ref().container_id))]
    async fn container_stats(
        &self,
        request: Request<ContainerStatsRequest>,
    ) -> Result<Response<ContainerStatsResponse>, Status> {
        let id = container::container_id(&request.get_ref().container_id)?;
        let stats = self
            .pods
            .container_stats(id)
            .await
            .map_err(container::fail)?;
        Ok(Response::new(ContainerStatsResponse {
            stats: Some(container::container_stats(&stats)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_container_stats(
        &self,
        request: Request<ListContainerStatsRequest>,
    ) -> Result<Response<ListContainerStatsResponse>, Status> {
        let filter = container::stats_filter(request.into_inner().filter);
        let stats = self
            .pods
            .list_container_stats(&filter)
            .await
            .iter()
            .map(container::container_stats)
            .collect();
        Ok(Response::new(ListContainerStatsResponse { stats }))
    }

    #[tracing::instrument(skip_all, fields(pod_id = %request.get_ref().pod_sandbox_id))]
    async fn pod_sandbox_stats(
        &self,
        request: Request<PodSandboxStatsRequest>,
    ) -> Result<Response<PodSandboxStatsResponse>, Status> {
        let id = sandbox::sandbox_id(&request.get_ref().pod_sandbox_id)?;
        let stats = self.pods.pod_stats(id).await.map_err(container::fail)?;
        // Attributes come from the pod record; a pod removed in between still gets its numbers.
        let pod = self.pods.status(&stats.pod_id).ok();
        Ok(Response::new(PodSandboxStatsResponse {
            stats: Some(container::pod_sandbox_stats(&stats, pod.as_ref())),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_pod_sandbox_stats(
        &self,
        request: Request<ListPodSandboxStatsRequest>,
    ) -> Result<Response<ListPodSandboxStatsResponse>, Status> {
        let filter = container::pod_stats_filter(request.into_inner().filter);
        let stats = self.pods.list_pod_stats(&filter).await;
        let pods = self.pods.list(&filter);
        Ok(Response::new(ListPodSandboxStatsResponse {
            stats: container::pod_sandbox_stats_list(&stats, &pods),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn runtime_config(
        &self,
        _request: Request<RuntimeConfigRequest>,
    ) -> Result<Response<RuntimeConfigResponse>, Status> {
        // sluice manages cgroups directly on cgroupfs (no systemd on its target nodes); the
        // kubelet must be configured with cgroupDriver: cgroupfs to match.
        Ok(Response::new(RuntimeConfigResponse {
            linux: Some(LinuxRuntimeConfiguration {
                cgroup_driver: CgroupDriver::Cgroupfs as i32,
            }),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn update_runtime_config(
        &self,
        request: Request<UpdateRuntimeConfigRequest>,
    ) -> Result<Response<UpdateRuntimeConfigResponse>, Status> {
        let cidr = request
            .get_ref()
            .runtime_config
            .as_ref()
            .and_then(|c| c.network_config.as_ref())
            .map(|n| n.pod_cidr.as_str())
            .unwrap_or_default();
        let cidrs = validate::pod_cidrs("runtime_config.network_config.pod_cidr", cidr)?;
        tracing::info!(pod_cidrs = ?cidrs, "kubelet updated the pod CIDR");
        match self.pod_cidrs.write() {
            Ok(mut g) => *g = cidrs,
            Err(p) => *p.into_inner() = cidrs,
        }
        Ok(Response::new(UpdateRuntimeConfigResponse {}))
    }
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cri_api::runtime::v1::{NetworkConfig, RuntimeConfig};

    fn svc() -> (RuntimeSvc, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let pods = pods::PodManager::new(
            pods::PodsConfig::new(&dir.path().join("root"), &dir.path().join("run")),
            pods::Deps {
                namespaces: Arc::new(nsmgr::fake::FakeNamespaceManager::new()),
                network: Arc::new(pods::fake::FakeNetworking::default()),
                hostports: Arc::new(hostport::fake::FakeHostPortManager::default()),
                cgroups: Arc::new(pods::fake::FakeCgroups::default()),
                namespace_alive: |_| true,
                metrics: pods::PodMetrics::default(),
                runtime: std::sync::Arc::new(oci::fake::FakeRuntime::new()),
                images: std::sync::Arc::new(pods::fake::FakeImages::default()),
                host: std::sync::Arc::new(
                    oci::spec::Host::detect(oci::spec::Host::default_capability_names())
                        .expect("host"),
                ),
                hierarchies: std::sync::Arc::new(
                    oci::stats::Hierarchies::discover().expect("cgroups"),
                ),
            },
        )
        .expect("pod manager");
        let svc = RuntimeSvc::new(
            RuntimeInfo {
                name: "sluice".into(),
                version: "9.9.9".into(),
                config_json: "{\"x\":1}".into(),
            },
            Arc::new(NoNetwork),
            Arc::new(pods),
        );
        (svc, dir)
    }

    #[tokio::test]
    async fn pod_cidr_is_recorded_and_reported_in_verbose_status() {
        let (s, _dir) = svc();
        let req = UpdateRuntimeConfigRequest {
            runtime_config: Some(RuntimeConfig {
                network_config: Some(NetworkConfig {
                    pod_cidr: "10.244.3.0/24".into(),
                }),
            }),
        };
        s.update_runtime_config(Request::new(req))
            .await
            .expect("accepted");
        let st = s
            .status(Request::new(StatusRequest { verbose: true }))
            .await
            .expect("status")
            .into_inner();
        assert_eq!(
            st.info.get("podCIDRs").map(String::as_str),
            Some("[\"10.244.3.0/24\"]")
        );
        assert_eq!(st.info.get("config").map(String::as_str), Some("{\"x\":1}"));
    }

    #[tokio::test]
    async fn bad_pod_cidr_is_invalid_argument_and_keeps_the_old_value() {
        let (s, _dir) = svc();
        let set = |c: &str| UpdateRuntimeConfigRequest {
            runtime_config: Some(RuntimeConfig {
                network_config: Some(NetworkConfig { pod_cidr: c.into() }),
            }),
        };
        s.update_runtime_config(Request::new(set("10.1.0.0/16")))
            .await
            .expect("ok");
        let err = s
            .update_runtime_config(Request::new(set("10.1.0.0/99")))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert_eq!(s.pod_cidrs(), vec!["10.1.0.0/16".to_string()]);
    }

    #[tokio::test]
    async fn status_is_not_verbose_unless_asked() {
        let (s, _dir) = svc();
        let st = s
            .status(Request::new(StatusRequest { verbose: false }))
            .await
            .expect("status")
            .into_inner();
        assert!(st.info.is_empty());
        let conds = st.status.expect("status").conditions;
        let net = conds
            .iter()
            .find(|c| c.r#type == NETWORK_READY)
            .expect("NetworkReady");
        assert!(!net.status);
        assert_eq!(net.reason, NETWORK_PLUGIN_NOT_READY);
    }
}
