//! The Helm chart, the plain manifests and the Dockerfile: lint, render, install, upgrade and
//! uninstall on the real control plane, and least-privilege RBAC proven by running the
//! operator with the chart's ServiceAccount token.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{RELEASE_NS, client, repo_root, seed_example, tool, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::json;
use vecodex_operator::crd::VecodexSet;

const WAIT: Duration = Duration::from_secs(30);

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("command runs")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn chart() -> PathBuf {
    repo_root().join("chart/vecodex-operator")
}

fn helm(kubeconfig: Option<&Path>) -> Command {
    let mut c = Command::new(tool("helm"));
    if let Some(k) = kubeconfig {
        c.env("KUBECONFIG", k);
    }
    c
}

#[test]
fn chart_lints_renders_and_matches_the_plain_manifests() {
    ok(&run(helm(None).args(["lint", "--strict"]).arg(chart())));
    ok(&run(helm(None)
        .args(["lint", "--strict", "-f"])
        .arg(chart().join("ci/full-values.yaml"))
        .arg(chart())));
    let wrong = run(helm(None)
        .args(["lint", "--strict", "--set", "replicaCount=three"])
        .arg(chart()));
    assert!(!wrong.status.success(), "a string replicaCount is rejected");
    assert!(
        String::from_utf8_lossy(&wrong.stdout).contains("replicaCount"),
        "the error names the value"
    );

    let rendered = ok(&run(Command::new("bash")
        .arg(repo_root().join("deploy/render.sh"))
        .env("HELM", tool("helm"))));
    let on_disk = std::fs::read_to_string(repo_root().join("deploy/operator.yaml")).unwrap();
    assert!(
        rendered == on_disk,
        "deploy/operator.yaml differs from the chart; regenerate: deploy/render.sh > deploy/operator.yaml"
    );

    // The hardened pod, as rendered.
    for needle in [
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "allowPrivilegeEscalation: false",
        "drop: [\"ALL\"]",
        "type: RuntimeDefault",
        "path: /healthz",
        "path: /readyz",
        "terminationGracePeriodSeconds: 30",
        "topologyKey: kubernetes.io/hostname",
        "kind: PodDisruptionBudget",
        "automountServiceAccountToken: false",
    ] {
        assert!(on_disk.contains(needle), "rendered chart has {needle:?}");
    }
    for forbidden in ["secrets", "pods", "nodes", "\"*\""] {
        assert!(
            !on_disk.contains(&format!("\"{forbidden}\""))
                && !on_disk.contains(&format!("- {forbidden}\n")),
            "no RBAC on {forbidden}"
        );
    }

    // The Dockerfile passes hadolint.
    ok(&run(
        Command::new(tool("hadolint")).arg(repo_root().join("Dockerfile"))
    ));
}

/// Checks of checkov's Kubernetes framework that the children of a set fail by design, with
/// why (the README lists them too).
const CHILDREN_SKIPS: [(&str, &str); 4] = [
    (
        "CKV_K8S_14",
        "the image and its tag are the set's own spec; --allowed-image-prefixes narrows them",
    ),
    ("CKV_K8S_43", "a digest is the set's choice, as above"),
    (
        "CKV_K8S_22",
        "Vecodex writes index segments to its filesystem, and no layout of writable paths is documented for it",
    ),
    (
        "CKV2_K8S_6",
        "network isolation between tenants is the namespace's NetworkPolicy, which the platform owns",
    ),
];

/// Runs checkov's Kubernetes checks on `dir`, skipping `skips`; panics naming every failed
/// check. Returns how many passed.
fn checkov(dir: &Path, skips: &[&str]) -> u64 {
    let mut cmd = Command::new(tool("checkov"));
    cmd.args([
        "--framework",
        "kubernetes",
        "--quiet",
        "--compact",
        "-o",
        "json",
        "-d",
    ])
    .arg(dir);
    if !skips.is_empty() {
        cmd.args(["--skip-check", &skips.join(",")]);
    }
    let out = run(&mut cmd);
    let text = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "checkov's JSON report ({e}): {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let failed: Vec<String> = report["results"]["failed_checks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| format!("{} on {}", c["check_id"], c["resource"]))
        .collect();
    assert!(
        failed.is_empty(),
        "checkov on {}: {failed:#?}",
        dir.display()
    );
    let passed = report["summary"]["passed"].as_u64().unwrap_or(0);
    assert!(
        passed > 0,
        "checkov checked something in {}: {text}",
        dir.display()
    );
    passed
}

/// checkov passes the chart rendered with its defaults and with every value set (its
/// suppressions are annotations on the Deployment), and the children the operator builds for
/// the samples and for a set using every optional field (with the skips of
/// [`CHILDREN_SKIPS`]).
#[test]
fn checkov_passes_both_renderings_and_the_children() {
    let dir = std::env::temp_dir().join(format!("vecodex-checkov-{}", std::process::id()));
    let (charts, children) = (dir.join("chart"), dir.join("children"));
    std::fs::create_dir_all(&charts).unwrap();
    std::fs::create_dir_all(&children).unwrap();
    let defaults = ok(&run(helm(None)
        .args(["template", "vecodex-operator", "--namespace", RELEASE_NS])
        .arg(chart())));
    std::fs::write(charts.join("defaults.yaml"), defaults).unwrap();
    let full = ok(&run(helm(None)
        .args([
            "template",
            "vecodex-operator",
            "--namespace",
            RELEASE_NS,
            "-f",
        ])
        .arg(chart().join("ci/full-values.yaml"))
        .arg(chart())));
    std::fs::write(charts.join("full-values.yaml"), full).unwrap();

    let mut sets: Vec<serde_json::Value> = ["vecodexset-example.yaml", "vecodexset-gpu.yaml"]
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(repo_root().join("deploy/samples").join(f)).unwrap();
            serde_saphyr::from_str(&text).unwrap()
        })
        .collect();
    let mut every_field = seed_example("tenant-7", "every-field");
    every_field["spec"]["searcher"]["config"] = json!({"indexes": []});
    every_field["spec"]["writer"]["securityContext"] =
        json!({"runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001});
    every_field["spec"]["coordinator"]["env"] = json!([{"name": "LOG", "value": "info"}]);
    every_field["spec"]["ingress"]["tlsSecretName"] = json!("every-field-tls");
    sets.push(every_field);
    let mut written = 0;
    for (i, mut set) in sets.into_iter().enumerate() {
        set["metadata"]["namespace"] = json!("tenant-7");
        set["metadata"]["uid"] = json!(format!("uid-{i}"));
        let set: VecodexSet = serde_json::from_value(set).unwrap();
        let built = vecodex_operator::children::build(&set).unwrap();
        let objects: Vec<serde_json::Value> = built
            .deployments
            .iter()
            .map(|o| serde_json::to_value(o).unwrap())
            .chain(
                built
                    .services
                    .iter()
                    .map(|o| serde_json::to_value(o).unwrap()),
            )
            .chain(
                built
                    .config_maps
                    .iter()
                    .map(|o| serde_json::to_value(o).unwrap()),
            )
            .chain(
                built
                    .ingress
                    .iter()
                    .map(|o| serde_json::to_value(o).unwrap()),
            )
            .collect();
        for o in objects {
            written += 1;
            std::fs::write(children.join(format!("{written}.json")), o.to_string()).unwrap();
        }
    }
    checkov(&charts, &[]);
    let skips: Vec<&str> = CHILDREN_SKIPS.iter().map(|(id, _)| *id).collect();
    let passed = checkov(&children, &skips);
    eprintln!("checkov: {written} children, {passed} checks passed");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The FlowSchema the chart makes for the operator's Lease requests, as the v1.20 API server
/// serves it.
const LEASE_FLOW_SCHEMA: &str = "vecodex-operator-vecodex-system-leases";

fn flow_schemas(client: &kube::Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("flowcontrol.apiserver.k8s.io", "v1beta1", "FlowSchema");
    Api::all_with(client.clone(), &ApiResource::from_gvk(&gvk))
}

/// `apiserver_flowcontrol_dispatched_requests_total` by (flow schema, priority level), from the
/// API server's own /metrics.
async fn dispatched(client: &kube::Client) -> HashMap<(String, String), f64> {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client
        .request_text(request)
        .await
        .expect("the API server's /metrics");
    let mut out = HashMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_flowcontrol_dispatched_requests_total{"))
    {
        let Some((labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(&format!("{name}=\""))
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or_default()
                .to_owned()
        };
        let value: f64 = value.parse().expect("a sample value");
        out.insert((label("flow_schema"), label("priority_level")), value);
    }
    out
}

fn sets(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &ApiResource::erase::<VecodexSet>(&()))
}

#[tokio::test]
async fn chart_installs_upgrades_uninstalls_and_its_rbac_is_enough_and_no_more() {
    let cluster = common::cluster();
    let kubeconfig = cluster.kubeconfig.clone();
    let client = client().await;

    // Install.
    ok(&run(helm(Some(&kubeconfig))
        .args(["install", "vecodex-operator"])
        .arg(chart())
        .args(["--namespace", RELEASE_NS, "--create-namespace"])));
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), RELEASE_NS);
    let d = deployments
        .get("vecodex-operator")
        .await
        .expect("the operator Deployment");
    assert_eq!(d.spec.as_ref().unwrap().replicas, Some(3));
    Api::<ServiceAccount>::namespaced(client.clone(), RELEASE_NS)
        .get("vecodex-operator")
        .await
        .unwrap();
    Api::<Service>::namespaced(client.clone(), RELEASE_NS)
        .get("vecodex-operator-metrics")
        .await
        .unwrap();
    Api::<Role>::namespaced(client.clone(), RELEASE_NS)
        .get("vecodex-operator-leases")
        .await
        .unwrap();
    let cluster_role = Api::<ClusterRole>::all(client.clone())
        .get("vecodex-operator")
        .await
        .unwrap();
    assert!(cluster_role.rules.unwrap().iter().all(|r| {
        r.resources
            .iter()
            .flatten()
            .all(|res| res != "secrets" && res != "pods" && res != "*")
    }));
    // Lease requests of the ServiceAccount go to the leader-election priority level: the
    // FlowSchema is served as v1beta1 (the newest version on v1.20), and it is not dangling.
    let schema = flow_schemas(&client)
        .get(LEASE_FLOW_SCHEMA)
        .await
        .expect("the chart's FlowSchema, as v1beta1");
    assert_eq!(
        schema.data["spec"]["priorityLevelConfiguration"]["name"],
        "leader-election"
    );
    wait_for("the FlowSchema's priority level resolved", WAIT, || async {
        let s = flow_schemas(&client).get(LEASE_FLOW_SCHEMA).await.ok()?;
        s.data["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Dangling" && c["status"] == "False")
            .then_some(())
    })
    .await;

    // RBAC proof: the operator, run outside the cluster with the ServiceAccount's token,
    // does its whole job.
    let sa_kubeconfig = cluster.dir.join("operator-sa.kubeconfig");
    common::operator_token_kubeconfig(&sa_kubeconfig);
    let log = cluster.dir.join("operator-sa.log");
    let before = dispatched(&client).await;
    let mut operator =
        common::spawn_operator(&sa_kubeconfig, &log, &["--lease-namespace", RELEASE_NS]);

    let ns = "rbac-proof";
    let obj: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &obj)
        .await
        .unwrap();
    sets(&client, ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(seed_example(ns, "proof")).unwrap(),
        )
        .await
        .unwrap();
    let lp = ListParams::default().labels("app.kubernetes.io/instance=proof");
    wait_for("children created with the chart's RBAC", WAIT, || async {
        let d = Api::<Deployment>::namespaced(client.clone(), ns)
            .list(&lp)
            .await
            .ok()?
            .items
            .len();
        let s = Api::<Service>::namespaced(client.clone(), ns)
            .list(&lp)
            .await
            .ok()?
            .items
            .len();
        let i = Api::<Ingress>::namespaced(client.clone(), ns)
            .list(&lp)
            .await
            .ok()?
            .items
            .len();
        (d == 3 && s == 3 && i == 1).then_some(())
    })
    .await;
    wait_for("status written", WAIT, || async {
        let v = serde_json::to_value(sets(&client, ns).get("proof").await.ok()?).ok()?;
        (v["status"]["observedGeneration"] == v["metadata"]["generation"]).then_some(())
    })
    .await;
    // Drift repair (create again), pruning (delete), an invalid spec (Warning Event).
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    services
        .delete("proof-writer", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("a deleted Service recreated", WAIT, || async {
        services.get_opt("proof-writer").await.ok()?.map(|_| ())
    })
    .await;
    sets(&client, ns)
        .patch(
            "proof",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"ingress": null}})),
        )
        .await
        .unwrap();
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), ns);
    wait_for("the Ingress pruned", WAIT, || async {
        ingresses
            .get_opt("proof")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    sets(&client, ns)
        .patch(
            "proof",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"writer": {"image": "Bad Image"}}})),
        )
        .await
        .unwrap();
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    wait_for("a Warning event", WAIT, || async {
        events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("InvalidSpec"))
            .then_some(())
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !text.contains("Forbidden") && !text.contains("code=403"),
        "no request was forbidden:\n{text}"
    );
    // API Priority and Fairness saw the operator's Lease requests under the chart's
    // FlowSchema at the leader-election level, and its other requests under the built-in
    // service-accounts FlowSchema (the controller manager's ServiceAccounts live in kube-system,
    // which has a FlowSchema of its own).
    let after = dispatched(&client).await;
    let delta = |schema: &str, level: &str| {
        let key = (schema.to_owned(), level.to_owned());
        after.get(&key).copied().unwrap_or(0.0) - before.get(&key).copied().unwrap_or(0.0)
    };
    let leases = delta(LEASE_FLOW_SCHEMA, "leader-election");
    let others = delta("service-accounts", "workload-low");
    assert!(
        leases > 0.0 && others > 0.0,
        "dispatched: {leases} Lease requests at leader-election, {others} other requests at workload-low; all: {after:?}"
    );
    common::shared::signal(&operator, libc::SIGTERM);
    let _ = operator.wait();

    // ... and nothing more: no secrets, pods or nodes, and nothing beyond the chart's rules.
    let sa = format!("system:serviceaccount:{RELEASE_NS}:vecodex-operator");
    let can_i = |args: &[&str]| {
        run(Command::new("kubectl")
            .args([
                "--kubeconfig",
                kubeconfig.to_str().unwrap(),
                "auth",
                "can-i",
                "--as",
                &sa,
            ])
            .args(args))
    };
    for (verb, resource) in [
        ("get", "secrets"),
        ("list", "pods"),
        ("get", "nodes"),
        ("delete", "vecodexsets.apps.vecodex.link"),
        ("create", "leases.coordination.k8s.io"),
    ] {
        let out = can_i(&[verb, resource, "-n", ns]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "no",
            "{verb} {resource} outside the operator's needs"
        );
    }
    let list = ok(&can_i(&["--list", "-n", ns]));
    let allowed = [
        "vecodexsets.apps.vecodex.link",
        "vecodexsets.apps.vecodex.link/status",
        "vecodexsets.apps.vecodex.link/finalizers",
        "deployments.apps",
        "services",
        "configmaps",
        "ingresses.networking.k8s.io",
        "events.events.k8s.io",
        // Every authenticated user may review its own access.
        "selfsubjectaccessreviews.authorization.k8s.io",
        "selfsubjectrulesreviews.authorization.k8s.io",
    ];
    for line in list.lines().skip(1) {
        let resource = line.split_whitespace().next().unwrap_or("");
        if resource.is_empty() || line.contains("[/") {
            continue; // non-resource URLs (/healthz, /version, ...) every user has
        }
        assert!(allowed.contains(&resource), "unexpected permission: {line}");
    }
    let leases_list = ok(&can_i(&["--list", "-n", RELEASE_NS]));
    assert!(
        leases_list.contains("leases.coordination.k8s.io"),
        "Leases in the operator's namespace:\n{leases_list}"
    );

    // Upgrade: replicas and shards change.
    ok(&run(helm(Some(&kubeconfig))
        .args(["upgrade", "vecodex-operator"])
        .arg(chart())
        .args([
            "--namespace",
            RELEASE_NS,
            "--set",
            "replicaCount=5",
            "--set",
            "sharding.shards=8",
        ])));
    let d = deployments.get("vecodex-operator").await.unwrap();
    assert_eq!(d.spec.as_ref().unwrap().replicas, Some(5));
    let args = d.spec.unwrap().template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    assert!(args.contains(&"--shards=8".to_owned()), "{args:?}");

    // Uninstall removes what install created.
    ok(&run(helm(Some(&kubeconfig)).args([
        "uninstall",
        "vecodex-operator",
        "--namespace",
        RELEASE_NS,
    ])));
    wait_for("the chart's objects removed", WAIT, || async {
        let gone = deployments
            .get_opt("vecodex-operator")
            .await
            .ok()?
            .is_none()
            && Api::<ClusterRole>::all(client.clone())
                .get_opt("vecodex-operator")
                .await
                .ok()?
                .is_none()
            && Api::<ServiceAccount>::namespaced(client.clone(), RELEASE_NS)
                .get_opt("vecodex-operator")
                .await
                .ok()?
                .is_none()
            && flow_schemas(&client)
                .get_opt(LEASE_FLOW_SCHEMA)
                .await
                .ok()?
                .is_none();
        gone.then_some(())
    })
    .await;
}
