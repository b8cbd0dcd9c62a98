//! `sluice`: the Kubernetes CRI runtime daemon.
//!
//! `main` is explicit about order: parse flags → (subcommands `config`, `version` stop here) →
//! require root → load and validate config → tokio runtime → telemetry (logs, OTLP traces) →
//! privileged setup (directories, lock, socket) → metrics → pod recovery → serve → graceful
//! drain on SIGTERM/SIGINT → flush traces.
//!
//! Exit status: 0 after a clean shutdown, 64 (EX_USAGE) for a bad config or flag, 77
//! (EX_NOPERM) when not run as root, 1 for any other failure (e.g. another sluice holds the
//! socket).

#![forbid(unsafe_code)]

mod config;
mod daemon;
mod pause;
mod policy;
mod policy_cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit status for configuration and usage errors (sysexits.h EX_USAGE).
const EX_USAGE: u8 = 64;
/// Exit status when the daemon lacks the privileges it needs (sysexits.h EX_NOPERM).
const EX_NOPERM: u8 = 77;

#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "Kubernetes CRI container runtime with secure, observable pod networking",
    long_about = "Without a subcommand, runs the daemon serving the CRI v1 API on a unix socket."
)]
struct Cli {
    /// Main config file [default: /etc/sluice/sluice.toml; a missing default file means defaults].
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Drop-in directory of *.toml files merged in lexical order [default: sluice.d next to the config file].
    #[arg(long, value_name = "DIR")]
    config_dir: Option<PathBuf>,
    /// CRI socket path (overrides server.listen).
    #[arg(long, value_name = "PATH")]
    listen: Option<PathBuf>,
    /// Persistent state directory (overrides storage.root).
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Volatile state directory (overrides storage.runroot).
    #[arg(long, value_name = "DIR")]
    runroot: Option<PathBuf>,
    /// trace, debug, info, warn or error (overrides log.level).
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// text or json (overrides log.format).
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the complete default configuration, every key commented.
    Config,
    /// Print the version of sluice and of the CRI API it serves.
    Version,
    /// Network policy: explain a flow, list which policies select which pods.
    Policy {
        #[command(flatten)]
        args: policy_cli::PolicyArgs,
        #[command(subcommand)]
        command: policy_cli::PolicyCommand,
    },
    /// Hold a pod's shared PID namespace (started by the daemon, not by people).
    #[command(hide = true)]
    Pause {
        /// Run as PID 1 inside the namespace.
        #[arg(long)]
        init: bool,
    },
}

#[allow(clippy::print_stdout)]
fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Config) => {
            print!("{}", config::render_default());
            return ExitCode::SUCCESS;
        }
        Some(Command::Version) => {
            println!("sluice {}", env!("CARGO_PKG_VERSION"));
            println!("CRI API {}", server::RUNTIME_API_VERSION);
            return ExitCode::SUCCESS;
        }
        Some(Command::Pause { init }) => {
            return if init { pause::init() } else { pause::holder() };
        }
        Some(Command::Policy { .. }) => return policy(cli),
        None => {}
    }
    run(cli)
}

/// `sluice policy ...`: reads the config for the socket and the policy directory.
#[allow(clippy::print_stderr)]
fn policy(cli: Cli) -> ExitCode {
    let Some(Command::Policy { args, command }) = cli.command else {
        return ExitCode::FAILURE;
    };
    let sources = config::Sources::new(cli.config, cli.config_dir);
    let overrides = config::Overrides {
        listen: cli.listen,
        ..config::Overrides::default()
    };
    let loaded = match config::load(&sources, &overrides) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("sluice: invalid configuration: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let socket = args.socket.unwrap_or(loaded.config.server.listen.clone());
    let dir = args.dir.unwrap_or(loaded.config.policy.dir.clone());
    policy_cli::run(command, &socket, &dir)
}

/// The daemon. Errors before logging is set up go to stderr directly.
#[allow(clippy::print_stderr)]
fn run(cli: Cli) -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "sluice: the daemon must run as root (it creates namespaces, mounts and nftables rules); \
             effective uid is {}",
            nix::unistd::geteuid()
        );
        return ExitCode::from(EX_NOPERM);
    }

    let sources = config::Sources::new(cli.config, cli.config_dir);
    let overrides = config::Overrides {
        listen: cli.listen,
        root: cli.root,
        runroot: cli.runroot,
        log_level: cli.log_level,
        log_format: cli.log_format,
    };
    let loaded = match config::load(&sources, &overrides) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("sluice: invalid configuration: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };

    // The runtime comes before telemetry: the OTLP exporter's gRPC channel lives on it.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sluice-worker")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sluice: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let guard = {
        let _in_runtime = runtime.enter();
        let t = &loaded.config.tracing;
        let provider = if t.enable {
            let cfg = telemetry::trace::TracingConfig {
                endpoint: t.endpoint.clone(),
                sampling_rate_per_million: t.sampling_rate_per_million,
            };
            match telemetry::trace::provider(&cfg) {
                Ok(p) => Some(p),
                Err(e) => {
                    eprintln!("sluice: invalid configuration: `tracing.endpoint`: {e}");
                    return ExitCode::from(EX_USAGE);
                }
            }
        } else {
            None
        };
        match telemetry::init(loaded.config.log.level, loaded.config.log.format, provider) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("sluice: cannot set up logging: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        files = ?loaded.files,
        tracing = loaded.config.tracing.enable,
        metrics = loaded.config.metrics.enable,
        "sluice starting"
    );

    let result = daemon::run(loaded.config, &runtime);
    // Flush buffered spans while the runtime (and the exporter's channel) still runs.
    guard.shutdown();
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => {
            tracing::info!("sluice stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "sluice failed");
            ExitCode::FAILURE
        }
    }
}
