//! vecodex-loadtest: drives the operator on the real local control plane and reports.
//!
//! Scenarios implemented so far (see loadtest/README.md): `limit` (a plain client writing the
//! same children at the same concurrency: the API server's write limit), `cold-start` (N sets
//! exist, R operator replicas start; time to converge, throughput, API writes, peak RSS and CPU
//! per replica) and `idle` (write requests per minute once converged). Writes `results.json`
//! and `convergence.svg` into `--out`, and prints a summary table.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{Value, json};
use vecodex_operator::children;
use vecodex_operator::crd::{VecodexSet, VecodexSetSpec};

#[derive(Parser, Debug, Clone)]
#[command(about = "Load test of vecodex-operator on the local control plane")]
struct Args {
    /// VecodexSets to create.
    #[arg(long, default_value_t = 1000)]
    sets: usize,
    /// Namespaces they are spread over.
    #[arg(long, default_value_t = 100)]
    namespaces: usize,
    /// Operator replicas.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    #[arg(long, default_value_t = 16)]
    shards: u32,
    /// Reconcile concurrency per replica, and the plain client's concurrency.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Spec updates per second in the churn scenario.
    #[arg(long, default_value_t = 50.0)]
    churn_rate: f64,
    /// How long the churn scenario runs.
    #[arg(long, default_value_t = 30)]
    churn_seconds: u64,
    /// How long the idle scenario measures.
    #[arg(long, default_value_t = 60)]
    idle_seconds: u64,
    /// Give up on convergence after this long.
    #[arg(long, default_value_t = 1800)]
    timeout_seconds: u64,
    /// Use this cluster instead of starting one with deploy/local/cluster.sh.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Where results.json and convergence.svg go.
    #[arg(long, default_value = "loadtest/results")]
    out: PathBuf,
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

async fn client_for(kubeconfig: &Path) -> anyhow::Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// Starts a control plane that goes down when this process exits.
fn start_cluster() -> anyhow::Result<PathBuf> {
    let out = Command::new("bash")
        .arg(repo_root().join("deploy/local/cluster.sh"))
        .args(["up", "--owner-pid", &std::process::id().to_string()])
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
    Ok(PathBuf::from(dir).join("kubeconfig"))
}

async fn install_crd(client: &Client) -> anyhow::Result<()> {
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

fn seed_spec() -> VecodexSetSpec {
    let yaml = std::fs::read_to_string(repo_root().join("deploy/samples/vecodexset-example.yaml"))
        .unwrap_or_default();
    let set: VecodexSet = serde_saphyr::from_str(&yaml).expect("seed example parses");
    set.spec
}

async fn create_namespaces(client: &Client, prefix: &str, n: usize) -> anyhow::Result<Vec<String>> {
    let api: Api<Namespace> = Api::all(client.clone());
    // The varying part first: FNV-1a (the shard hash) spreads names that differ only in their
    // last characters poorly, and `tenant-0`..`tenant-9` would all land on one shard.
    let names: Vec<String> = (0..n).map(|i| format!("{i}-{prefix}")).collect();
    futures::stream::iter(names.clone())
        .map(|name| {
            let api = api.clone();
            async move {
                let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
                match api.create(&PostParams::default(), &ns).await {
                    Ok(_) | Err(kube::Error::Api(_)) => Ok::<_, anyhow::Error>(()),
                    Err(e) => Err(e.into()),
                }
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(names)
}

/// Sums write requests on the resources the operator writes (from the API server's metrics).
async fn write_requests(client: &Client) -> anyhow::Result<f64> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(req).await?;
    let mut total = 0.0;
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let label = |name: &str| {
            line.split(&format!("{name}=\""))
                .nth(1)
                .and_then(|s| s.split('"').next())
                .unwrap_or("")
        };
        let write = matches!(label("verb"), "POST" | "PUT" | "PATCH" | "DELETE" | "APPLY");
        // Events are left out: the controller-manager writes them too (the operator's own are
        // counted by `operator_events`).
        let ours = matches!(
            label("resource"),
            "deployments" | "services" | "configmaps" | "ingresses" | "vecodexsets"
        ) && !(label("resource") == "deployments" && label("subresource") == "status");
        if write && ours {
            total += line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
        }
    }
    Ok(total)
}

/// Events the operator has written (and their series updates).
async fn operator_events(client: &Client) -> anyhow::Result<i64> {
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

/// Scenario 2: a plain client applies the same children for `sets` sets at `concurrency`.
async fn limit(client: &Client, args: &Args) -> anyhow::Result<Value> {
    let namespaces = create_namespaces(client, "limit", args.namespaces).await?;
    let spec = seed_spec();
    let started = Instant::now();
    let params = PatchParams::apply("vecodex-loadtest-plain").force();
    futures::stream::iter(0..args.sets)
        .map(|i| {
            let client = client.clone();
            let ns = namespaces[i % namespaces.len()].clone();
            let spec = spec.clone();
            let params = params.clone();
            async move {
                let mut set = VecodexSet::new(&format!("plain-{i}"), spec);
                set.meta_mut().namespace = Some(ns.clone());
                set.meta_mut().uid = Some(format!("00000000-0000-0000-0000-{i:012}"));
                let mut desired = children::build(&set)?;
                // Not owned by anything (the garbage collector would delete them) and not
                // labelled as the operator's (its watches must not cache them).
                for meta in desired
                    .deployments
                    .iter_mut()
                    .map(|d| &mut d.metadata)
                    .chain(desired.services.iter_mut().map(|s| &mut s.metadata))
                    .chain(desired.ingress.iter_mut().map(|i| &mut i.metadata))
                {
                    meta.owner_references = None;
                    meta.labels = Some([("loadtest".to_owned(), "plain".to_owned())].into());
                }
                for svc in &desired.services {
                    Api::<Service>::namespaced(client.clone(), &ns).patch(&svc.name_any(), &params, &Patch::Apply(svc)).await?;
                }
                for d in &desired.deployments {
                    Api::<Deployment>::namespaced(client.clone(), &ns).patch(&d.name_any(), &params, &Patch::Apply(d)).await?;
                }
                if let Some(ing) = &desired.ingress {
                    Api::<Ingress>::namespaced(client.clone(), &ns).patch(&ing.name_any(), &params, &Patch::Apply(ing)).await?;
                }
                // The operator also writes one status per set; a ConfigMap stands in for it.
                let status: ConfigMap = serde_json::from_value(json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": format!("plain-{i}-status"), "labels": {"loadtest": "plain"}},
                    "data": {"observedGeneration": "1"}
                }))?;
                Api::<ConfigMap>::namespaced(client.clone(), &ns).patch(&status.name_any(), &params, &Patch::Apply(&status)).await?;
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(args.concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    let secs = started.elapsed().as_secs_f64();
    Ok(json!({
        "sets": args.sets,
        "seconds": secs,
        "sets_per_second": args.sets as f64 / secs,
        "writes_per_set": 8,
    }))
}

/// Per-process memory and CPU, read from /proc.
fn proc_stats(pid: u32) -> Option<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm_kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some((hwm_kib * 1024, ticks / 100.0))
}

fn start_replica(kubeconfig: &Path, args: &Args, i: usize, log: &Path) -> anyhow::Result<Child> {
    let bin = std::env::current_exe()?.with_file_name("vecodex-operator");
    let file = std::fs::File::create(log)?;
    Ok(Command::new(bin)
        .args([
            "run",
            "--metrics-addr",
            "127.0.0.1:0",
            "--identity",
            &format!("loadtest-{i}"),
        ])
        .args([
            "--shards",
            &args.shards.to_string(),
            "--concurrency",
            &args.concurrency.to_string(),
        ])
        .args(["--log-level", "warn"])
        .env("KUBECONFIG", kubeconfig)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()?)
}

async fn wait_converged(client: &Client, sets: usize, timeout: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let (done, total) = converged(client).await?;
        if done == sets && total == sets {
            return Ok(());
        }
        if started.elapsed() > timeout {
            bail!("not converged after {timeout:?}: {done}/{total}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Counts converged sets: observedGeneration equals generation and every child exists.
async fn converged(client: &Client) -> anyhow::Result<(usize, usize)> {
    let sets: Api<VecodexSet> = Api::all(client.clone());
    let lp = ListParams::default();
    let all = sets.list(&lp).await?.items;
    let managed = ListParams::default().labels(&children::managed_selector());
    let deployments = Api::<Deployment>::all(client.clone())
        .list_metadata(&managed)
        .await?
        .items;
    let services = Api::<Service>::all(client.clone())
        .list_metadata(&managed)
        .await?
        .items;
    let ingresses = Api::<Ingress>::all(client.clone())
        .list_metadata(&managed)
        .await?
        .items;
    let mut children_of: BTreeMap<String, usize> = BTreeMap::new();
    for meta in deployments
        .iter()
        .map(|d| &d.metadata)
        .chain(services.iter().map(|s| &s.metadata))
        .chain(ingresses.iter().map(|i| &i.metadata))
    {
        if let Some(owner) = meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
        {
            *children_of.entry(owner.uid.clone()).or_default() += 1;
        }
    }
    let done = all
        .iter()
        .filter(|s| {
            let observed =
                s.status.as_ref().and_then(|st| st.observed_generation) == s.metadata.generation;
            let kids = s
                .metadata
                .uid
                .as_ref()
                .and_then(|u| children_of.get(u))
                .copied()
                .unwrap_or(0);
            observed && kids == 7
        })
        .count();
    Ok((done, all.len()))
}

async fn create_sets(client: &Client, args: &Args) -> anyhow::Result<()> {
    let namespaces = create_namespaces(client, "tenant", args.namespaces).await?;
    let spec = seed_spec();
    futures::stream::iter(0..args.sets)
        .map(|i| {
            let client = client.clone();
            let ns = namespaces[i % namespaces.len()].clone();
            let spec = spec.clone();
            async move {
                let mut set = VecodexSet::new(&format!("set-{i}"), spec);
                set.meta_mut().namespace = Some(ns.clone());
                Api::<VecodexSet>::namespaced(client, &ns)
                    .create(&PostParams::default(), &set)
                    .await?;
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await
        .map(|_| ())
}

/// Scenario 4: `rate` spec updates per second for `seconds` across the sets; the latency from
/// each update to the searcher Deployment carrying it.
async fn churn(client: &Client, args: &Args) -> anyhow::Result<Value> {
    use std::sync::{Arc, Mutex};
    // (namespace/deployment) -> (wanted replicas, when the update was accepted)
    let pending: Arc<Mutex<BTreeMap<String, (i32, Instant)>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let watch = {
        let pending = pending.clone();
        let latencies = latencies.clone();
        let api: Api<Deployment> = Api::all(client.clone());
        let config =
            kube::runtime::watcher::Config::default().labels(&children::managed_selector());
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(kube::runtime::watcher(api, config));
            while let Some(event) = stream.next().await {
                if let Ok(kube::runtime::watcher::Event::Apply(d)) = event {
                    let key = format!("{}/{}", d.namespace().unwrap_or_default(), d.name_any());
                    let replicas = d.spec.as_ref().and_then(|s| s.replicas);
                    let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some((want, at)) = p.get(&key).copied()
                        && replicas == Some(want)
                    {
                        latencies
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(at.elapsed().as_secs_f64());
                        p.remove(&key);
                    }
                }
            }
        })
    };
    let total = (args.churn_rate * args.churn_seconds as f64) as usize;
    let interval = Duration::from_secs_f64(1.0 / args.churn_rate.max(0.1));
    let mut tick = tokio::time::interval(interval);
    let mut sent = 0;
    // Each update must change the value (the seed's searchers have 3 replicas), or there is
    // nothing for the Deployment to show.
    let mut current: BTreeMap<usize, i32> = BTreeMap::new();
    for n in 0..total {
        tick.tick().await;
        let i = (n * 7919) % args.sets;
        let ns = format!("{}-tenant", i % args.namespaces);
        let name = format!("set-{i}");
        let previous = current.get(&i).copied().unwrap_or(3);
        let want = previous % 5 + 1;
        current.insert(i, want);
        let api: Api<VecodexSet> = Api::namespaced(client.clone(), &ns);
        let patch = json!({"spec": {"searcher": {"replicas": want}}});
        // Recorded before the request: the operator can be faster than our own response.
        let key = format!("{ns}/{name}-searcher");
        pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), (want, Instant::now()));
        if api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .is_ok()
        {
            sent += 1;
        } else {
            pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
        }
    }
    // Let the last updates land.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pending.lock().unwrap_or_else(|e| e.into_inner()).is_empty() && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    watch.abort();
    let mut l = latencies.lock().unwrap_or_else(|e| e.into_inner()).clone();
    l.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        l.get(((l.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let lost_keys: Vec<String> = pending
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .keys()
        .cloned()
        .collect();
    let lost = lost_keys.len();
    Ok(json!({
        "rate_per_second": args.churn_rate,
        "seconds": args.churn_seconds,
        "updates": sent,
        "observed": l.len(),
        "not_applied_within_60s": lost,
        "not_applied": lost_keys,
        "p50_seconds": pct(0.50),
        "p95_seconds": pct(0.95),
        "p99_seconds": pct(0.99),
    }))
}

fn svg(curve: &[(f64, usize)], total: usize) -> String {
    let (w, h, pad) = (640.0, 320.0, 40.0);
    let max_t = curve.last().map_or(1.0, |c| c.0.max(1.0));
    let points: Vec<String> = curve
        .iter()
        .map(|(t, n)| {
            let x = pad + t / max_t * (w - 2.0 * pad);
            let y = h - pad - (*n as f64 / total.max(1) as f64) * (h - 2.0 * pad);
            format!("{x:.1},{y:.1}")
        })
        .collect();
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{pad}" y="20">Cold start: converged sets over time ({total} sets)</text>
<line x1="{pad}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="black"/>
<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{y0}" stroke="black"/>
<text x="{x1}" y="{yl}" text-anchor="end">{max_t:.1} s</text>
<text x="4" y="{pad}">{total}</text>
<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{pts}"/>
</svg>
"##,
        y0 = h - pad,
        x1 = w - pad,
        yl = h - pad + 16.0,
        pts = points.join(" ")
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let kubeconfig = match &args.kubeconfig {
        Some(k) => k.clone(),
        None => start_cluster()?,
    };
    let client = client_for(&kubeconfig).await?;
    install_crd(&client).await?;
    std::fs::create_dir_all(&args.out)?;
    eprintln!(
        "loadtest: {} sets over {} namespaces, {} replicas, {} shards, concurrency {}",
        args.sets, args.namespaces, args.replicas, args.shards, args.concurrency
    );

    // 2. The API server's write limit for the same objects at the same concurrency.
    let limit = limit(&client, &args).await?;
    eprintln!("limit: {limit}");

    // 1. Cold start.
    create_sets(&client, &args).await?;
    let writes_before = write_requests(&client).await?;
    let logs = kubeconfig.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut replicas: Vec<Child> = (0..args.replicas)
        .map(|i| {
            start_replica(
                &kubeconfig,
                &args,
                i,
                &logs.join(format!("loadtest-replica-{i}.log")),
            )
        })
        .collect::<anyhow::Result<_>>()?;
    let started = Instant::now();
    let mut curve = Vec::new();
    loop {
        let (done, total) = converged(&client).await?;
        curve.push((started.elapsed().as_secs_f64(), done));
        if done == args.sets && total == args.sets {
            break;
        }
        if started.elapsed() > Duration::from_secs(args.timeout_seconds) {
            bail!(
                "not converged after {} s: {done}/{total}",
                args.timeout_seconds
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let cold_secs = started.elapsed().as_secs_f64();
    let cold_writes = write_requests(&client).await? - writes_before;
    let stats: Vec<Value> = replicas
        .iter()
        .map(|r| {
            let (rss, cpu) = proc_stats(r.id()).unwrap_or((0, 0.0));
            json!({"pid": r.id(), "peak_rss_mib": rss as f64 / 1048576.0, "cpu_seconds": cpu})
        })
        .collect();
    let sets_per_second = args.sets as f64 / cold_secs;
    let ratio = sets_per_second / limit["sets_per_second"].as_f64().unwrap_or(f64::INFINITY);

    // 4. Churn (before idle, so idle measures a quiet system afterwards).
    let churn = churn(&client, &args).await?;
    eprintln!("churn: {churn}");
    wait_converged(
        &client,
        args.sets,
        Duration::from_secs(args.timeout_seconds),
    )
    .await?;

    // 3. Idle.
    let idle_before = write_requests(&client).await?;
    let events_before = operator_events(&client).await?;
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    let idle_writes = write_requests(&client).await? - idle_before
        + (operator_events(&client).await? - events_before) as f64;
    let idle_per_minute = idle_writes * 60.0 / args.idle_seconds.max(1) as f64;

    for r in &mut replicas {
        let _ = Command::new("kill")
            .args(["-TERM", &r.id().to_string()])
            .status();
        let _ = r.wait();
    }

    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let results = json!({
        "date": jiff::Timestamp::now().to_string(),
        "machine": format!("{} cores", std::thread::available_parallelism().map_or(0, |n| n.get())),
        "commit": commit,
        "parameters": {"sets": args.sets, "namespaces": args.namespaces, "replicas": args.replicas, "shards": args.shards, "concurrency": args.concurrency},
        "limit": limit,
        "cold_start": {
            "seconds": cold_secs,
            "sets_per_second": sets_per_second,
            "write_requests": cold_writes,
            "write_requests_per_set": cold_writes / args.sets as f64,
            "replicas": stats,
        },
        "converge_to_limit_ratio": ratio,
        "churn": churn,
        "idle": {"seconds": args.idle_seconds, "write_requests": idle_writes, "write_requests_per_minute": idle_per_minute},
        "not_yet_run": ["tenant under flood", "failover", "scale-out", "tracing cost"],
    });
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_string_pretty(&results)? + "\n",
    )?;
    std::fs::write(args.out.join("convergence.svg"), svg(&curve, args.sets))?;

    println!("scenario     | figure");
    println!("-------------|------------------------------------------------");
    println!(
        "limit        | {:.1} sets/s (plain client, {} writes/set)",
        limit["sets_per_second"].as_f64().unwrap_or(0.0),
        8
    );
    println!(
        "cold start   | {:.1} sets/s, {:.1} s, {:.1} writes/set",
        sets_per_second,
        cold_secs,
        cold_writes / args.sets as f64
    );
    println!("ratio        | {:.2} of the plain client's limit", ratio);
    for (i, s) in stats.iter().enumerate() {
        println!(
            "replica {i}    | peak RSS {:.1} MiB, {:.1} CPU s",
            s["peak_rss_mib"].as_f64().unwrap_or(0.0),
            s["cpu_seconds"].as_f64().unwrap_or(0.0)
        );
    }
    println!(
        "churn        | {} updates at {}/s: p50 {:.3} s, p95 {:.3} s, p99 {:.3} s, {} not applied",
        churn["updates"],
        args.churn_rate,
        churn["p50_seconds"].as_f64().unwrap_or(f64::NAN),
        churn["p95_seconds"].as_f64().unwrap_or(f64::NAN),
        churn["p99_seconds"].as_f64().unwrap_or(f64::NAN),
        churn["not_applied_within_60s"]
    );
    println!("idle         | {idle_per_minute:.1} write requests/min");
    println!("results      | {}", args.out.join("results.json").display());
    if idle_writes > 0.0 {
        bail!("idle: {idle_writes} write requests while nothing changed");
    }
    if churn["not_applied_within_60s"].as_u64().unwrap_or(0) > 0 {
        bail!("churn: updates were lost: {churn}");
    }
    Ok(())
}
