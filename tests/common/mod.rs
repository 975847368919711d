//! Shared harness of the integration tests: one real control plane per test binary (started
//! through `deploy/local/cluster.sh`), the CRD installed once, one operator process, and a
//! namespace per test.
// Each test binary uses a part of this harness, so the dead-code lint is off here;
// tests/harness.rs fails on a helper that no test uses.
#![allow(dead_code)]

pub mod audit;
pub mod fleet;
mod kubectl;
pub mod proxy;
mod replica;
#[path = "../../loadtest/shared.rs"]
pub mod shared;

// Re-exported as part of the harness; a test binary that uses none of a part is no error.
#[allow(unused_imports)]
pub use kubectl::*;
#[allow(unused_imports)]
pub use replica::*;

use std::future::Future;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use vecodex_operator::crd;

pub const MAX_REPLICAS: i32 = 50;

pub struct Cluster {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static OPERATOR: OnceLock<()> = OnceLock::new();
/// The logs of every [`Replica`] this test binary started, for the summary of a timeout.
static REPLICA_LOGS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The control plane of this test binary: `VECODEX_TEST_KUBECONFIG` if set (a cluster you
/// started yourself, with `VECODEX_K8S_AUDIT=1` for the tests that read its audit log), else a new one from `deploy/local/cluster.sh up` that goes down when
/// this process exits.
pub fn cluster() -> &'static Cluster {
    audit::mark_start();
    CLUSTER.get_or_init(|| {
        let cluster = if let Ok(kc) = std::env::var("VECODEX_TEST_KUBECONFIG") {
            let kubeconfig = PathBuf::from(kc);
            Cluster {
                dir: kubeconfig
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_default(),
                kubeconfig,
            }
        } else {
            start_cluster()
        };
        // The CRD is installed once, by a thread of its own: tests run on their own runtimes.
        let kubeconfig = cluster.kubeconfig.clone();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(install_crd(&kubeconfig))
        })
        .join()
        .expect("CRD install thread");
        cluster
    })
}

fn start_cluster() -> Cluster {
    let script = repo_root().join("deploy/local/cluster.sh");
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(&script)
        .args(["up", "--owner-pid", &std::process::id().to_string()])
        // The audit log: the tests' witness of what the replicas wrote (see `audit`).
        .env("VECODEX_K8S_AUDIT", "1")
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "`{} up` failed ({}); run `deploy/local/cluster.sh install` (needs root, apt and about 7 minutes the first time) or see its log above",
        script.display(),
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("cluster.sh up prints its run dir")
            .trim(),
    );
    eprintln!(
        "control plane up in {:?} at {}",
        started.elapsed(),
        dir.display()
    );
    Cluster {
        kubeconfig: dir.join("kubeconfig"),
        dir,
    }
}

pub async fn client() -> Client {
    let kubeconfig = Kubeconfig::read_from(&cluster().kubeconfig).expect("kubeconfig readable");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig valid");
    Client::try_from(config).expect("client")
}

async fn install_crd(kubeconfig: &Path) {
    let kc = Kubeconfig::read_from(kubeconfig).expect("kubeconfig readable");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig valid");
    let client = Client::try_from(config).expect("client");
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    crds.patch(
        "vecodexsets.apps.vecodex.link",
        &PatchParams::apply("vecodex-tests").force(),
        &Patch::Apply(crd::crd()),
    )
    .await
    .expect("the CRD installs on the API server");
    wait_for("CRD established", Duration::from_secs(30), || async {
        let crd = crds.get("vecodexsets.apps.vecodex.link").await.ok()?;
        crd.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
            .then_some(())
    })
    .await;
}

/// Starts the operator binary once for this test binary (all namespaces), logging to
/// `<cluster dir>/operator-<pid>.log`.
pub fn operator() {
    OPERATOR.get_or_init(|| {
        let log = operator_log_path();
        let child = spawn_operator(&cluster().kubeconfig, &log, &[]);
        eprintln!("operator pid {} logs to {}", child.id(), log.display());
        // Keep the handle alive for the life of the process.
        std::mem::forget(child);
    });
}

/// Spawns `vecodex-operator run` from a thread that never exits: PR_SET_PDEATHSIG fires when
/// the spawning *thread* ends, and test threads end with their test.
pub fn spawn_operator(kubeconfig: &Path, log: &Path, extra_args: &[&str]) -> Child {
    spawn_operator_with_env(kubeconfig, log, extra_args, &[])
}

/// [`spawn_operator`] with extra environment variables.
pub fn spawn_operator_with_env(
    kubeconfig: &Path,
    log: &Path,
    extra_args: &[&str],
    env: &[(&str, &str)],
) -> Child {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let kubeconfig = kubeconfig.to_path_buf();
    let log = log.to_path_buf();
    let mut args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
    if !args.iter().any(|a| a == "--metrics-addr") {
        args.extend(["--metrics-addr".to_owned(), "127.0.0.1:0".to_owned()]);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut cmd = shared::operator_command(
            Path::new(env!("CARGO_BIN_EXE_vecodex-operator")),
            &kubeconfig,
            &log,
        )
        .expect("operator log file");
        cmd.args([
            "--max-replicas",
            &MAX_REPLICAS.to_string(),
            "--log-level",
            "info,vecodex_operator=debug",
        ])
        .args(&args)
        .envs(env);
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to signal the child
        // when this thread's process goes away.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        tx.send(cmd.spawn().expect("spawn vecodex-operator"))
            .expect("send child");
        loop {
            std::thread::park();
        }
    });
    rx.recv().expect("operator spawned")
}

/// Creates a fresh namespace for one test.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    let name = format!("{prefix}-{}", std::process::id() % 100_000);
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("create namespace {name}: {e}"),
    }
    name
}

/// Polls `check` until it returns `Some`, or panics naming `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!(
                "timed out after {timeout:?} waiting for {what}{}",
                logs_summary()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The seed example as a JSON value with its namespace and name replaced, and an Ingress
/// host of its own (`<name>.<namespace>.vecodex.test`): a host belongs to one set, and the
/// seed's `search.vecodex.link` to the first set that asks for it.
pub fn seed_example(namespace: &str, name: &str) -> serde_json::Value {
    let yaml = std::fs::read_to_string(repo_root().join("deploy/samples/vecodexset-example.yaml"))
        .unwrap();
    let mut v: serde_json::Value = serde_saphyr::from_str(&yaml).expect("seed example parses");
    v["metadata"]["namespace"] = namespace.into();
    v["metadata"]["name"] = name.into();
    v["spec"]["ingress"]["host"] = seed_host(namespace, name).into();
    v
}

/// The Ingress host of [`seed_example`]`(namespace, name)`.
pub fn seed_host(namespace: &str, name: &str) -> String {
    format!("{name}.{namespace}.vecodex.test")
}

/// Sums `apiserver_request_total` for write verbs on the resources the operator writes.
pub async fn write_requests(client: &Client) -> std::collections::BTreeMap<String, f64> {
    let req = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(req).await.expect("apiserver /metrics");
    shared::apiserver_requests(&text)
        .into_iter()
        .filter(|(key, _)| {
            let resource = key.split_once(' ').map_or("", |(_, r)| r);
            // The deployment controller keeps writing deployments/status without a kubelet.
            // Events are counted by their reporting controller instead (other components
            // write them too).
            shared::is_write(key)
                && matches!(
                    resource.split('/').next(),
                    Some("deployments" | "services" | "configmaps" | "ingresses" | "vecodexsets")
                )
                && resource != "deployments/status"
        })
        .collect()
}

/// For a failure message: the warnings, errors, panics and shard changes of the shared
/// operator (the last 40, if this test binary started it) and of every replica it started
/// (the last 20 each).
fn logs_summary() -> String {
    // Warnings, errors, panics and shard changes: what a timed-out wait usually turns on.
    let notable = |log: &str, last: usize| {
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| {
                l.contains(" WARN ")
                    || l.contains(" ERROR ")
                    || l.contains("panicked")
                    || (l.contains("shard") && !l.contains("reconcile{"))
            })
            .collect();
        lines[lines.len().saturating_sub(last)..].join("\n")
    };
    let mut summary = String::new();
    if OPERATOR.get().is_some() {
        summary += &format!(
            "\nshared operator's log (warnings, errors, shards; last 40):\n{}",
            notable(&operator_log(), 40)
        );
    }
    let replicas = REPLICA_LOGS.lock().map(|l| l.clone()).unwrap_or_default();
    for log in replicas {
        summary += &format!(
            "\n{} (warnings, errors, shards; last 20):\n{}",
            log.display(),
            notable(&std::fs::read_to_string(&log).unwrap_or_default(), 20)
        );
    }
    summary
}

/// Where the operator process of this test binary logs.
fn operator_log_path() -> PathBuf {
    cluster()
        .dir
        .join(format!("operator-{}.log", std::process::id()))
}

/// The operator log of this test binary.
pub fn operator_log() -> String {
    std::fs::read_to_string(operator_log_path()).unwrap_or_default()
}

/// Fetches the operator's /metrics (its address is in its log).
pub async fn operator_metrics() -> String {
    replica_http(&operator_log_path(), "/metrics").expect("the operator serves /metrics")
}

/// A command-line tool of the tests: from `deploy/local/tools.sh`'s cache, else from PATH.
pub fn tool(name: &str) -> PathBuf {
    let cached = PathBuf::from(std::env::var("HOME").unwrap_or_default())
        .join(".cache/vecodex-operator/tools/bin")
        .join(name);
    if cached.exists() {
        return cached;
    }
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} not found: run deploy/local/tools.sh"))
}

/// The address of a replica's metrics listener, from its log.
pub fn metrics_addr(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .find(|l| l.contains("serving /metrics"))
        .and_then(|l| l.split("addr=").nth(1))
        .map(|a| a.split_whitespace().next().unwrap_or("").to_owned())
}

/// Fetches `path` from a replica's metrics listener (its address is in its log).
pub fn replica_http(log: &Path, path: &str) -> Option<String> {
    let addr = metrics_addr(log)?;
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(&addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    Some(body)
}

/// The value of an unlabelled (or exactly labelled) sample in Prometheus text.
pub fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| {
            l.strip_prefix(name_and_labels)
                .is_some_and(|rest| rest.starts_with(' '))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}
