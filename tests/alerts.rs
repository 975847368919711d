//! The chart's alerts, dashboard and runbook, checked with a real Prometheus (Debian's 2.42,
//! from `deploy/local/tools.sh`) scraping real replicas on the local control plane:
//! - every rule passes `promtool check rules`, every alert and panel expression parses
//!   (promql-parser), and every series an expression selects exists in Prometheus, target
//!   labels and label values included;
//! - the rules evaluate without error, each alert carries a severity and a runbook link, and
//!   the README's runbook has a section for each;
//! - alerts fire end to end: VecodexSetsRefused and VecodexSetsNotReady for real sets;
//!   VecodexShardUnheld for the shards of a killed replica, until the survivor takes them over;
//!   with every replica killed, VecodexShardUnheld (no replica reports), VecodexOperatorAbsent
//!   and VecodexOperatorDown.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{
    Replica, ReplicaOptions, client, metrics_addr, repo_root, seed_example, shard_holders, tool,
    wait_for,
};
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::ApiResource;
use promql_parser::parser::{self, Expr};
use serde_json::{Value, json};
use vecodex_operator::crd::VecodexSet;

const GROUP: &str = "alerts";
const SHARDS: u32 = 4;
/// The scrape job and namespace the rules select on: the chart's metrics Service (the job a
/// ServiceMonitor gives its targets) in the release's namespace.
const JOB: &str = "vecodex-operator-metrics";
const NAMESPACE: &str = "vecodex-system";
const SCRAPE: &str = "1s";

/// Renders one template of the chart with the alerts and the dashboard enabled, and the
/// alerts' waits short enough for a test.
fn render(template: &str) -> Value {
    let out = Command::new(tool("helm"))
        .args(["template", "vecodex-operator"])
        .arg(repo_root().join("chart/vecodex-operator"))
        .args(["--namespace", NAMESPACE, "--show-only", template])
        .args([
            "--set",
            "metrics.prometheusRule.enabled=true",
            "--set",
            "metrics.dashboard.enabled=true",
            "--set",
            "metrics.prometheusRule.downFor=3s",
            "--set",
            "metrics.prometheusRule.shardUnheldFor=2s",
            "--set",
            "metrics.prometheusRule.refusedFor=2s",
            "--set",
            "metrics.prometheusRule.notReadySeconds=5",
        ])
        .output()
        .expect("helm runs");
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_saphyr::from_str(&String::from_utf8_lossy(&out.stdout)).expect("one YAML document")
}

/// Every vector selector of `e`, as PromQL text.
fn selectors(e: &Expr, out: &mut Vec<String>) {
    match e {
        Expr::Aggregate(a) => {
            selectors(&a.expr, out);
            if let Some(p) = &a.param {
                selectors(p, out);
            }
        }
        Expr::Unary(u) => selectors(&u.expr, out),
        Expr::Binary(b) => {
            selectors(&b.lhs, out);
            selectors(&b.rhs, out);
        }
        Expr::Paren(p) => selectors(&p.expr, out),
        Expr::Subquery(s) => selectors(&s.expr, out),
        Expr::VectorSelector(v) => out.push(v.to_string()),
        Expr::MatrixSelector(m) => out.push(m.vs.to_string()),
        Expr::Call(c) => c.args.args.iter().for_each(|a| selectors(a, out)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// A dashboard expression as Prometheus gets it once Grafana filled in its variables.
fn as_grafana_sends(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$job", JOB)
        .replace("$namespace", NAMESPACE)
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server with the chart's rules, scraping the replicas every second.
struct Prometheus {
    child: Child,
    port: u16,
}

impl Prometheus {
    fn start(dir: &Path, rules: &Path, targets: &[(String, String)]) -> Prometheus {
        let port = common::shared::free_port().expect("a free port");
        let configs: Vec<Value> = targets
            .iter()
            .map(|(pod, addr)| json!({"targets": [addr], "labels": {"namespace": NAMESPACE, "pod": pod}}))
            .collect();
        let config = json!({
            "global": {"scrape_interval": SCRAPE, "evaluation_interval": SCRAPE},
            "rule_files": [rules],
            "scrape_configs": [{"job_name": JOB, "static_configs": configs}],
        });
        let config_file = dir.join("prometheus.json");
        std::fs::write(&config_file, config.to_string()).unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start prometheus");
        Prometheus { child, port }
    }

    /// GET `path` of the HTTP API; its `data`, or `None` while it is not answering.
    fn get(&self, path: &str) -> Option<Value> {
        // HTTP/1.0: the answer comes whole, not chunked, and the connection closes after it.
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        let body = text.split_once("\r\n\r\n")?.1;
        let v: Value = serde_json::from_str(body).ok()?;
        (v["status"] == "success").then(|| v["data"].clone())
    }

    fn query(&self, promql: &str) -> Option<Vec<Value>> {
        let data = self.get(&format!("/api/v1/query?query={}", percent_encode(promql)))?;
        data["result"].as_array().cloned()
    }

    fn series(&self, selector: &str) -> Option<Vec<Value>> {
        let data = self.get(&format!(
            "/api/v1/series?match[]={}",
            percent_encode(selector)
        ))?;
        data.as_array().cloned()
    }

    /// Firing alerts: (alert name, its labels).
    fn firing(&self) -> Vec<(String, BTreeMap<String, String>)> {
        let Some(data) = self.get("/api/v1/alerts") else {
            return Vec::new();
        };
        data["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["state"] == "firing")
            .map(|a| {
                let labels: BTreeMap<String, String> =
                    serde_json::from_value(a["labels"].clone()).unwrap_or_default();
                (labels.get("alertname").cloned().unwrap_or_default(), labels)
            })
            .collect()
    }

    fn is_firing(&self, alert: &str, with: &[(&str, &str)]) -> bool {
        self.firing().iter().any(|(name, labels)| {
            name == alert
                && with
                    .iter()
                    .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn alerts_fire_and_every_expression_selects_exported_series() {
    let cluster = common::cluster();
    let dir: PathBuf = cluster.dir.join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();

    // The rules as Prometheus loads them, checked by its own tool.
    let rule = render("templates/prometheusrule.yaml");
    let rules_file = dir.join("rules.json");
    std::fs::write(
        &rules_file,
        json!({"groups": rule["spec"]["groups"]}).to_string(),
    )
    .unwrap();
    let check = Command::new(tool("promtool"))
        .args(["check", "rules"])
        .arg(&rules_file)
        .output()
        .expect("promtool runs");
    assert!(
        check.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    // Every expression parses; their selectors are checked against Prometheus below.
    let mut exprs: Vec<(String, String)> = Vec::new();
    let mut alerts: BTreeSet<String> = BTreeSet::new();
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    for r in rule["spec"]["groups"][0]["rules"].as_array().unwrap() {
        let name = r["alert"].as_str().unwrap().to_owned();
        assert!(
            ["critical", "warning", "info"]
                .contains(&r["labels"]["severity"].as_str().unwrap_or("")),
            "{name} has a severity"
        );
        assert!(
            r["annotations"]["summary"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "{name} has a summary"
        );
        let anchor = name.to_lowercase();
        assert!(
            r["annotations"]["runbook_url"]
                .as_str()
                .is_some_and(|u| u.ends_with(&format!("README.md#{anchor}"))),
            "{name} links its runbook entry"
        );
        assert!(
            readme.contains(&format!("\n#### {name}\n")),
            "the README's runbook has a section for {name}"
        );
        exprs.push((name.clone(), r["expr"].as_str().unwrap().to_owned()));
        alerts.insert(name);
    }
    let dashboard = render("templates/dashboard.yaml");
    let dashboard: Value =
        serde_json::from_str(dashboard["data"]["vecodex-operator.json"].as_str().unwrap()).unwrap();
    let mut rows = BTreeSet::new();
    for p in dashboard["panels"].as_array().unwrap() {
        if p["type"] == "row" {
            rows.insert(p["title"].as_str().unwrap().to_owned());
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push((
                format!("panel {:?}", p["title"]),
                as_grafana_sends(t["expr"].as_str().unwrap()),
            ));
        }
    }
    assert_eq!(
        rows,
        BTreeSet::from(["API client", "Overview", "Queue", "Shards", "Tracing"].map(String::from)),
        "the dashboard's rows"
    );
    let mut selected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (what, expr) in &exprs {
        let ast = parser::parse(expr).unwrap_or_else(|e| panic!("{what}: {expr}: {e}"));
        let mut found = Vec::new();
        selectors(&ast, &mut found);
        assert!(!found.is_empty(), "{what} selects something");
        for s in found {
            selected.entry(s).or_default().push(what.clone());
        }
    }

    // Real replicas with sets to report: one that converges (its Deployments never get ready
    // pods: there is no kubelet) and one refused for its spec.
    let client = client().await;
    let ns = common::namespace(&client, "tenant-alerts").await;
    let sets: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &ApiResource::erase::<VecodexSet>(&()));
    let mut refused = seed_example(&ns, "refused");
    refused["spec"]["writer"]["image"] = "Bad Image".into();
    for set in [seed_example(&ns, "ready"), refused] {
        sets.create(
            &PostParams::default(),
            &serde_json::from_value(set).unwrap(),
        )
        .await
        .unwrap();
    }
    // Default Lease timings: a killed replica's shards stay unheld for seconds, long enough
    // for the alert to fire before the survivor takes them over.
    let opts = ReplicaOptions {
        lease_duration_s: 15,
        renew_deadline_s: 10,
        retry_period_s: 2,
        ..ReplicaOptions::default()
    };
    let replicas = [
        Replica::start_with("r1", GROUP, SHARDS, &opts),
        Replica::start_with("r2", GROUP, SHARDS, &opts),
    ];
    let targets: Vec<(String, String)> = wait_for(
        "the replicas' metrics listeners",
        Duration::from_secs(30),
        || async {
            replicas
                .iter()
                .map(|r| Some((r.identity.clone(), metrics_addr(&r.log)?)))
                .collect()
        },
    )
    .await;
    let prometheus = Prometheus::start(&dir, &rules_file, &targets);
    wait_for(
        "both replicas scraped, sharing the shards, and their census counting both sets",
        Duration::from_secs(60),
        || async {
            let up = prometheus.query(&format!("sum(up{{job=\"{JOB}\"}})"))?;
            let held = prometheus.query(&format!(
                "sum(vecodex_operator_shards_held{{job=\"{JOB}\"}})"
            ))?;
            let sets = prometheus.query(&format!("sum(vecodex_operator_sets{{job=\"{JOB}\"}})"))?;
            let value = |v: &[Value]| v.first()?["value"][1].as_str()?.parse::<f64>().ok();
            (value(&up)? == 2.0 && value(&held)? == f64::from(SHARDS) && value(&sets)? == 2.0)
                .then_some(())
        },
    )
    .await;

    // Every selector of every alert and panel matches series Prometheus scraped.
    let missing: Vec<String> = selected
        .iter()
        .filter(|(s, _)| prometheus.series(s).is_none_or(|found| found.is_empty()))
        .map(|(s, users)| format!("{s} (used by {users:?})"))
        .collect();
    assert!(
        missing.is_empty(),
        "selectors matching no series: {missing:#?}"
    );

    // The rules evaluate cleanly.
    wait_for(
        "every rule evaluated without error",
        Duration::from_secs(30),
        || async {
            let groups = prometheus.get("/api/v1/rules")?;
            let rules: Vec<Value> = groups["groups"]
                .as_array()?
                .iter()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            (rules.len() == alerts.len() && rules.iter().all(|r| r["health"] == "ok")).then_some(())
        },
    )
    .await;

    // Alerts about sets fire for real sets; nothing about the operator fires while it is up.
    wait_for(
        "VecodexSetsRefused (InvalidSpec) and VecodexSetsNotReady (ComponentsNotReady) firing",
        Duration::from_secs(60),
        || async {
            (prometheus.is_firing("VecodexSetsRefused", &[("reason", "InvalidSpec")])
                && prometheus.is_firing("VecodexSetsNotReady", &[("reason", "ComponentsNotReady")]))
            .then_some(())
        },
    )
    .await;
    let healthy = prometheus.firing();
    for quiet in [
        "VecodexOperatorDown",
        "VecodexOperatorAbsent",
        "VecodexShardUnheld",
        "VecodexShardManagerStalled",
        "VecodexReconcileErrors",
    ] {
        assert!(
            healthy.iter().all(|(name, _)| name != quiet),
            "{quiet} is quiet while both replicas run: {healthy:?}"
        );
    }

    // r2 dies: its shards are unheld (and alerted on) until r1 takes them over.
    let holders = shard_holders(&client, GROUP, SHARDS).await;
    let r2_shards: Vec<String> = holders
        .iter()
        .enumerate()
        .filter(|(_, h)| h.as_deref() == Some("r2"))
        .map(|(s, _)| s.to_string())
        .collect();
    assert!(!r2_shards.is_empty(), "r2 holds shards: {holders:?}");
    replicas[1].signal(libc::SIGKILL);
    wait_for(
        "VecodexShardUnheld firing for r2's shards",
        Duration::from_secs(15),
        || async {
            r2_shards
                .iter()
                .all(|s| prometheus.is_firing("VecodexShardUnheld", &[("shard", s)]))
                .then_some(())
        },
    )
    .await;
    wait_for(
        "VecodexShardUnheld resolved once r1 holds every shard",
        Duration::from_secs(40),
        || async { (!prometheus.is_firing("VecodexShardUnheld", &[])).then_some(()) },
    )
    .await;
    assert!(
        prometheus.is_firing("VecodexOperatorDown", &[("pod", "r2")]),
        "VecodexOperatorDown for r2: {:?}",
        prometheus.firing()
    );

    // r1 dies too: no replica reports any shard.
    replicas[0].signal(libc::SIGKILL);
    wait_for(
        "VecodexShardUnheld (no replica reports) and VecodexOperatorAbsent firing",
        Duration::from_secs(30),
        || async {
            let firing = prometheus.firing();
            let unreported = firing.iter().any(|(name, labels)| {
                name == "VecodexShardUnheld" && !labels.contains_key("shard")
            });
            (unreported
                && prometheus.is_firing("VecodexOperatorAbsent", &[])
                && prometheus.is_firing("VecodexOperatorDown", &[("pod", "r1")]))
            .then_some(())
        },
    )
    .await;
}
