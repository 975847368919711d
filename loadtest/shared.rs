//! What the load test and the integration tests share (the tests include this file with
//! `#[path]`): an operator replica (its process, how it is started), reading the API server's request counters,
//! starting the rotel collector, and free local ports.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// `apiserver_request_total` from the API server's `/metrics` text, summed by
/// `"VERB resource"` or `"VERB resource/subresource"`.
pub fn apiserver_requests(metrics: &str) -> BTreeMap<String, f64> {
    let mut by_kind = BTreeMap::new();
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let label = |name: &str| {
            line.split(&format!("{name}=\""))
                .nth(1)
                .and_then(|s| s.split('"').next())
                .unwrap_or("")
                .to_owned()
        };
        let (resource, sub) = (label("resource"), label("subresource"));
        let key = if sub.is_empty() {
            format!("{} {resource}", label("verb"))
        } else {
            format!("{} {resource}/{sub}", label("verb"))
        };
        let n = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        *by_kind.entry(key).or_insert(0.0) += n;
    }
    by_kind
}

/// Whether a `"VERB resource[/sub]"` key of [`apiserver_requests`] is a write.
pub fn is_write(key: &str) -> bool {
    matches!(
        key.split(' ').next(),
        Some("POST" | "PUT" | "PATCH" | "DELETE" | "APPLY" | "CREATE" | "UPDATE")
    )
}

/// The `rotel-agent` binary: the tools cache of `deploy/local/tools.sh`, else `PATH`.
pub fn rotel_agent() -> Option<PathBuf> {
    let cached = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/vecodex-operator/tools/bin/rotel-agent"))
        .filter(|p| p.exists());
    cached.or_else(|| {
        std::env::var("PATH")
            .unwrap_or_default()
            .split(':')
            .map(|d| PathBuf::from(d).join("rotel-agent"))
            .find(|p| p.exists())
    })
}

/// A `rotel-agent start` command: OTLP over gRPC on `grpc` (and HTTP on `http`), spans
/// printed at `verbosity` (`basic` or `detailed`) and otherwise dropped; its pid file and
/// own log in `dir`.
pub fn rotel_command(agent: &Path, grpc: u16, http: u16, verbosity: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(agent);
    cmd.args(["start", "--otlp-grpc-endpoint"])
        .arg(format!("127.0.0.1:{grpc}"))
        .arg("--otlp-http-endpoint")
        .arg(format!("127.0.0.1:{http}"))
        .args(["--exporter", "blackhole", "--debug-log", "traces"])
        .args(["--debug-log-verbosity", verbosity])
        .arg("--pid-file")
        .arg(dir.join(format!("rotel-{grpc}.pid")))
        .arg("--log-file")
        .arg(dir.join(format!("rotel-{grpc}.log")));
    cmd
}

/// Waits up to 5 s until something listens on 127.0.0.1:`port`.
pub fn wait_listening(port: u16) {
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `vecodex-operator run` against `kubeconfig`, logging to `log` (stdout and stderr), with no
/// log filter or trace endpoint inherited from this process; callers add their flags.
pub fn operator_command(bin: &Path, kubeconfig: &Path, log: &Path) -> std::io::Result<Command> {
    let file = std::fs::File::create(log)?;
    let mut cmd = Command::new(bin);
    cmd.arg("run")
        .env("KUBECONFIG", kubeconfig)
        .env_remove("RUST_LOG")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    Ok(cmd)
}

/// One operator process of a test or the load test: who it is, the process and its log. Each
/// side starts it its own way (`tests/common/replica.rs`, `loadtest/cluster.rs`), both through
/// [`operator_command`] and [`replica_flags`].
pub struct Replica {
    pub identity: String,
    pub child: std::process::Child,
    pub log: PathBuf,
    /// Where it serves `/metrics`, when its starter chose the port.
    pub metrics_port: Option<u16>,
}

/// Sends `signal` (`libc::SIGTERM`, `libc::SIGKILL`, ...) to `child`. A child that was
/// already reaped is no error (whoever reaped it has its status); any other failure is a bug
/// of the caller, and panics.
pub fn signal(child: &std::process::Child, signal: i32) {
    // SAFETY: kill(2) takes two integers and touches no memory of this process.
    if unsafe { libc::kill(child.id() as i32, signal) } != 0 {
        let e = std::io::Error::last_os_error();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::ESRCH),
            "signal {signal} to {}: {e}",
            child.id()
        );
    }
}

impl Replica {
    /// Sends `signal` (see [`signal`]).
    pub fn signal(&self, signal: i32) {
        self::signal(&self.child, signal);
    }

    /// Sends `signal` and waits for the process to end.
    pub fn stop(&mut self, signal: i32) {
        self.signal(signal);
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The flags of a replica `identity` with `shards` shards and these Lease timings.
pub fn replica_flags(
    identity: &str,
    shards: u32,
    lease: Duration,
    renew_deadline: Duration,
    retry_period: Duration,
) -> Vec<String> {
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    [
        "--identity",
        identity,
        "--shards",
        &shards.to_string(),
        "--lease-duration",
        &ms(lease),
        "--renew-deadline",
        &ms(renew_deadline),
        "--retry-period",
        &ms(retry_period),
    ]
    .map(str::to_owned)
    .to_vec()
}
