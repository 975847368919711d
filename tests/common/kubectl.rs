//! kubectl against the test cluster, and the chart's ServiceAccount as an identity to run a
//! replica under.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use super::*;

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
        let path = cluster
            .dir
            .join(format!("operator-sa-{}.kubeconfig", std::process::id()));
        operator_token_kubeconfig(&path);
        path
    })
}

/// Writes at `out` a kubeconfig with a fresh 2-hour token of the chart's ServiceAccount
/// (`vecodex-operator` in [`RELEASE_NS`]), which must exist.
pub fn operator_token_kubeconfig(out: &Path) {
    let cluster = cluster();
    let token = Command::new("kubectl")
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
        token.status.success(),
        "kubectl create token: {}",
        String::from_utf8_lossy(&token.stderr)
    );
    let token = String::from_utf8_lossy(&token.stdout).trim().to_owned();
    token_kubeconfig(&cluster.kubeconfig, &token, out);
}

/// [`ReplicaOptions`] for the chart's ServiceAccount (Leases in [`RELEASE_NS`]).
pub fn sa_replica_options() -> ReplicaOptions {
    ReplicaOptions {
        kubeconfig: sa_kubeconfig().to_path_buf(),
        lease_namespace: RELEASE_NS.to_owned(),
        ..ReplicaOptions::default()
    }
}
