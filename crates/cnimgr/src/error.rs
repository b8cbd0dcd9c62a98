//! Error types. A plugin failure keeps all the evidence the CNI spec gives us: the structured
//! error (`code`, `msg`, `details`) the plugin printed on stdout, its stderr and its exit status.

use std::fmt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use crate::Command;

/// Result alias for this crate.
pub type Result<T, E = CniError> = std::result::Result<T, E>;

/// Everything that can go wrong while managing pod networks.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// No usable default network is loaded (see [`crate::CniManager::readiness`]).
    #[error("network not ready: {0}")]
    NotReady(String),

    /// A plugin named in the config is not in any of the plugin dirs.
    #[error("failed to find plugin {plugin:?} in path {dirs:?}")]
    PluginNotFound {
        /// The `type` of the plugin.
        plugin: String,
        /// The directories searched, in order.
        dirs: Vec<PathBuf>,
    },

    /// The caller passed a pod that cannot be expressed to a plugin.
    #[error("invalid pod network request: {0}")]
    InvalidRequest(String),

    /// A pod annotation that feeds a capability could not be parsed.
    #[error("invalid annotation {key}={value:?}: {reason}")]
    InvalidAnnotation {
        /// Annotation key.
        key: String,
        /// Annotation value as given.
        value: String,
        /// Why it was rejected.
        reason: String,
    },

    /// The plugin binary could not be started.
    #[error("failed to start plugin {plugin} ({path}) for {command}: {source}")]
    Spawn {
        /// Plugin type.
        plugin: String,
        /// Binary path.
        path: PathBuf,
        /// CNI command.
        command: Command,
        /// OS error.
        #[source]
        source: std::io::Error,
    },

    /// Reading from or writing to the plugin's pipes failed.
    #[error("i/o with plugin {plugin} during {command}: {source}")]
    PluginIo {
        /// Plugin type.
        plugin: String,
        /// CNI command.
        command: Command,
        /// OS error.
        #[source]
        source: std::io::Error,
    },

    /// The plugin ran longer than the configured timeout and was killed.
    #[error(
        "plugin {plugin} {command} timed out after {timeout:?} and was killed (stderr: {stderr:?})"
    )]
    Timeout {
        /// Plugin type.
        plugin: String,
        /// CNI command.
        command: Command,
        /// The timeout that was exceeded.
        timeout: Duration,
        /// Whatever the plugin wrote to stderr before it was killed.
        stderr: String,
    },

    /// The plugin exited non-zero.
    #[error(transparent)]
    Plugin(Box<PluginError>),

    /// The plugin succeeded but its output is not a result we understand.
    #[error("invalid result from plugin {plugin} {command}: {reason} (stdout: {stdout:?})")]
    InvalidResult {
        /// Plugin type.
        plugin: String,
        /// CNI command.
        command: Command,
        /// Parse error.
        reason: String,
        /// The raw stdout.
        stdout: String,
    },

    /// The on-disk result cache could not be read or written.
    #[error("cni result cache {path}: {source}")]
    Cache {
        /// File or directory involved.
        path: PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },

    /// A cache entry exists but cannot be decoded.
    #[error("corrupt cni result cache entry {path}: {source}")]
    CacheDecode {
        /// The file.
        path: PathBuf,
        /// Decode error.
        #[source]
        source: serde_json::Error,
    },

    /// CHECK needs the cached ADD result and there is none.
    #[error("no cached result for container {container_id} ifname {ifname}: cannot {command}")]
    NoCachedResult {
        /// Pod sandbox id.
        container_id: String,
        /// Interface name.
        ifname: String,
        /// The command that needed it.
        command: Command,
    },

    /// The config directory could not be watched.
    #[error("failed to watch cni config dir {dir}: {source}")]
    Watch {
        /// The directory.
        dir: PathBuf,
        /// notify's error.
        #[source]
        source: notify::Error,
    },

    /// The config directory could not be created.
    #[error("failed to create cni config dir {dir}: {source}")]
    ConfigDir {
        /// The directory.
        dir: PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },

    /// ADD failed; the attachment was torn down again (best effort).
    #[error("{source}{}", cleanup_suffix(.cleanup))]
    AddFailed {
        /// Why ADD failed.
        source: Box<CniError>,
        /// Errors from the DEL that undid the partial ADD (empty when cleanup was clean).
        cleanup: Vec<CniError>,
    },

    /// Several independent steps failed (teardown and GC keep going past errors).
    #[error("{}", join_errors(.0))]
    Multiple(Vec<CniError>),
}

impl CniError {
    /// The structured plugin error, if this is (or wraps) one.
    #[must_use]
    pub fn plugin_error(&self) -> Option<&PluginError> {
        match self {
            CniError::Plugin(p) => Some(p),
            CniError::AddFailed { source, .. } => source.plugin_error(),
            CniError::Multiple(errs) => errs.iter().find_map(CniError::plugin_error),
            _ => None,
        }
    }

    /// Collapse a list of errors: none, the one, or [`CniError::Multiple`].
    pub(crate) fn from_list(mut errs: Vec<CniError>) -> Result<()> {
        match errs.len() {
            0 => Ok(()),
            1 => Err(errs.remove(0)),
            _ => Err(CniError::Multiple(errs)),
        }
    }
}

fn cleanup_suffix(cleanup: &[CniError]) -> String {
    if cleanup.is_empty() {
        String::new()
    } else {
        format!(
            "; cleanup after failed add also failed: {}",
            join_errors(cleanup)
        )
    }
}

fn join_errors(errs: &[CniError]) -> String {
    errs.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A plugin that exited non-zero, with everything it told us.
#[derive(Debug, Clone)]
pub struct PluginError {
    /// Plugin type (e.g. `bridge`).
    pub plugin: String,
    /// The CNI command that failed.
    pub command: Command,
    /// Exit status of the plugin process.
    pub exit_status: ExitStatus,
    /// CNI error code (spec section "Error"), if stdout held an error object.
    pub code: Option<u32>,
    /// `msg` of the error object.
    pub msg: Option<String>,
    /// `details` of the error object.
    pub details: Option<String>,
    /// Raw stdout when it was not a CNI error object (kept as evidence).
    pub stdout: String,
    /// Everything the plugin wrote to stderr.
    pub stderr: String,
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "plugin {} {} failed ({})",
            self.plugin, self.command, self.exit_status
        )?;
        if let Some(code) = self.code {
            write!(f, ": code {code}")?;
            if let Some(name) = crate::exec::error_code_name(code) {
                write!(f, " ({name})")?;
            }
        }
        if let Some(msg) = &self.msg {
            write!(f, ": {msg}")?;
        }
        if let Some(details) = self.details.as_deref().filter(|d| !d.is_empty()) {
            write!(f, ": {details}")?;
        }
        if self.code.is_none() && !self.stdout.trim().is_empty() {
            write!(f, "; stdout: {:?}", self.stdout.trim())?;
        }
        if !self.stderr.trim().is_empty() {
            write!(f, "; stderr: {:?}", self.stderr.trim())?;
        }
        Ok(())
    }
}

impl std::error::Error for PluginError {}
