use std::time::Duration;

use clap::{Parser, Subcommand};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use vecodex_operator::controller::{self, Config};
use vecodex_operator::http::{self, Health};
use vecodex_operator::kube_metrics::RequestMetricsLayer;
use vecodex_operator::metrics::Metrics;
use vecodex_operator::policy::Policy;
use vecodex_operator::queue::QueueConfig;
use vecodex_operator::shard::{Scheme, ShardConfig, ShardHash, default_identity};
use vecodex_operator::telemetry::{self, LogFormat, TraceConfig};
use vecodex_operator::validate::Limits;

/// jemalloc instead of glibc's malloc: under churn glibc's allocator took over a third of
/// the operator's CPU (loadtest/README.md, "What limits churn").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    Run(Box<RunArgs>),
    /// Print the VecodexSet CustomResourceDefinition as YAML.
    Crd,
    /// Print each shard's holder (from its Lease) and how many namespaces and sets it covers.
    Shards(ShardArgs),
    /// Print the shard of a namespace.
    ShardOf {
        namespace: String,
        #[command(flatten)]
        scheme: SchemeArgs,
    },
}

/// How namespaces map to shards; every replica of a group must use the same.
#[derive(clap::Args, Clone)]
struct SchemeArgs {
    /// Namespaces are hashed into this many shards, one Lease each (1 = single leader).
    #[arg(long, default_value_t = Scheme::default().shards, value_parser = clap::value_parser!(u32).range(1..=4096), env = "VECODEX_SHARDS")]
    shards: u32,
    /// The namespace hash: `mixed` (similar names spread like random ones) or `fnv1a`
    /// (the upstream sharded-watch hash; names differing only at the end cluster).
    #[arg(long, value_enum, default_value_t = Scheme::default().hash, env = "VECODEX_SHARD_HASH")]
    shard_hash: ShardHash,
}

impl SchemeArgs {
    fn scheme(&self) -> Scheme {
        Scheme::new(self.shard_hash, self.shards)
    }
}

#[derive(clap::Args, Clone)]
struct ShardArgs {
    #[command(flatten)]
    scheme: SchemeArgs,
    /// Namespace of the Leases (default: POD_NAMESPACE, else `default`).
    #[arg(long, env = "POD_NAMESPACE", default_value_t = ShardConfig::default().namespace)]
    lease_namespace: String,
    /// Lease name prefix; replicas with the same group share the shards.
    #[arg(long, default_value_t = ShardConfig::default().group, env = "VECODEX_LEASE_GROUP")]
    lease_group: String,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Watch only these namespaces, comma-separated (default: all namespaces).
    #[arg(long, env = "VECODEX_NAMESPACE", value_delimiter = ',')]
    namespace: Vec<String>,
    /// Reconciles running at once.
    #[arg(long, default_value_t = Config::default().concurrency, env = "VECODEX_CONCURRENCY")]
    concurrency: usize,
    /// Largest replicas a component may ask for; more is reported as InvalidSpec.
    #[arg(long, default_value_t = Limits::default().max_replicas, env = "VECODEX_MAX_REPLICAS")]
    max_replicas: i32,
    /// First retry delay of a failing set, in milliseconds (doubles per failure).
    #[arg(long, default_value_t = QueueConfig::default().base_delay.as_millis() as u64, env = "VECODEX_RETRY_BASE_MS")]
    retry_base_ms: u64,
    /// Longest retry delay of a failing set, in seconds.
    #[arg(long, default_value_t = QueueConfig::default().max_delay.as_secs(), env = "VECODEX_RETRY_MAX_SECONDS")]
    retry_max_seconds: u64,
    /// Retries per second over all sets (token bucket; 0 = unlimited).
    #[arg(long, default_value_t = QueueConfig::default().retry_rate, env = "VECODEX_RETRY_RATE")]
    retry_rate: f64,
    /// Retries allowed at once before the rate applies.
    #[arg(long, default_value_t = QueueConfig::default().retry_burst, env = "VECODEX_RETRY_BURST")]
    retry_burst: u32,
    /// Queued sets at which the watches wait for the workers (backpressure).
    #[arg(long, default_value_t = QueueConfig::default().capacity, env = "VECODEX_QUEUE_CAPACITY")]
    queue_capacity: usize,
    /// How often every set is reconciled even without events, ±10 % (e.g. 30m, 90s, 1h).
    #[arg(long, default_value_t = Dur(Config::default().resync), env = "VECODEX_RESYNC")]
    resync: Dur,
    /// Address of the /metrics, /healthz and /readyz listener.
    #[arg(long, default_value = "0.0.0.0:8080", env = "VECODEX_METRICS_ADDR")]
    metrics_addr: std::net::SocketAddr,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "VECODEX_LOG_FORMAT")]
    log_format: LogFormat,
    /// Log filter when RUST_LOG is not set (e.g. `info`, `vecodex_operator=debug`).
    #[arg(long, default_value = "info", env = "VECODEX_LOG_LEVEL")]
    log_level: String,
    /// Name reported on Events; the pod name in a cluster.
    #[arg(long, env = "POD_NAME")]
    instance: Option<String>,
    #[command(flatten)]
    sharding: ShardArgs,
    #[command(flatten)]
    policy: PolicyArgs,
    /// OTLP/gRPC endpoint for traces, e.g. http://jaeger-collector:4317 (none: no export).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// `service.name` of the traces.
    #[arg(long, default_value = "vecodex-operator", env = "OTEL_SERVICE_NAME")]
    otel_service_name: String,
    /// always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off,
    /// parentbased_traceidratio.
    #[arg(
        long,
        default_value = "parentbased_always_on",
        env = "OTEL_TRACES_SAMPLER"
    )]
    otel_sampler: String,
    /// Sampling ratio for the ratio samplers (0.0 to 1.0).
    #[arg(long, env = "OTEL_TRACES_SAMPLER_ARG")]
    otel_sampler_arg: Option<f64>,
    /// How long a shard Lease lasts without renewal.
    #[arg(long, default_value_t = Dur(ShardConfig::default().lease_duration), env = "VECODEX_LEASE_DURATION")]
    lease_duration: Dur,
    /// A replica that could not renew a shard for this long stops reconciling it.
    #[arg(long, default_value_t = Dur(ShardConfig::default().renew_deadline), env = "VECODEX_RENEW_DEADLINE")]
    renew_deadline: Dur,
    /// How often Leases are read, renewed and acquired.
    #[arg(long, default_value_t = Dur(ShardConfig::default().retry_period), env = "VECODEX_RETRY_PERIOD")]
    retry_period: Dur,
    /// Cache the children of the shards a failure would bring this replica, so that a
    /// takeover lists nothing (false: hold only the own shards' children, less memory).
    #[arg(long, default_value_t = ShardConfig::default().warm_standby, env = "VECODEX_WARM_STANDBY", action = clap::ArgAction::Set)]
    warm_standby: bool,
    /// A reconcile running longer than this is cancelled and retried with backoff.
    #[arg(long, default_value_t = Dur(Config::default().reconcile_timeout), env = "VECODEX_RECONCILE_TIMEOUT")]
    reconcile_timeout: Dur,
    /// This replica's identity on Leases (default: POD_NAME or host name, plus a random suffix).
    #[arg(long, env = "VECODEX_IDENTITY")]
    identity: Option<String>,
}

/// The admin's policy: what a set may ask for (see the README's "Admin policy").
#[derive(clap::Args)]
struct PolicyArgs {
    /// Image references must start with one of these (comma-separated; empty: any image).
    #[arg(long, env = "VECODEX_ALLOWED_IMAGE_PREFIXES", value_delimiter = ',')]
    allowed_image_prefixes: Vec<String>,
    /// Whether a component's env may take values from Secrets (secretKeyRef).
    #[arg(long, env = "VECODEX_ALLOW_ENV_SECRET_REFS", default_value_t = true, action = clap::ArgAction::Set)]
    allow_env_secret_refs: bool,
    /// Whether a set may name image pull Secrets.
    #[arg(long, env = "VECODEX_ALLOW_IMAGE_PULL_SECRETS", default_value_t = true, action = clap::ArgAction::Set)]
    allow_image_pull_secrets: bool,
    /// Whether a set may name a TLS Secret for its Ingress.
    #[arg(long, env = "VECODEX_ALLOW_TLS_SECRETS", default_value_t = true, action = clap::ArgAction::Set)]
    allow_tls_secrets: bool,
    /// Whether Ingress annotations may use ingress-nginx's `*-snippet` family.
    #[arg(long, env = "VECODEX_ALLOW_SNIPPET_ANNOTATIONS", default_value_t = false, action = clap::ArgAction::Set)]
    allow_snippet_annotations: bool,
    /// Ingress annotation keys allowed (comma-separated; exact, or a prefix ending in `*`;
    /// empty: any key the other rules allow).
    #[arg(
        long,
        env = "VECODEX_INGRESS_ANNOTATIONS_ALLOWED",
        value_delimiter = ','
    )]
    ingress_annotations_allowed: Vec<String>,
    /// Ingress annotation keys denied (comma-separated; exact, or a prefix ending in `*`).
    #[arg(
        long,
        env = "VECODEX_INGRESS_ANNOTATIONS_DENIED",
        value_delimiter = ','
    )]
    ingress_annotations_denied: Vec<String>,
    /// Pod label and annotation keys under kubernetes.io/ or k8s.io/ a set may still set.
    #[arg(long, env = "VECODEX_RESERVED_POD_KEYS_ALLOWED", value_delimiter = ',')]
    reserved_pod_keys_allowed: Vec<String>,
    /// Toleration keys a set may use (comma-separated; empty: any).
    #[arg(long, env = "VECODEX_ALLOWED_TOLERATION_KEYS", value_delimiter = ',')]
    allowed_toleration_keys: Vec<String>,
    /// Whether a component may run as user 0 (its pods then fail "restricted").
    #[arg(long, env = "VECODEX_ALLOW_RUN_AS_ROOT", default_value_t = false, action = clap::ArgAction::Set)]
    allow_run_as_root: bool,
    /// The hosts a namespace's sets may serve, `{namespace}` standing for the namespace:
    /// this host and its subdomains (none: any host).
    #[arg(long, env = "VECODEX_INGRESS_HOST_PATTERN")]
    ingress_host_pattern: Option<String>,
}

impl PolicyArgs {
    fn policy(&self) -> Policy {
        let list = |v: &[String]| -> Vec<String> {
            v.iter()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        };
        Policy {
            allowed_image_prefixes: list(&self.allowed_image_prefixes),
            allow_env_secret_refs: self.allow_env_secret_refs,
            allow_image_pull_secrets: self.allow_image_pull_secrets,
            allow_tls_secrets: self.allow_tls_secrets,
            allow_snippet_annotations: self.allow_snippet_annotations,
            ingress_annotations_allowed: list(&self.ingress_annotations_allowed),
            ingress_annotations_denied: list(&self.ingress_annotations_denied),
            reserved_pod_keys_allowed: list(&self.reserved_pod_keys_allowed),
            allowed_toleration_keys: list(&self.allowed_toleration_keys),
            allow_run_as_root: self.allow_run_as_root,
            ingress_host_pattern: self.ingress_host_pattern.clone().filter(|p| !p.is_empty()),
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", vecodex_operator::crd::crd_yaml());
            std::process::ExitCode::SUCCESS
        }
        Command::ShardOf { namespace, scheme } => {
            println!("{}", scheme.scheme().shard_of(&namespace));
            std::process::ExitCode::SUCCESS
        }
        Command::Shards(args) => {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| {
                    rt.block_on(async {
                        let client = kube::Client::try_default().await?;
                        Ok(vecodex_operator::shard::shards_table(
                            client,
                            &args.lease_namespace,
                            &args.lease_group,
                            args.scheme.scheme(),
                        )
                        .await?)
                    })
                });
            match result {
                Ok(table) => {
                    print!("{table}");
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("vecodex-operator shards: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::Run(args) => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the async runtime: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            };
            let mut args = args;
            // One identity for Leases and traces (`service.instance.id`).
            args.identity = Some(args.identity.clone().unwrap_or_else(default_identity));
            runtime.block_on(async move {
                let metrics = Metrics::default();
                let traces = TraceConfig {
                    endpoint: args.otlp_endpoint.clone(),
                    service_name: args.otel_service_name.clone(),
                    sampler: args.otel_sampler.clone(),
                    sampler_arg: args.otel_sampler_arg,
                    instance_id: args.identity.clone().unwrap_or_default(),
                };
                let telemetry = match telemetry::init(
                    args.log_format,
                    &args.log_level,
                    &traces,
                    metrics.spans_exported.clone(),
                    metrics.spans_dropped.clone(),
                ) {
                    Ok(t) => t,
                    Err(e) => {
                        eprintln!("cannot set up tracing: {e:#}");
                        return std::process::ExitCode::FAILURE;
                    }
                };
                let result = run(*args, metrics).await;
                // Flush what traces we can; never longer than a few seconds.
                telemetry.shutdown(Duration::from_secs(5)).await;
                match result {
                    Ok(()) => std::process::ExitCode::SUCCESS,
                    Err(e) => {
                        error!(error = format!("{e:#}"), "operator failed");
                        std::process::ExitCode::FAILURE
                    }
                }
            })
        }
    }
}

async fn run(args: RunArgs, metrics: Metrics) -> anyhow::Result<()> {
    let (lease_duration, renew_deadline, retry_period) = (
        args.lease_duration.0,
        args.renew_deadline.0,
        args.retry_period.0,
    );
    if !(retry_period < renew_deadline && renew_deadline < lease_duration) {
        anyhow::bail!(
            "need --retry-period < --renew-deadline < --lease-duration (fencing relies on it)"
        );
    }
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let kube_config = kube::Config::infer().await?;
    // Two clients, two connection pools: Lease traffic never waits for a connection behind
    // reconciles, nor loses one when a timed-out reconcile drops its requests. The API
    // server's audit log and metrics name each replica, and its Lease client, by User-Agent.
    let build = |user_agent: String| -> anyhow::Result<kube::Client> {
        let mut config = kube_config.clone();
        config.headers.push((
            ::http::header::USER_AGENT,
            ::http::HeaderValue::from_str(&user_agent)?,
        ));
        Ok(kube::client::ClientBuilder::try_from(config)?
            .with_layer(&RequestMetricsLayer::new(metrics.clone()))
            .build())
    };
    let clients = controller::Clients {
        work: build(user_agent(&identity))?,
        leases: build(format!("{} leases", user_agent(&identity)))?,
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_handler(shutdown.clone()));
    let config = Config {
        namespaces: args
            .namespace
            .into_iter()
            .filter(|n| !n.is_empty())
            .collect(),
        concurrency: args.concurrency,
        limits: Limits {
            max_replicas: args.max_replicas,
        },
        policy: args.policy.policy(),
        queue: QueueConfig {
            capacity: args.queue_capacity.max(1),
            base_delay: Duration::from_millis(args.retry_base_ms),
            max_delay: Duration::from_secs(args.retry_max_seconds),
            retry_rate: args.retry_rate,
            retry_burst: args.retry_burst,
            ..QueueConfig::default()
        },
        resync: args.resync.0,
        sharding: ShardConfig {
            scheme: args.sharding.scheme.scheme(),
            namespace: args.sharding.lease_namespace.clone(),
            group: args.sharding.lease_group.clone(),
            identity,
            lease_duration,
            renew_deadline,
            retry_period,
            warm_standby: args.warm_standby,
        },
        instance: args.instance,
        reconcile_timeout: args.reconcile_timeout.0,
        ..Config::default()
    };
    info!(version = env!("CARGO_PKG_VERSION"), namespaces = ?config.namespaces, policy = ?config.policy, "starting vecodex-operator");
    let health = Arc::new(Health::default());
    let server = http::serve(
        args.metrics_addr,
        metrics.clone(),
        health.clone(),
        shutdown.clone(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.metrics_addr))?;
    let result = controller::run(clients, config, metrics, health, shutdown.clone()).await;
    shutdown.cancel();
    let _ = server.await;
    result
}

/// `vecodex-operator/<version> (<identity>)`: what the API server records as the User-Agent
/// of every request of this replica (its Lease client adds ` leases`).
fn user_agent(identity: &str) -> String {
    format!(
        "vecodex-operator/{} ({identity})",
        env!("CARGO_PKG_VERSION")
    )
}

/// A duration on the command line (see [`parse_duration`]), printed in the largest unit that
/// divides it, so that `--help` shows each default as one would write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dur(Duration);

impl std::str::FromStr for Dur {
    type Err = String;

    fn from_str(s: &str) -> Result<Dur, String> {
        parse_duration(s).map(Dur)
    }
}

impl std::fmt::Display for Dur {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.0.as_millis();
        match ms {
            _ if ms.is_multiple_of(3_600_000) => write!(f, "{}h", ms / 3_600_000),
            _ if ms.is_multiple_of(60_000) => write!(f, "{}m", ms / 60_000),
            _ if ms.is_multiple_of(1_000) => write!(f, "{}s", ms / 1_000),
            _ => write!(f, "{ms}ms"),
        }
    }
}

/// Parses `1500ms`, `90s`, `30m`, `1h` or a plain number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 90s, 30m or 1h"))?;
    let millis = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => return Err(format!("{s:?}: unit must be ms, s, m or h")),
    }
    .ok_or_else(|| format!("{s:?} is too long"))?;
    if millis == 0 {
        return Err("the duration must be positive".to_owned());
    }
    Ok(Duration::from_millis(millis))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_their_units() {
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration(" 90s "), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for d in [
            Duration::from_millis(1500),
            Duration::from_secs(90),
            Duration::from_secs(1800),
            Duration::from_secs(7200),
        ] {
            assert_eq!(Dur(d).to_string().parse::<Dur>(), Ok(Dur(d)), "{d:?}");
        }
        assert_eq!(Dur(Duration::from_secs(1800)).to_string(), "30m");
        for bad in [
            "",
            "0s",
            "0ms",
            "s",
            "1.5s",
            "10d",
            "-1s",
            "99999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} is rejected");
        }
    }
}
