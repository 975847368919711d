//! What the operator exposes: `/metrics`, `/healthz`, `/readyz`, its logs (every crate at
//! debug level), the spans it exports (as a real collector received them), its Events and
//! the status messages of its `InvalidSpec` and API-server-rejection paths never show a
//! secret-looking value from a set's spec or metadata, nor the bearer token it authenticates
//! with. The operator runs with the chart's ServiceAccount.

mod common;

use std::time::Duration;

use common::{RELEASE_NS, client, replica_http, sa_kubeconfig, seed_example, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use serde_json::json;
use vecodex_operator::crd::VecodexSet;

/// The collector, stopped however the test ends.
struct Collector(std::process::Child);

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    common::shared::free_port().expect("a free local port")
}

#[tokio::test]
async fn no_secret_or_token_in_metrics_health_or_debug_logs() {
    let cluster = common::cluster();
    let client = client().await;
    let kubeconfig = sa_kubeconfig();
    let token = std::fs::read_to_string(kubeconfig)
        .unwrap()
        .lines()
        .find_map(|l| l.trim().strip_prefix("token:").map(|t| t.trim().to_owned()))
        .expect("a token in the ServiceAccount kubeconfig");
    assert!(token.len() > 100, "a real ServiceAccount token");
    let log = cluster.dir.join("security-operator.log");
    // A collector that prints every span it receives, attribute by attribute.
    let grpc = free_port();
    let spans_out = cluster.dir.join("security-spans.log");
    let spans_file = std::fs::File::create(&spans_out).unwrap();
    let agent = common::shared::rotel_agent().expect("rotel-agent (deploy/local/tools.sh)");
    let collector = Collector(
        common::shared::rotel_command(&agent, grpc, free_port(), "detailed", &cluster.dir)
            .stdout(spans_file.try_clone().unwrap())
            .stderr(spans_file)
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("start rotel-agent"),
    );
    common::shared::wait_listening(grpc);
    let endpoint = format!("http://127.0.0.1:{grpc}");
    // Every crate at debug (RUST_LOG wins over --log-level): kube's client, hyper,
    // rustls, the operator.
    let mut operator = common::spawn_operator_with_env(
        kubeconfig,
        &log,
        &["--lease-namespace", RELEASE_NS],
        &[
            ("RUST_LOG", "debug"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ],
    );

    // Secret-looking values in every place a set can carry one.
    let stamp = std::process::id();
    let secrets = [
        format!("env-S3cr3t-{stamp}"),
        format!("annotation-S3cr3t-{stamp}"),
        format!("config-S3cr3t-{stamp}"),
        format!("podannotation-S3cr3t-{stamp}"),
        format!("label-S3cr3t-{stamp}"),
    ];
    let ns = common::namespace(&client, "security").await;
    let mut set = seed_example(&ns, "vault");
    set["metadata"]["annotations"] = json!({"example.com/note": secrets[1]});
    set["metadata"]["labels"] = json!({"example.com/tag": secrets[4]});
    set["spec"]["coordinator"]["env"] = json!([{"name": "DB_PASSWORD", "value": secrets[0]}]);
    set["spec"]["coordinator"]["config"] = json!({"storage": {"password": secrets[2]}});
    set["spec"]["searcher"]["podAnnotations"] = json!({"example.com/key": secrets[3]});
    let sets: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &ApiResource::erase::<VecodexSet>(&()));
    sets.create(
        &PostParams::default(),
        &serde_json::from_value(set).unwrap(),
    )
    .await
    .unwrap();

    // The operator did use the values: they are in the children it wrote.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    wait_for(
        "the coordinator with the secret env value",
        Duration::from_secs(60),
        || async {
            let d = deployments.get("vault-coordinator").await.ok()?;
            serde_json::to_string(&d)
                .ok()?
                .contains(&secrets[0])
                .then_some(())
        },
    )
    .await;
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get("vault-coordinator-config")
        .await
        .unwrap();
    assert!(serde_json::to_string(&cm).unwrap().contains(&secrets[2]));
    // A change (status, Events, diffs) and an invalid spec (its message, Warning Event).
    sets.patch(
        "vault",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"coordinator": {"env": [
            {"name": "DB_PASSWORD", "value": secrets[0]},
            {"name": "DB_PASSWORD", "value": format!("{}-again", secrets[0])}
        ]}}})),
    )
    .await
    .unwrap();
    wait_for("InvalidSpec reported", Duration::from_secs(30), || async {
        let v = serde_json::to_value(sets.get("vault").await.ok()?).ok()?;
        v["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["reason"] == "InvalidSpec")
            .then_some(())
    })
    .await;
    // A change the API server rejects (422: pod annotations over its size limit), with the
    // secrets still in the spec: its message, status and Warning Event.
    sets.patch(
        "vault",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {
            "coordinator": {"env": [{"name": "DB_PASSWORD", "value": secrets[0]}]},
            "writer": {"podAnnotations": {"example.com/blob": "x".repeat(300 * 1024)}},
        }})),
    )
    .await
    .unwrap();
    let rejected = wait_for(
        "the API server's rejection reported",
        Duration::from_secs(30),
        || async {
            let v = serde_json::to_value(sets.get("vault").await.ok()?).ok()?;
            let c = v["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| {
                    c["type"] == "Ready"
                        && c["message"]
                            .as_str()
                            .is_some_and(|m| m.starts_with(vecodex_operator::reconcile::REJECTED))
                })?
                .clone();
            Some(c["message"].as_str().unwrap_or_default().to_owned())
        },
    )
    .await;
    sets.patch(
        "vault",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {
            "coordinator": {"env": [
                {"name": "DB_PASSWORD", "value": format!("{}-rotated", secrets[0])}
            ]},
            "writer": {"podAnnotations": null},
        }})),
    )
    .await
    .unwrap();
    wait_for(
        "the rotated value applied",
        Duration::from_secs(30),
        || async {
            let d = deployments.get("vault-coordinator").await.ok()?;
            serde_json::to_string(&d)
                .ok()?
                .contains("-rotated")
                .then_some(())
        },
    )
    .await;

    let mut exposed = vec![("the rejection's status message".to_owned(), rejected)];
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), &ns)
        .list(&Default::default())
        .await
        .unwrap()
        .items;
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("ApplyFailed")),
        "the rejection's Warning Event"
    );
    let notes: Vec<String> = events.iter().filter_map(|e| e.note.clone()).collect();
    exposed.push(("the Events".to_owned(), notes.join("\n")));
    let status = serde_json::to_string(&sets.get("vault").await.unwrap().data["status"]).unwrap();
    exposed.push(("the set's status".to_owned(), status));
    for path in ["/metrics", "/healthz", "/readyz"] {
        let body = replica_http(&log, path).unwrap_or_else(|| panic!("GET {path}"));
        assert!(body.starts_with("HTTP/1.1 200"), "{path}: {body}");
        exposed.push((path.to_owned(), body));
    }
    assert!(
        exposed
            .iter()
            .any(|(w, b)| w == "/metrics" && b.contains("vecodex_operator_reconciles_total")),
        "/metrics has the operator's metrics"
    );
    // The spans: the collector has received the reconciles of every step above.
    wait_for(
        "the spans of the rotated value",
        Duration::from_secs(15),
        || async {
            let text = std::fs::read_to_string(&spans_out).ok()?;
            (text.matches("reconcile").count() >= 5).then_some(())
        },
    )
    .await;
    operator.kill().unwrap();
    let _ = operator.wait();
    drop(collector);
    let spans = std::fs::read_to_string(&spans_out).unwrap();
    assert!(
        spans.contains("vecodex.set.name"),
        "the collector printed span attributes"
    );
    exposed.push(("the exported spans".to_owned(), spans));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines().filter(|l| l.contains("DEBUG")).count() > 50,
        "the log is at debug level"
    );
    assert!(
        text.contains("vault"),
        "the log names the set (names are fine)"
    );
    exposed.push(("the debug log".to_owned(), text));
    for (what, body) in &exposed {
        for secret in &secrets {
            assert!(!body.contains(secret.as_str()), "{what} shows {secret}");
        }
        assert!(
            !body.contains(&token),
            "{what} shows the ServiceAccount token"
        );
        // Not even a prefix of the token (a JWT's first segment is a fixed header, so the
        // signature, its last segment, is what must never leak).
        let signature = token.rsplit('.').next().unwrap();
        assert!(
            !body.contains(&signature[..24]),
            "{what} shows part of the token"
        );
    }
    eprintln!(
        "{} secret-looking values and the token absent from {}",
        secrets.len(),
        exposed
            .iter()
            .map(|(w, _)| w.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
}
