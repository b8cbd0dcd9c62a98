//! An in-memory [`NamespaceManager`] for the tests of crates that use nsmgr.
//!
//! It validates requests exactly like [`crate::PinnedNamespaces`], reports
//! the same pin paths, and remembers which pods are "pinned", but touches no
//! kernel state. Failures can be injected per call.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::NamespaceManager;
use crate::error::{CreateError, GcError, ListError, ReleaseError};
use crate::types::{NamespaceKind, NamespaceRequest, PinDirs, PodId, PodNamespaces};
use crate::validate::validate_request;

/// Fake namespace manager; see the module docs.
#[derive(Debug, Default)]
pub struct FakeNamespaceManager {
    dirs: PinDirs,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    pods: BTreeMap<PodId, (PodNamespaces, NamespaceRequest)>,
    create_failures: VecDeque<CreateError>,
    release_failures: VecDeque<ReleaseError>,
    creates: usize,
    releases: usize,
}

impl FakeNamespaceManager {
    /// A fake reporting pin paths under the default [`PinDirs`].
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A fake reporting pin paths under `dirs`.
    #[must_use]
    pub fn with_dirs(dirs: PinDirs) -> Self {
        Self {
            dirs,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes the next `create` that passes validation fail with `error`
    /// (queued: one per call).
    pub fn fail_next_create(&self, error: CreateError) {
        self.state().create_failures.push_back(error);
    }

    /// Makes the next `release` fail with `error` (the pod stays pinned).
    pub fn fail_next_release(&self, error: ReleaseError) {
        self.state().release_failures.push_back(error);
    }

    /// Marks `pod_id` as pinned without a `create` call, as if left over
    /// from an earlier run (for recovery and `gc` tests).
    pub fn insert_orphan(&self, pod_id: &PodId) {
        let request = NamespaceRequest::default();
        let namespaces = self.dirs.locations(pod_id, &request);
        self.state()
            .pods
            .insert(pod_id.clone(), (namespaces, request));
    }

    /// True while `pod_id` has pins.
    #[must_use]
    pub fn is_pinned(&self, pod_id: &PodId) -> bool {
        self.state().pods.contains_key(pod_id)
    }

    /// The request `pod_id` was created with, if it is pinned.
    #[must_use]
    pub fn request_of(&self, pod_id: &PodId) -> Option<NamespaceRequest> {
        self.state()
            .pods
            .get(pod_id)
            .map(|(_, request)| request.clone())
    }

    /// Number of `create` calls, successful or not.
    #[must_use]
    pub fn create_calls(&self) -> usize {
        self.state().creates
    }

    /// Number of `release` calls, successful or not.
    #[must_use]
    pub fn release_calls(&self) -> usize {
        self.state().releases
    }
}

impl NamespaceManager for FakeNamespaceManager {
    fn create(
        &self,
        pod_id: &PodId,
        request: &NamespaceRequest,
    ) -> Result<PodNamespaces, CreateError> {
        let mut state = self.state();
        state.creates += 1;
        validate_request(request).map_err(|source| CreateError::InvalidRequest {
            pod_id: pod_id.clone(),
            source,
        })?;
        let namespaces = self.dirs.locations(pod_id, request);
        if let Some((existing, _)) = state.pods.get(pod_id) {
            // Like the real manager: the first pin that already exists.
            if let Some((namespace, path)) = NamespaceKind::ALL
                .into_iter()
                .find_map(|kind| Some((kind, existing.get(kind).pin_path()?.to_path_buf())))
            {
                return Err(CreateError::AlreadyExists {
                    pod_id: pod_id.clone(),
                    namespace,
                    path,
                });
            }
        }
        if let Some(error) = state.create_failures.pop_front() {
            return Err(error);
        }
        let pins_anything = NamespaceKind::ALL
            .into_iter()
            .any(|kind| namespaces.get(kind).pin_path().is_some());
        if pins_anything {
            state
                .pods
                .insert(pod_id.clone(), (namespaces.clone(), request.clone()));
        }
        Ok(namespaces)
    }

    fn release(&self, pod_id: &PodId) -> Result<(), ReleaseError> {
        let mut state = self.state();
        state.releases += 1;
        if let Some(error) = state.release_failures.pop_front() {
            return Err(error);
        }
        state.pods.remove(pod_id);
        Ok(())
    }

    fn list_pinned(&self) -> Result<Vec<PodId>, ListError> {
        Ok(self.state().pods.keys().cloned().collect())
    }

    fn gc(&self, keep: &[PodId]) -> Result<Vec<PodId>, GcError> {
        let mut removed = Vec::new();
        let mut errors = Vec::new();
        for pod_id in self.list_pinned()? {
            if keep.contains(&pod_id) {
                continue;
            }
            match self.release(&pod_id) {
                Ok(()) => removed.push(pod_id),
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(removed)
        } else {
            Err(GcError::Release { removed, errors })
        }
    }
}

#[cfg(test)]
mod tests {
    use nix::errno::Errno;

    use super::*;
    use crate::types::NamespaceMode;

    fn id(s: &str) -> PodId {
        PodId::new(s).expect("valid pod id")
    }

    #[test]
    fn fake_tracks_pods_and_rejects_what_the_real_one_rejects() {
        let fake = FakeNamespaceManager::new();
        let ns = fake
            .create(&id("a"), &NamespaceRequest::default())
            .expect("create");
        assert!(ns.net.pin_path().is_some());
        assert!(fake.is_pinned(&id("a")));
        assert!(matches!(
            fake.create(&id("a"), &NamespaceRequest::default()),
            Err(CreateError::AlreadyExists { .. })
        ));
        let bad = NamespaceRequest {
            sysctls: [("kernel.panic".to_owned(), "1".to_owned())].into(),
            ..NamespaceRequest::default()
        };
        assert!(
            fake.create(&id("b"), &bad)
                .is_err_and(|e| e.is_invalid_request())
        );
        fake.release(&id("a")).expect("release");
        fake.release(&id("a")).expect("release twice");
        assert!(!fake.is_pinned(&id("a")));
        assert_eq!(fake.create_calls(), 3);
        assert_eq!(fake.release_calls(), 2);
    }

    #[test]
    fn host_only_pods_are_not_pinned() {
        let fake = FakeNamespaceManager::new();
        let host = NamespaceRequest {
            network: NamespaceMode::Node,
            ipc: NamespaceMode::Node,
            uts: NamespaceMode::Node,
            ..NamespaceRequest::default()
        };
        fake.create(&id("h"), &host).expect("create");
        assert!(fake.list_pinned().expect("list").is_empty());
    }

    #[test]
    fn injected_failures_and_gc() {
        let fake = FakeNamespaceManager::new();
        fake.fail_next_create(CreateError::Unshare {
            pod_id: id("x"),
            namespaces: "net".to_owned(),
            source: Errno::EPERM,
        });
        assert!(matches!(
            fake.create(&id("x"), &NamespaceRequest::default()),
            Err(CreateError::Unshare { .. })
        ));
        assert!(!fake.is_pinned(&id("x")));
        fake.insert_orphan(&id("old"));
        fake.create(&id("live"), &NamespaceRequest::default())
            .expect("create");
        assert_eq!(fake.gc(&[id("live")]).expect("gc"), vec![id("old")]);
        assert_eq!(fake.list_pinned().expect("list"), vec![id("live")]);
    }
}
