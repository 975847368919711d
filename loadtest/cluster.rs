//! The load test's side of a control plane: starting and stopping one, the operator replicas,
//! and what is read from the API server and from /proc to report.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Resource};
use serde_json::json;
use vecodex_operator::crd::{VecodexSet, VecodexSetSpec};

use crate::results::{ControlPlaneCpu, ReplicaStats, Requests};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub async fn client_for(kubeconfig: &Path) -> anyhow::Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// How a control plane runs: its kube-apiserver's garbage collection (Go's GOGC and
/// GOMEMLIMIT) and kube-controller-manager's controllers (see `profile.rs`).
#[derive(Debug, Clone)]
pub struct ControlPlaneSettings {
    pub gogc: u32,
    /// Go's syntax (`12GiB`); empty for none.
    pub memory_limit: String,
    pub controllers: &'static str,
}

/// A control plane started for the load test; `down` stops it, and a watchdog stops it if
/// this process dies first.
pub struct LocalCluster {
    pub dir: PathBuf,
}

impl LocalCluster {
    /// Starts one without kube-controller-manager's deployment and replicaset controllers:
    /// the kubelet simulator writes Deployment status instead, so no ReplicaSets or Pods are
    /// created (there is no scheduler or kubelet to run them anyway). Without pods the
    /// endpoint controllers have nothing to publish, but they would still create an Endpoints
    /// and an EndpointSlice per Service at the controller-manager's 20 requests/s: at 30,000
    /// Services a backlog of half an hour, which landed on whatever scenario came next. So
    /// they are off too.
    ///
    /// `gc` is the API server's GOGC and GOMEMLIMIT (`--apiserver-gogc`,
    /// `--apiserver-memory-limit`).
    pub fn up(settings: &ControlPlaneSettings) -> anyhow::Result<LocalCluster> {
        let out = Command::new("bash")
            .arg(repo_root().join("deploy/local/cluster.sh"))
            .args(["up", "--owner-pid", &std::process::id().to_string()])
            .env("VECODEX_KCM_CONTROLLERS", settings.controllers)
            .env("VECODEX_APISERVER_GOGC", settings.gogc.to_string())
            .env("VECODEX_APISERVER_GOMEMLIMIT", &settings.memory_limit)
            .stderr(Stdio::inherit())
            .output()
            .context("run deploy/local/cluster.sh")?;
        if !out.status.success() {
            bail!("deploy/local/cluster.sh up failed");
        }
        let dir = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or("")
            .trim()
            .to_owned();
        Ok(LocalCluster {
            dir: PathBuf::from(dir),
        })
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// CPU seconds each control-plane process has used so far: a figure the other work on a
    /// shared machine does not distort the way it distorts wall-clock time.
    pub fn cpu_seconds(&self) -> ControlPlaneCpu {
        let cpu = |c: &str| {
            std::fs::read_to_string(self.dir.join(format!("pids/{c}.pid")))
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok())
                .and_then(proc_stats)
                .map_or(0.0, |s| s.1)
        };
        ControlPlaneCpu::new(
            cpu("kube-apiserver"),
            cpu("etcd"),
            cpu("kube-controller-manager"),
        )
    }

    /// Waits until the control plane uses less than 0.15 cores over 5 s (at most `max`), so
    /// a phase is not charged for the work an earlier one left behind (the endpoint and
    /// garbage-collector controllers run behind the writes that feed them). Returns how
    /// long it waited.
    pub async fn wait_quiet(&self, max: Duration) -> Duration {
        let started = std::time::Instant::now();
        while started.elapsed() < max {
            let before = self.cpu_seconds();
            tokio::time::sleep(Duration::from_secs(5)).await;
            if self.cpu_seconds().since(&before).total / 5.0 < 0.15 {
                break;
            }
        }
        started.elapsed()
    }

    pub fn down(&self) {
        let _ = Command::new("bash")
            .arg(repo_root().join("deploy/local/cluster.sh"))
            .arg("down")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

pub async fn install_crd(client: &Client) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "vecodexsets.apps.vecodex.link",
        &PatchParams::apply("vecodex-loadtest").force(),
        &Patch::Apply(vecodex_operator::crd::crd()),
    )
    .await?;
    for _ in 0..100 {
        let crd = crds.get("vecodexsets.apps.vecodex.link").await?;
        let established = crd.status.and_then(|s| s.conditions).is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        });
        if established {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("CRD not established")
}

pub fn seed_spec() -> anyhow::Result<VecodexSetSpec> {
    let path = repo_root().join("deploy/samples/vecodexset-example.yaml");
    let yaml = std::fs::read_to_string(&path).with_context(|| format!("read {path:?}"))?;
    let set: VecodexSet = serde_saphyr::from_str(&yaml).context("parse the seed example")?;
    Ok(set.spec)
}

/// Namespace `i` of a group, named as multi-tenant clusters name them: `tenant-17`.
/// The name prefix of the tenants' namespaces (the flood's have their own).
const TENANT: &str = "tenant";

/// Whether a namespace is one of the tenants' (see [`namespace_name`]), not the flood's.
pub fn is_tenant(ns: &str) -> bool {
    ns.strip_prefix(TENANT)
        .is_some_and(|rest| rest.starts_with('-'))
}

pub fn namespace_name(prefix: &str, i: usize) -> String {
    format!("{prefix}-{i}")
}

pub async fn create_namespaces(client: &Client, names: &[String]) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    futures::stream::iter(names.to_vec())
        .map(|name| {
            let api = api.clone();
            async move {
                let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
                match api.create(&PostParams::default(), &ns).await {
                    Ok(_) => Ok::<_, anyhow::Error>(()),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Where set `i` of `sets` spread over `namespaces` lives.
pub fn place(i: usize, namespaces: usize) -> (String, String) {
    (
        namespace_name(TENANT, i % namespaces.max(1)),
        format!("set-{i}"),
    )
}

pub async fn create_sets(
    client: &Client,
    sets: usize,
    namespaces: usize,
    spec: &VecodexSetSpec,
) -> anyhow::Result<()> {
    let names: Vec<String> = (0..namespaces.min(sets).max(1))
        .map(|i| namespace_name(TENANT, i))
        .collect();
    create_namespaces(client, &names).await?;
    futures::stream::iter(0..sets)
        .map(|i| {
            let client = client.clone();
            let (ns, name) = place(i, namespaces);
            let spec = spec.clone();
            async move {
                create_set(&client, &ns, &name, spec).await?;
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await
        .map(|_| ())
}

/// Creates set `ns/name` with `spec` and an Ingress host of its own (a host belongs to one
/// set: the seed's would be held by the first set and refused to every other).
pub async fn create_set(
    client: &Client,
    ns: &str,
    name: &str,
    mut spec: VecodexSetSpec,
) -> anyhow::Result<()> {
    if let Some(ingress) = spec.ingress.as_mut() {
        ingress.host = format!("{name}.{ns}.search.example.com");
    }
    let mut set = VecodexSet::new(name, spec);
    set.meta_mut().namespace = Some(ns.to_owned());
    Api::<VecodexSet>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &set)
        .await?;
    Ok(())
}

/// The API server's `/metrics` text.
async fn apiserver_metrics(client: &Client) -> anyhow::Result<String> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    Ok(client.request_text(req).await?)
}

/// Every request the API server has counted, by "VERB resource[/subresource]".
pub async fn requests(client: &Client) -> anyhow::Result<std::collections::BTreeMap<String, f64>> {
    Ok(crate::shared::apiserver_requests(
        &apiserver_metrics(client).await?,
    ))
}

/// Makes the API server collect its garbage now, so that every timed window (the plain
/// client's and the operator's alike) starts at the same point of its GC cycle:
/// `/debug/pprof/heap?gc=1` runs a full GC before it answers. At 10,000 sets the API server's
/// live heap is 1.5-3 GB and a collection's mark phase takes 2-8 s on two busy cores; every
/// request it overlaps is slowed (those were the 2-4 s tails at 50 updates/s). With
/// `--apiserver-gogc` 400 the next collection is then some 30 s of churn at 50/s away, which
/// a 30-s window may or may not reach. Returns the API server's GC cycles counted after it
/// (`gc_cycles`), so that the window can report how many fell inside it.
pub async fn collect_apiserver_garbage(client: &Client) -> anyhow::Result<f64> {
    let req = http::Request::get("/debug/pprof/heap?gc=1&debug=1").body(Vec::new())?;
    client
        .request_text(req)
        .await
        .context("GET /debug/pprof/heap?gc=1 (kube-apiserver --profiling)")?;
    gc_cycles(client).await
}

/// The API server's completed GC cycles (`go_gc_duration_seconds_count`).
pub async fn gc_cycles(client: &Client) -> anyhow::Result<f64> {
    apiserver_metrics(client)
        .await?
        .lines()
        .find_map(|l| l.strip_prefix("go_gc_duration_seconds_count "))
        .and_then(|v| v.trim().parse().ok())
        .context("go_gc_duration_seconds_count not in the API server's /metrics")
}

/// The requests counted between two readings of [`requests`], those that grew.
pub fn requests_delta(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
) -> Requests {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d > 0.0)
        .collect()
}

/// Write requests on the resources the operator writes. Deployment status is left out (the
/// kubelet simulator writes it), and so are Events (the controller-manager writes them too;
/// the operator's own are counted by `operator_events`).
pub async fn write_requests(client: &Client) -> anyhow::Result<f64> {
    Ok(crate::write_total(&requests(client).await?))
}

/// Events the operator has written (and their series updates).
pub async fn operator_events(client: &Client) -> anyhow::Result<i64> {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::all(client.clone());
    Ok(events
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|e| e.reporting_controller.as_deref() == Some("vecodex-operator"))
        .map(|e| e.series.as_ref().map_or(1, |s| i64::from(s.count)))
        .sum())
}

/// A `kB` field of a process's `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in bytes.
fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Resident memory (bytes, `VmRSS`) of a process now, from /proc.
pub fn proc_rss(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmRSS")
}

/// Peak RSS (bytes) and CPU seconds of a process, from /proc.
pub fn proc_stats(pid: u32) -> Option<(u64, f64)> {
    let hwm = status_bytes(pid, "VmHWM")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some((hwm, ticks / 100.0))
}

/// Where traces go, for the tracing-cost scenario.
#[derive(Clone)]
pub struct Otlp {
    pub endpoint: String,
    pub sampling_ratio: f64,
}

pub use crate::shared::Replica;

pub struct ReplicaOptions<'a> {
    pub kubeconfig: &'a Path,
    pub shards: u32,
    pub concurrency: usize,
    pub lease_seconds: u64,
    pub warm_standby: bool,
    pub otlp: Option<&'a Otlp>,
}

impl Replica {
    pub fn start(opts: &ReplicaOptions, identity: &str, log: &Path) -> anyhow::Result<Replica> {
        let bin = std::env::current_exe()?.with_file_name("vecodex-operator");
        let metrics_port = crate::shared::free_port()?;
        let lease = opts.lease_seconds.max(3);
        let mut cmd = crate::shared::operator_command(&bin, opts.kubeconfig, log)?;
        cmd.args(crate::shared::replica_flags(
            identity,
            opts.shards,
            Duration::from_secs(lease),
            Duration::from_secs(lease * 2 / 3),
            Duration::from_secs((lease / 7).max(1)),
        ))
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .args(["--concurrency", &opts.concurrency.to_string()])
        .arg(format!("--warm-standby={}", opts.warm_standby))
        .args([
            "--log-level",
            &std::env::var("VECODEX_LOADTEST_LOG_LEVEL").unwrap_or_else(|_| "warn".into()),
        ]);
        if let Some(otlp) = opts.otlp {
            cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp.endpoint)
                .env("OTEL_TRACES_SAMPLER", "traceidratio")
                .env("OTEL_TRACES_SAMPLER_ARG", otlp.sampling_ratio.to_string());
        }
        let child = cmd.spawn().with_context(|| format!("start {bin:?}"))?;
        Ok(Replica {
            child,
            identity: identity.to_owned(),
            log: log.to_owned(),
            metrics_port: Some(metrics_port),
        })
    }

    pub fn stats(&self) -> ReplicaStats {
        let (rss, cpu) = proc_stats(self.child.id()).unwrap_or((0, 0.0));
        ReplicaStats {
            identity: self.identity.clone(),
            peak_rss_mib: rss as f64 / 1048576.0,
            cpu_seconds: cpu,
        }
    }

    /// Its `/metrics` text.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let port = self
            .metrics_port
            .context("started without a metrics port")?;
        http_get(&format!("http://127.0.0.1:{port}/metrics")).await
    }

    /// Reconciles this replica has run, from its /metrics.
    pub async fn reconciles(&self) -> f64 {
        let Ok(text) = self.metrics().await else {
            return 0.0;
        };
        text.lines()
            .filter(|l| l.starts_with("vecodex_operator_reconciles_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// A plain HTTP/1.1 GET on a loopback address (the operator's metrics).
async fn http_get(url: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").context("http only")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    stream
        .write_all(
            format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut body)).await??;
    Ok(body)
}
