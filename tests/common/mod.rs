//! Shared harness of the integration tests: one real control plane per test binary (started
//! through `deploy/local/cluster.sh`), the CRD installed once, one operator process, and a
//! namespace per test.
// Each test binary uses a part of this harness, so the dead-code lint is off here;
// tests/harness.rs fails on a helper that no test uses.
#![allow(dead_code)]

pub mod audit;
pub mod fleet;
pub mod proxy;
#[path = "../../loadtest/shared.rs"]
pub mod shared;

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

/// The shard of a namespace under the default hash with `shards` shards, as the replicas
/// the tests start compute it.
pub fn shard_of(namespace: &str, shards: u32) -> u32 {
    vecodex_operator::shard::Scheme::new(Default::default(), shards).shard_of(namespace)
}

/// One operator process of an HA test.
pub struct Replica {
    pub identity: String,
    pub child: Child,
    pub log: PathBuf,
}

/// Lease timings of the HA tests (shorter than the defaults, same proportions).
pub const LEASE_DURATION_S: u64 = 6;
pub const RETRY_PERIOD_S: u64 = 1;

/// How soon after a replica dies (or is cut off) the others must hold its shards: the load
/// test's failover bar, lease duration + 5 s. What it covers: they observe its last renewal
/// up to a retry period late, wait out the lease, then write the Leases (and may hand one
/// over to balance) on a 2-core machine that also runs the control plane, where lease +
/// retry + 2 s is too tight.
pub fn failover_bound(lease_duration_s: u64) -> Duration {
    Duration::from_secs(lease_duration_s + 5)
}

/// How to start a [`Replica`]: its kubeconfig, Lease namespace, timings and extra flags.
#[derive(Clone)]
pub struct ReplicaOptions {
    pub kubeconfig: PathBuf,
    pub lease_namespace: String,
    pub lease_duration_s: u64,
    pub renew_deadline_s: u64,
    pub retry_period_s: u64,
    pub extra_args: Vec<String>,
}

impl Default for ReplicaOptions {
    fn default() -> Self {
        ReplicaOptions {
            kubeconfig: cluster().kubeconfig.clone(),
            lease_namespace: "default".to_owned(),
            lease_duration_s: LEASE_DURATION_S,
            renew_deadline_s: 4,
            retry_period_s: RETRY_PERIOD_S,
            extra_args: Vec::new(),
        }
    }
}

impl Replica {
    /// Starts `vecodex-operator run` as `identity` in lease group `group` with `shards`.
    pub fn start(identity: &str, group: &str, shards: u32) -> Replica {
        Replica::start_with(identity, group, shards, &ReplicaOptions::default())
    }

    /// [`Replica::start`] with a kubeconfig, Lease namespace, timings and flags of its own.
    pub fn start_with(identity: &str, group: &str, shards: u32, opts: &ReplicaOptions) -> Replica {
        let cluster = cluster();
        let log = cluster.dir.join(format!("{group}-{identity}.log"));
        let mut args = shared::replica_flags(
            identity,
            shards,
            Duration::from_secs(opts.lease_duration_s),
            Duration::from_secs(opts.renew_deadline_s),
            Duration::from_secs(opts.retry_period_s),
        );
        args.extend(
            [
                "--lease-group",
                group,
                "--lease-namespace",
                &opts.lease_namespace,
            ]
            .map(str::to_owned),
        );
        args.extend(opts.extra_args.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = spawn_operator(&opts.kubeconfig, &log, &args);
        if let Ok(mut logs) = REPLICA_LOGS.lock()
            && !logs.contains(&log)
        {
            logs.push(log.clone());
        }
        Replica {
            identity: identity.to_owned(),
            child,
            log,
        }
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The holder of each shard Lease of `group` (None: missing or released).
pub async fn shard_holders(client: &Client, group: &str, shards: u32) -> Vec<Option<String>> {
    shard_holders_in(client, "default", group, shards).await
}

/// [`shard_holders`] of Leases in `namespace`.
pub async fn shard_holders_in(
    client: &Client,
    namespace: &str,
    group: &str,
    shards: u32,
) -> Vec<Option<String>> {
    use k8s_openapi::api::coordination::v1::Lease;
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let mut out = Vec::new();
    for shard in 0..shards {
        let name = vecodex_operator::shard::shard_lease_name(group, shard, shards);
        let holder = leases
            .get_opt(&name)
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec?.holder_identity)
            .filter(|h| !h.is_empty());
        out.push(holder);
    }
    out
}

/// `Some` once every shard Lease of `group` (in `lease_ns`, `loads.len()` shards) is held by
/// one of `ids`, each holds at least one, and the holders are what every replica computes
/// from them for these sets per shard: the fleet has settled.
pub async fn settled_in(
    client: &Client,
    lease_ns: &str,
    group: &str,
    ids: &[&str],
    loads: &[u64],
) -> Option<()> {
    let holders = shard_holders_in(client, lease_ns, group, loads.len() as u32).await;
    let members: Vec<String> = ids.iter().map(|r| r.to_string()).collect();
    let each = ids
        .iter()
        .all(|id| holders.iter().any(|h| h.as_deref() == Some(*id)));
    let all = holders
        .iter()
        .all(|h| h.as_deref().is_some_and(|h| ids.contains(&h)));
    let kept = vecodex_operator::shard::assign::assign(&members, loads, &holders)
        .into_iter()
        .map(Some)
        .eq(holders.iter().cloned());
    (each && all && kept).then_some(())
}

/// `kubectl ARGS` against this binary's cluster.
pub fn kubectl<I, S>(args: I) -> std::process::Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&cluster().kubeconfig)
        .args(args)
        .output()
        .expect("kubectl is installed (tests/run.sh installs it)")
}

/// `kubectl apply -f <repo file>` against this binary's cluster; panics with kubectl's error.
pub fn kubectl_apply(repo_file: &str) {
    let file = repo_root().join(repo_file);
    let out = kubectl([
        std::ffi::OsStr::new("apply"),
        "-f".as_ref(),
        file.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "kubectl apply -f {repo_file}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Namespace of the chart's ServiceAccount, RBAC and Leases.
pub const RELEASE_NS: &str = "vecodex-system";

/// A kubeconfig that authenticates with `token` against the API server of `admin`.
pub fn token_kubeconfig(admin: &Path, token: &str, out: &Path) {
    let text = std::fs::read_to_string(admin).unwrap();
    let field = |key: &str| -> String {
        text.lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(&format!("{key}:"))
                    .map(|v| v.trim().trim_matches('"').to_owned())
            })
            .unwrap_or_else(|| panic!("{key} in the admin kubeconfig"))
    };
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {}\n    certificate-authority-data: {}\nusers:\n- name: operator\n  user:\n    token: {}\ncontexts:\n- name: operator\n  context:\n    cluster: local\n    user: operator\ncurrent-context: operator\n",
        field("server"),
        field("certificate-authority-data"),
        token
    );
    std::fs::write(out, config).unwrap();
}

static SA_KUBECONFIG: OnceLock<PathBuf> = OnceLock::new();

/// `kubectl apply -f -` of `manifest` on the test cluster, as its admin.
pub fn kubectl_apply_stdin(manifest: &str) {
    use std::io::Write;
    let mut apply = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&cluster().kubeconfig)
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl is installed (tests/run.sh installs it)");
    apply
        .stdin
        .take()
        .unwrap()
        .write_all(manifest.as_bytes())
        .unwrap();
    let out = apply.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A kubeconfig for the chart's least-privilege ServiceAccount: the ServiceAccount, the
/// ClusterRole, the Lease Role and their bindings exactly as `deploy/operator.yaml` (the
/// rendered chart) has them, and a token from the TokenRequest API. Operators run with it
/// must use `--lease-namespace` [`RELEASE_NS`].
pub fn sa_kubeconfig() -> &'static Path {
    SA_KUBECONFIG.get_or_init(|| {
        let cluster = cluster();
        let manifest = std::fs::read_to_string(repo_root().join("deploy/operator.yaml")).unwrap();
        // Only the identity and its RBAC: the v1.20 API server has no policy/v1, and the
        // operator's own Deployment would never run without a kubelet anyway.
        let wanted = [
            "kind: Namespace",
            "kind: ServiceAccount",
            "kind: ClusterRole",
            "kind: ClusterRoleBinding",
            "kind: Role",
            "kind: RoleBinding",
        ];
        let docs: Vec<&str> = manifest
            .split("\n---")
            .filter(|d| d.lines().any(|l| wanted.contains(&l.trim())))
            .collect();
        assert!(docs.len() >= 6, "deploy/operator.yaml has the RBAC objects");
        kubectl_apply_stdin(&docs.join("\n---\n"));
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&cluster.kubeconfig)
            .args([
                "-n",
                RELEASE_NS,
                "create",
                "token",
                "vecodex-operator",
                "--duration",
                "2h",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl create token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let path = cluster
            .dir
            .join(format!("operator-sa-{}.kubeconfig", std::process::id()));
        token_kubeconfig(&cluster.kubeconfig, &token, &path);
        path
    })
}

/// [`ReplicaOptions`] for the chart's ServiceAccount (Leases in [`RELEASE_NS`]).
pub fn sa_replica_options() -> ReplicaOptions {
    ReplicaOptions {
        kubeconfig: sa_kubeconfig().to_path_buf(),
        lease_namespace: RELEASE_NS.to_owned(),
        ..ReplicaOptions::default()
    }
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
