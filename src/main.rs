use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};
use vecodex_operator::controller::{self, Config};
use vecodex_operator::queue::QueueConfig;
use vecodex_operator::telemetry::{self, LogFormat};
use vecodex_operator::validate::Limits;

/// Kubernetes operator for Vecodex vector-search clusters.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator (in-cluster config, or KUBECONFIG / ~/.kube/config).
    Run(RunArgs),
    /// Print the VecodexSet CustomResourceDefinition as YAML.
    Crd,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "VECODEX_NAMESPACE")]
    namespace: Option<String>,
    /// Reconciles running at once.
    #[arg(long, default_value_t = 8, env = "VECODEX_CONCURRENCY")]
    concurrency: usize,
    /// Largest replicas a component may ask for; more is reported as InvalidSpec.
    #[arg(long, default_value_t = 100, env = "VECODEX_MAX_REPLICAS")]
    max_replicas: i32,
    /// First retry delay of a failing set, in milliseconds (doubles per failure).
    #[arg(long, default_value_t = 5, env = "VECODEX_RETRY_BASE_MS")]
    retry_base_ms: u64,
    /// Longest retry delay of a failing set, in seconds.
    #[arg(long, default_value_t = 1000, env = "VECODEX_RETRY_MAX_SECONDS")]
    retry_max_seconds: u64,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "VECODEX_LOG_FORMAT")]
    log_format: LogFormat,
    /// Log filter when RUST_LOG is not set (e.g. `info`, `vecodex_operator=debug`).
    #[arg(long, default_value = "info", env = "VECODEX_LOG_LEVEL")]
    log_level: String,
    /// Name reported on Events; the pod name in a cluster.
    #[arg(long, env = "POD_NAME")]
    instance: Option<String>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", vecodex_operator::crd::crd_yaml());
            std::process::ExitCode::SUCCESS
        }
        Command::Run(args) => {
            telemetry::init(args.log_format, &args.log_level);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    error!(error = %e, "cannot start the async runtime");
                    return std::process::ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run(args)) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    error!(error = format!("{e:#}"), "operator failed");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_handler(shutdown.clone()));
    let config = Config {
        namespace: args.namespace,
        concurrency: args.concurrency,
        limits: Limits {
            max_replicas: args.max_replicas,
        },
        queue: QueueConfig {
            base_delay: Duration::from_millis(args.retry_base_ms),
            max_delay: Duration::from_secs(args.retry_max_seconds),
        },
        instance: args.instance,
        ..Config::default()
    };
    info!(version = env!("CARGO_PKG_VERSION"), namespace = ?config.namespace, "starting vecodex-operator");
    controller::run(client, config, shutdown).await
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
async fn signal_handler(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
    shutdown.cancel();
}
