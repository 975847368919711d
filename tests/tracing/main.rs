//! Observability on a real control plane with a real OpenTelemetry collector (rotel-agent):
//! one trace per reconcile with the right attributes and parents, errors marked, export
//! surviving a collector restart, trace ids in logs and Warning Events, `/metrics` parsed,
//! `/healthz` and `/readyz`.

mod collector;
#[path = "../common/mod.rs"]
mod common;

use collector::*;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{client, namespace, seed_example, wait_for};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use serde_json::json;
use vecodex_operator::crd::VecodexSet;

const WAIT: Duration = Duration::from_secs(30);

/// Waits for an Event in `ns` that `matches`, and returns its note.
async fn event_note(
    client: &kube::Client,
    ns: &str,
    what: &str,
    matches: impl Fn(&Event) -> bool,
) -> String {
    wait_for(what, WAIT, || async {
        Api::<Event>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| matches(e))?
            .note
    })
    .await
}

fn sets(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &ApiResource::erase::<VecodexSet>(&()))
}

async fn create(client: &kube::Client, ns: &str, value: serde_json::Value) {
    let obj: DynamicObject = serde_json::from_value(value).unwrap();
    sets(client, ns)
        .create(&PostParams::default(), &obj)
        .await
        .unwrap();
}

fn reconcile_of<'a>(spans: &'a [Span], set: &str, outcome_prefix: &str) -> Option<&'a Span> {
    spans.iter().find(|s| {
        s.name == "reconcile"
            && s.attributes.get("vecodex.set.name").map(String::as_str) == Some(set)
            && s.attributes
                .get("vecodex.outcome")
                .is_some_and(|o| o.starts_with(outcome_prefix))
    })
}

/// Sample name → (labels, value) of every sample.
type Samples = BTreeMap<String, Vec<(String, f64)>>;

/// Parses Prometheus/OpenMetrics text: family name → type, and the samples.
fn parse_metrics(text: &str) -> (BTreeMap<String, String>, Samples) {
    let mut types = BTreeMap::new();
    let mut samples: Samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                types.insert(name.to_owned(), kind.to_owned());
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        // name{labels} value [# exemplar]
        let sample = line.split(" # ").next().unwrap_or(line);
        let (series, value) = sample.rsplit_once(' ').expect("sample has a value");
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n.to_owned(), l.trim_end_matches('}').to_owned()),
            None => (series.to_owned(), String::new()),
        };
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad sample value in {line:?}"));
        samples.entry(name).or_default().push((labels, value));
    }
    (types, samples)
}

fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    // (0, "") while the listener is not up yet.
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return (0, String::new());
    };
    let mut response = String::new();
    if write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .is_err()
        || stream.read_to_string(&mut response).is_err()
    {
        return (0, String::new());
    }
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

#[tokio::test]
async fn reconciles_are_traced_metered_and_survive_a_collector_restart() {
    let cluster = common::cluster();
    let client = client().await;
    let ns = namespace(&client, "traced").await;
    let grpc = free_port();
    let mut collector = Collector::start(grpc, cluster.dir.join("rotel-1.out"));
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let log = cluster.dir.join("traced-operator.log");
    // Our own operator (this binary starts no other), exporting to the collector.
    let endpoint = format!("http://127.0.0.1:{grpc}");
    let mut operator = common::spawn_operator_with_env(
        &cluster.kubeconfig,
        &log,
        &[
            "--metrics-addr",
            &metrics_addr,
            "--instance",
            "op-under-test",
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test"),
        ],
    );
    wait_for("/readyz", WAIT, || async {
        (http_get(&metrics_addr, "/readyz").0 == 200).then_some(())
    })
    .await;
    assert_eq!(http_get(&metrics_addr, "/healthz").0, 200);
    wait_for("the operator to hold every shard", WAIT, || async {
        let (_, samples) = parse_metrics(&http_get(&metrics_addr, "/metrics").1);
        let shards = f64::from(vecodex_operator::shard::DEFAULT_SHARDS);
        (samples.get("vecodex_operator_shards_held")?.first()?.1 == shards).then_some(())
    })
    .await;
    // ... and has listed every shard's children (until then a new set waits for its shard).
    wait_for("every shard's children cached", WAIT, || async {
        let text = std::fs::read_to_string(&log).ok()?;
        let shards = vecodex_operator::shard::DEFAULT_SHARDS as usize;
        (text.matches("shard's children are cached").count() >= shards).then_some(())
    })
    .await;

    // A valid set: one trace, a root `reconcile` span and one client span per API call.
    create(&client, &ns, seed_example(&ns, "traced")).await;
    let (root, spans) = wait_for("the reconcile span of the new set", WAIT, || async {
        let spans = collector.spans();
        let root = reconcile_of(&spans, "traced", "applied")?.clone();
        Some((root, spans))
    })
    .await;
    let a = &root.attributes;
    assert_eq!(a["k8s.namespace.name"], ns);
    assert_eq!(a["vecodex.trigger"], "create");
    assert_eq!(a["vecodex.attempt"], "1");
    for key in [
        "vecodex.set.uid",
        "vecodex.set.generation",
        "vecodex.shard",
        "vecodex.queue_wait_ms",
        "trace_id",
    ] {
        assert!(a.contains_key(key), "reconcile span has {key}: {a:?}");
    }
    assert_eq!(
        a["trace_id"], root.trace_id,
        "the recorded trace id is the span's"
    );
    assert!(
        root.parent_id.is_empty(),
        "reconcile is a root span: {:?}",
        root.parent_id
    );
    let children: Vec<&Span> = spans
        .iter()
        .filter(|s| s.trace_id == root.trace_id && s.parent_id == root.id)
        .collect();
    let applies: BTreeSet<(String, String)> = children
        .iter()
        .filter(|s| s.name.starts_with("PATCH "))
        .map(|s| {
            (
                s.attributes["k8s.resource"].clone(),
                s.attributes["k8s.object.name"].clone(),
            )
        })
        .collect();
    for kind in ["Deployment", "Service"] {
        for c in ["coordinator", "writer", "searcher"] {
            assert!(
                applies.contains(&(kind.to_owned(), format!("traced-{c}"))),
                "apply of {kind} traced-{c} in {applies:?}"
            );
        }
    }
    assert!(applies.contains(&("Ingress".to_owned(), "traced".to_owned())));
    // The status follows in its own trace: the reconcile that created the Deployments asks for
    // a refresh once they settle (STATUS_SETTLE), and that one writes it.
    let refresh = wait_for("the status refresh's trace", WAIT, || async {
        let spans = collector.spans();
        let refresh = spans
            .iter()
            .find(|s| {
                s.name == "reconcile"
                    && s.attributes.get("vecodex.set.name").map(String::as_str) == Some("traced")
                    && s.attributes.get("vecodex.trigger").map(String::as_str)
                        == Some("child status")
                    && s.trace_id != root.trace_id
            })?
            .clone();
        spans
            .iter()
            .any(|s| {
                s.trace_id == refresh.trace_id
                    && s.parent_id == refresh.id
                    && s.attributes.get("k8s.resource").map(String::as_str)
                        == Some("VecodexSet/status")
            })
            .then_some(refresh)
    })
    .await;
    // A new set's first status finishes it, before any other set is started.
    assert_eq!(refresh.attributes["vecodex.priority"], "Finish");
    // A spec change of a set that reported a generation: the reconcile that applies it
    // writes the new observedGeneration in its own trace, without waiting for the
    // Deployment's controller (the user waits on it for the change).
    sets(&client, &ns)
        .patch(
            "traced",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"searcher": {"replicas": 4}}})),
        )
        .await
        .unwrap();
    wait_for(
        "the spec change's reconcile writing the status in its trace",
        WAIT,
        || async {
            let spans = collector.spans();
            let change = spans.iter().find(|s| {
                s.name == "reconcile"
                    && s.attributes.get("vecodex.set.name").map(String::as_str) == Some("traced")
                    && s.attributes.get("vecodex.trigger").map(String::as_str)
                        == Some("spec change")
            })?;
            let in_it = |resource: &str| {
                spans.iter().any(|s| {
                    s.trace_id == change.trace_id
                        && s.parent_id == change.id
                        && s.attributes.get("k8s.resource").map(String::as_str) == Some(resource)
                })
            };
            (in_it("Deployment") && in_it("VecodexSet/status")).then_some(())
        },
    )
    .await;
    assert!(
        children
            .iter()
            .filter(|s| s.name != "event")
            .all(|s| s.kind == "SPAN_KIND_CLIENT"
                && s.attributes.contains_key("http.response.status_code")),
        "every API call is a client span with its status"
    );
    // The Event goes out after the reconcile (off its path), still in its trace: an "event"
    // span under the reconcile, the POST under that.
    wait_for(
        "the Normal event's POST in the reconcile's trace",
        WAIT,
        || async {
            let spans = collector.spans();
            let event = spans
                .iter()
                .find(|s| s.name == "event" && s.parent_id == root.id)?;
            spans
                .iter()
                .any(|s| {
                    s.name == "POST Event" && s.trace_id == root.trace_id && s.parent_id == event.id
                })
                .then_some(())
        },
    )
    .await;

    // The reconcile's log lines carry its trace id.
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.lines().any(|l| l.contains("reconciled") && l.contains(&format!("trace_id={}", root.trace_id))), "log lines carry trace_id");

    // An invalid set: an error outcome, and a Warning Event naming the trace.
    let mut invalid = seed_example(&ns, "broken");
    invalid["spec"]["writer"]["image"] = json!("Not A Valid Image");
    create(&client, &ns, invalid).await;
    let broken = wait_for("the invalid set's reconcile span", WAIT, || async {
        reconcile_of(&collector.spans(), "broken", "invalid").cloned()
    })
    .await;
    assert_eq!(broken.status, "STATUS_CODE_ERROR");
    let note = event_note(&client, &ns, "a Warning event with the trace id", |e| {
        e.type_.as_deref() == Some("Warning")
            && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("broken")
    })
    .await;
    assert!(
        note.contains(&format!("(trace {})", broken.trace_id)),
        "{note}"
    );

    // Spans the collector received are counted as exported.
    let (_, samples) = parse_metrics(&http_get(&metrics_addr, "/metrics").1);
    let exported = samples
        .get("vecodex_operator_spans_exported_total")
        .and_then(|s| s.first())
        .map(|(_, v)| *v);
    assert!(
        exported.is_some_and(|v| v > 0.0),
        "exported spans counted: {exported:?}"
    );

    // The collector dies: reconciles go on, spans are counted as dropped.
    collector.stop();
    create(&client, &ns, seed_example(&ns, "unobserved")).await;
    wait_for("a set to converge without a collector", WAIT, || async {
        let v = serde_json::to_value(sets(&client, &ns).get("unobserved").await.ok()?).ok()?;
        (v["status"]["observedGeneration"] == v["metadata"]["generation"]).then_some(())
    })
    .await;
    wait_for("dropped spans counted", WAIT, || async {
        let (_, samples) = parse_metrics(&http_get(&metrics_addr, "/metrics").1);
        (samples
            .get("vecodex_operator_spans_dropped_total")?
            .first()?
            .1
            > 0.0)
            .then_some(())
    })
    .await;

    // It comes back on the same port: export resumes.
    let restarted = Collector::start(grpc, cluster.dir.join("rotel-2.out"));
    create(&client, &ns, seed_example(&ns, "after-restart")).await;
    wait_for(
        "spans after the collector restart",
        Duration::from_secs(60),
        || async { reconcile_of(&restarted.spans(), "after-restart", "applied").map(|_| ()) },
    )
    .await;

    // /metrics, parsed: every family the issue names.
    let (types, samples) = parse_metrics(&http_get(&metrics_addr, "/metrics").1);
    for (family, kind) in [
        ("vecodex_operator_reconciles", "counter"),
        ("vecodex_operator_reconcile_duration_seconds", "histogram"),
        ("vecodex_operator_kube_requests", "counter"),
        (
            "vecodex_operator_kube_request_duration_seconds",
            "histogram",
        ),
        ("vecodex_operator_spans_exported", "counter"),
        ("vecodex_operator_spans_dropped", "counter"),
        ("vecodex_operator_build", "info"),
        ("vecodex_operator_shards_configured", "gauge"),
        ("vecodex_operator_shards_held", "gauge"),
        ("vecodex_operator_shard_held", "gauge"),
        ("vecodex_operator_sets", "gauge"),
        ("vecodex_operator_sets_longest_in_state_seconds", "gauge"),
        ("workqueue_depth", "gauge"),
        ("workqueue_adds", "counter"),
        ("workqueue_retries", "counter"),
        ("workqueue_queue_duration_seconds", "histogram"),
        ("workqueue_work_duration_seconds", "histogram"),
        ("workqueue_unfinished_work_seconds", "gauge"),
        ("workqueue_longest_running_processor_seconds", "gauge"),
    ] {
        assert_eq!(
            types.get(family).map(String::as_str),
            Some(kind),
            "family {family}"
        );
    }
    // Every result is exported from the start; those that happened count more than 0.
    let results: BTreeMap<String, f64> = samples["vecodex_operator_reconciles_total"]
        .iter()
        .cloned()
        .collect();
    for result in vecodex_operator::metrics::results::ALL {
        assert!(
            results.contains_key(&format!("result=\"{result}\"")),
            "{result} exported: {results:?}"
        );
    }
    assert!(
        results["result=\"applied\""] > 0.0 && results["result=\"invalid\""] > 0.0,
        "{results:?}"
    );
    let requests = &samples["vecodex_operator_kube_requests_total"];
    assert!(
        requests.iter().any(|(l, v)| l.contains("verb=\"PATCH\"")
            && l.contains("resource=\"deployments\"")
            && l.contains("code=\"201\"")
            && *v >= 3.0),
        "apply requests counted: {requests:?}"
    );
    assert!(
        requests.iter().any(|(l, _)| l.contains("verb=\"WATCH\"")),
        "watches counted"
    );
    let text = http_get(&metrics_addr, "/metrics").1;
    assert!(
        text.lines().any(
            |l| l.starts_with("vecodex_operator_reconcile_duration_seconds_bucket")
                && l.contains("# {trace_id=\"")
        ),
        "reconcile duration carries trace-id exemplars"
    );
    common::shared::signal(&operator, libc::SIGTERM);
    let _ = operator.wait();
    assert_eq!(
        samples["vecodex_operator_build_info"][0].0,
        format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))
    );
}

/// The log level filters logs, not traces: an operator logging only warnings still exports
/// every reconcile's trace, and its Warning Events name a real trace.
#[tokio::test]
async fn traces_are_exported_whatever_the_log_level() {
    let cluster = common::cluster();
    let client = client().await;
    let ns = namespace(&client, "quiet").await;
    let grpc = free_port();
    let collector = Collector::start(grpc, cluster.dir.join("rotel-quiet.out"));
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let endpoint = format!("http://127.0.0.1:{grpc}");
    // Its own Leases and namespace, beside the other tests' operator.
    let mut operator = common::spawn_operator_with_env(
        &cluster.kubeconfig,
        &cluster.dir.join("quiet-operator.log"),
        &[
            "--namespace",
            &ns,
            "--lease-group",
            "quiet",
            "--shards",
            "1",
            "--metrics-addr",
            &metrics_addr,
            "--instance",
            "quiet-op",
        ],
        // RUST_LOG overrides the harness's --log-level, as it does the operator's flag.
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("RUST_LOG", "warn"),
        ],
    );
    create(&client, &ns, seed_example(&ns, "quiet")).await;
    let root = wait_for("the new set's reconcile trace", WAIT, || async {
        reconcile_of(&collector.spans(), "quiet", "applied").cloned()
    })
    .await;
    assert_ne!(root.trace_id, "0".repeat(32));
    // An invalid spec: the Warning Event names a trace that is not all zeros. (Only this
    // operator's: the other test's operator, watching every namespace, reports on this set
    // too, to its own collector.)
    sets(&client, &ns)
        .patch(
            "quiet",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"searcher": {"image": "bad image!"}}})),
        )
        .await
        .unwrap();
    let note = event_note(&client, &ns, "the InvalidSpec Warning Event", |e| {
        e.reason.as_deref() == Some("InvalidSpec")
            && e.reporting_instance.as_deref() == Some("quiet-op")
    })
    .await;
    let trace = note
        .rsplit_once("(trace ")
        .and_then(|(_, t)| t.strip_suffix(')'))
        .unwrap_or_else(|| panic!("the Event names its trace: {note}"));
    assert_eq!(trace.len(), 32, "{note}");
    assert_ne!(trace, "0".repeat(32), "{note}");
    wait_for("the invalid reconcile's trace", WAIT, || async {
        collector
            .spans()
            .iter()
            .any(|s| s.name == "reconcile" && s.trace_id == trace)
            .then_some(())
    })
    .await;
    let _ = operator.kill();
    let _ = operator.wait();
}

#[tokio::test]
async fn the_jaeger_manifest_installs() {
    common::cluster();
    common::kubectl_apply("deploy/jaeger/jaeger.yaml");
    let client = client().await;
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(client, "observability");
    let collector = services.get("jaeger-collector").await.unwrap();
    let ports: Vec<i32> = collector
        .spec
        .unwrap()
        .ports
        .unwrap()
        .iter()
        .map(|p| p.port)
        .collect();
    assert!(ports.contains(&4317), "OTLP/gRPC port: {ports:?}");
}
