//! A network cut between one replica and the API server, under churn of 210 sets over 30
//! namespaces with 3 replicas running with the chart's least-privilege ServiceAccount.
//!
//! Replica c3 reaches the API server only through a TCP proxy the test controls
//! (`tests/common/proxy.rs`). The proxy black-holes it: c3 must stop reconciling its shards
//! no later than its renew deadline (its shard gate, seen in `/metrics`, and its log), c1
//! and c2 take the shards only after the Leases expire, and when the cut heals (without
//! closing a connection, so what c3 sent before and during the cut lands late) c3 rejoins,
//! the shards rebalance and every update converges. The API server's audit log is the
//! witness: every child and status write came from the holder of its namespace's shard,
//! but for c3's late writes released by the heal, which are refused or land at the heal on
//! sets that then converge; c3's late Lease renewals take no Lease.

mod common;

use std::time::{Duration, Instant};

use common::audit::{self, LeaseHistory};
use common::fleet::{Fleet, assert_takeovers_after_expiry, record_leases};
use common::proxy::{Mode, Proxy};
use common::shard_of;
use common::{
    RELEASE_NS, Replica, ReplicaOptions, client, metric, replica_http, sa_replica_options,
    shard_holders_in, wait_for,
};
use kube::Client;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use vecodex_operator::shard::shard_lease_name;

const GROUP: &str = "cut";
const SHARDS: u32 = 8;
const SETS: usize = 210;
const NAMESPACES: usize = 30;

async fn holders(client: &Client) -> Vec<Option<String>> {
    shard_holders_in(client, RELEASE_NS, GROUP, SHARDS).await
}

/// Every shard of `group` held by one of `ids`, the fleet settled (see `settled_in`).
async fn settled_in(client: &Client, group: &str, ids: &[&str], fleet: &Fleet) -> Option<()> {
    common::settled_in(client, RELEASE_NS, group, ids, &fleet.loads(SHARDS)).await
}

async fn settled(client: &Client, ids: &[&str], fleet: &Fleet) -> Option<()> {
    settled_in(client, GROUP, ids, fleet).await
}

fn shards_held(r: &Replica) -> Option<f64> {
    metric(
        &replica_http(&r.log, "/metrics")?,
        "vecodex_operator_shards_held",
    )
}

#[tokio::test]
async fn network_cut_and_slow_api_server_under_churn() {
    common::cluster();
    let client = client().await;
    let fleet = Fleet::new("net", SETS, NAMESPACES);
    fleet.create(&client).await;
    network_cut(&client, &fleet).await;
    slow_api_server(&client, &fleet).await;
    lease_access_revoked(&client, &fleet).await;
}

/// Waits for a replica to exit after SIGTERM.
async fn terminate(mut r: Replica) {
    r.signal(libc::SIGTERM);
    let status = wait_for("a replica to exit", Duration::from_secs(30), || {
        let s = r.child.try_wait().ok().flatten();
        async move { s }
    })
    .await;
    assert!(status.success(), "{} exits cleanly: {status}", r.identity);
}

async fn network_cut(client: &Client, fleet: &Fleet) {
    let client = client.clone();
    let opts = sa_replica_options();
    let leases = record_leases(client.clone(), RELEASE_NS, GROUP);

    let proxy = Proxy::start(Proxy::upstream_of(&opts.kubeconfig));
    let proxied = common::cluster().dir.join("cut-c3.kubeconfig");
    proxy.kubeconfig(&opts.kubeconfig, &proxied);
    let started = Instant::now();
    let replicas = [
        Replica::start_with("c1", GROUP, SHARDS, &opts),
        Replica::start_with("c2", GROUP, SHARDS, &opts),
        Replica::start_with(
            "c3",
            GROUP,
            SHARDS,
            &ReplicaOptions {
                kubeconfig: proxied,
                ..opts.clone()
            },
        ),
    ];
    let ids = ["c1", "c2", "c3"];
    wait_for("3 replicas balanced", Duration::from_secs(30), || {
        settled(&client, &ids, fleet)
    })
    .await;
    fleet
        .converge(&client, "cold start", Duration::from_secs(240))
        .await;
    eprintln!(
        "{SETS} sets converged {:?} after the replicas started",
        started.elapsed()
    );

    // Churn, then the cut.
    let stop = CancellationToken::new();
    let churner = fleet.churn(client.clone(), 4, stop.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let c3_shards: Vec<u32> = holders(&client)
        .await
        .iter()
        .enumerate()
        .filter(|(_, h)| h.as_deref() == Some("c3"))
        .map(|(s, _)| s as u32)
        .collect();
    assert!(!c3_shards.is_empty(), "c3 holds shards before the cut");
    assert_eq!(shards_held(&replicas[2]), Some(c3_shards.len() as f64));
    let cut_ms = proxy.set(Mode::BlackHole);
    let cut = Instant::now();

    // c3 fences itself by its renew deadline (4 s; its gate is checked every 200 ms).
    let renew_deadline = Duration::from_secs(opts.renew_deadline_s);
    let seen = wait_for("c3 to fence itself", Duration::from_secs(15), || async {
        (shards_held(&replicas[2])? == 0.0).then(|| cut.elapsed())
    })
    .await;
    // When it fenced each shard, from its log (the gauge above is polled). The gate refuses
    // new work from the deadline on (every check compares with the clock); the fencer that
    // cancels work in flight runs every 200 ms, hence the slack (and scheduling on 2 cores).
    let cut_at = jiff::Timestamp::from_millisecond(cut_ms as i64).unwrap();
    let c3_log = replicas[2].log_text();
    let fenced_at: Vec<jiff::Timestamp> = c3_log
        .lines()
        .filter(|l| l.contains("lease not renewed within the renew deadline"))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .filter(|t| *t >= cut_at)
        .collect();
    assert_eq!(
        fenced_at.len(),
        c3_shards.len(),
        "c3 logged the fencing of each of its shards"
    );
    let fenced = fenced_at
        .iter()
        .map(|t| t.duration_since(cut_at).unsigned_abs())
        .max()
        .unwrap();
    eprintln!(
        "c3 stopped serving its shards {fenced:?} after the cut (its gauge showed 0 after {seen:?})"
    );
    assert!(
        fenced <= renew_deadline + Duration::from_millis(500),
        "c3 fenced itself {fenced:?} after the cut, later than its renew deadline {renew_deadline:?}"
    );

    // c1 and c2 take c3's shards once its Leases expire (and then settle at 4 each).
    wait_for(
        "c1 and c2 hold c3's shards",
        Duration::from_secs(20),
        || async {
            let h = holders(&client).await;
            c3_shards
                .iter()
                .all(|s| matches!(h[*s as usize].as_deref(), Some("c1" | "c2")))
                .then_some(())
        },
    )
    .await;
    let takeover = cut.elapsed();
    let bound = common::failover_bound(opts.lease_duration_s);
    eprintln!("c1 and c2 hold c3's shards {takeover:?} after the cut (bound {bound:?})");
    assert!(takeover <= bound, "takeover took {takeover:?}");
    wait_for(
        "c1 and c2 to hold every shard",
        Duration::from_secs(20),
        || settled(&client, &["c1", "c2"], fleet),
    )
    .await;

    // While c3 is still cut off, a set on one of its former shards is served by the others.
    let (victim_i, (victim_ns, victim)) = (0..SETS)
        .map(|i| (i, fleet.place(i)))
        .find(|(_, (ns, _))| c3_shards.contains(&shard_of(ns, SHARDS)))
        .expect("a set on a shard c3 held");
    fleet.desired.lock().unwrap().insert(victim_i, 4);
    common::fleet::sets(&client, &victim_ns)
        .patch(
            &victim,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"searcher": {"replicas": 4}}})),
        )
        .await
        .unwrap();
    let deployments: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
        kube::Api::namespaced(client.clone(), &victim_ns);
    wait_for(
        "a set of c3's former shard to converge during the cut",
        Duration::from_secs(20),
        || async {
            let d = deployments.get(&format!("{victim}-searcher")).await.ok()?;
            (d.spec?.replicas == Some(4)).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(15).saturating_sub(cut.elapsed())).await;

    assert!(
        c3_log.contains("lease not renewed within the renew deadline"),
        "c3 logged its fencing"
    );

    // Heal without closing anything: what c3 sent before and during the cut (renewals and
    // applies it gave up on when it fenced) is delivered now, late.
    let heal_ms = proxy.set(Mode::Pass);
    let heal = Instant::now();
    wait_for("3 replicas balanced again", Duration::from_secs(40), || {
        settled(&client, &ids, fleet)
    })
    .await;
    let rejoin = heal.elapsed();
    eprintln!("shards rebalanced over 3 replicas {rejoin:?} after the heal");
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    let applied = churner.await.unwrap();
    fleet
        .converge(&client, "after the heal", Duration::from_secs(120))
        .await;
    eprintln!(
        "{applied} updates; all converged {:?} after the heal",
        heal.elapsed()
    );
    assert!(applied > 40, "churn went on ({applied} updates)");
    assert!(
        proxy.forwarded_since(heal_ms, true).0 > 0,
        "c3 talks to the API server again"
    );
    let (_, late_chunks) = proxy.counters();
    assert!(
        late_chunks > 0,
        "requests held by the cut were delivered after it"
    );

    // The witness: the API server's audit log. Every child and status write came from the
    // holder of its namespace's shard (Lease history from the same log), except writes of
    // c3 delivered late by the heal, which must be refused, or harmless: a write sent before
    // the cut and landing as the heal releases it (within a second), on a set that then
    // converged to its current spec (checked above). Late Lease renewals of c3 are refused.
    let records = audit::records();
    let lease_duration = Duration::from_secs(opts.lease_duration_s);
    let history = LeaseHistory::new(&records, &format!("{GROUP}-shard-"), lease_duration);
    let heal_at = jiff::Timestamp::from_millisecond(heal_ms as i64).unwrap();
    let late_window = heal_at + jiff::SignedDuration::from_secs(1);
    let lease_of = |replica: &str, ns: &str| {
        ids.contains(&replica)
            .then(|| shard_lease_name(GROUP, shard_of(ns, SHARDS), SHARDS))
    };
    let (checked, strays) = audit::writes_by_non_holders(&records, &history, lease_of);
    for r in &strays {
        let late = r.replica() == Some("c3") && r.received >= heal_at && r.received <= late_window;
        assert!(
            late,
            "{:?} wrote {} {} at {} without holding its shard (code {})",
            r.replica(),
            r.resource,
            r.key(),
            r.received,
            r.code
        );
    }
    // No Lease write of c3 after the heal (late renewals from before the cut included) took
    // a Lease while another replica held it.
    let c3_leases: Vec<&audit::Record> = records
        .iter()
        .filter(|r| r.resource == "leases" && r.lease_holder.as_deref() == Some("c3"))
        .filter(|r| r.received >= heal_at)
        .collect();
    let taken: Vec<String> = c3_leases
        .iter()
        .filter(|r| r.succeeded())
        .filter(|r| {
            let name = r.name.as_deref().unwrap_or_default();
            matches!(history.holder_at(name, r.received), Some(h) if h != "c3")
        })
        .map(|r| format!("{} {} at {}", r.key(), r.code, r.received))
        .collect();
    assert!(
        taken.is_empty(),
        "c3 took a Lease another replica held: {taken:?}"
    );
    let refused_late = c3_leases
        .iter()
        .filter(|r| r.received <= late_window && !r.succeeded())
        .count();
    eprintln!(
        "audit: {checked} writes checked against the Lease history; {} late child or status writes of c3 landed at the heal ({} refused); {refused_late} late Lease writes of c3 refused, none took a Lease; {late_chunks} chunks delivered late",
        strays.len(),
        strays.iter().filter(|r| !r.succeeded()).count(),
    );
    let after_heal = records
        .iter()
        .filter(|r| r.is_reconcile_write() && r.replica() == Some("c3") && r.received > late_window)
        .count();
    assert!(after_heal > 0, "c3 writes again as a holder after the heal");

    // Leases changed hands only after expiry or release.
    let takeovers = assert_takeovers_after_expiry(&leases, lease_duration);
    eprintln!("{takeovers} direct takeovers checked");
    assert!(takeovers >= 1, "the cut produced expiry takeovers");
    for r in replicas {
        for forbidden in ["Forbidden", "code=403"] {
            assert!(
                !r.log_text().contains(forbidden),
                "{}: no request forbidden with the chart's RBAC",
                r.identity
            );
        }
        terminate(r).await;
    }
}

const SLOW_GROUP: &str = "slow";
const LATENCY: Duration = Duration::from_secs(2);
const CONCURRENCY: usize = 8;
const RECONCILE_TIMEOUT: &str = "1500ms";

/// Every response from the API server 2 s late, for all three replicas (default Lease
/// timings): reconciles time out and are retried, the queue stays bounded, requests in flight
/// do not pile up, no shard is lost, and everything converges once the latency is gone.
///
/// The reconcile timeout is shorter than one round trip, so every reconcile that calls the
/// API server times out, however few calls it chains (with a timeout of a few round trips,
/// whether any timed out would hang on that count).
async fn slow_api_server(client: &Client, fleet: &Fleet) {
    let base = sa_replica_options();
    let opts = ReplicaOptions {
        lease_duration_s: 15,
        renew_deadline_s: 10,
        retry_period_s: 2,
        extra_args: vec![
            "--reconcile-timeout".into(),
            RECONCILE_TIMEOUT.into(),
            "--concurrency".into(),
            CONCURRENCY.to_string(),
        ],
        ..base.clone()
    };
    let dir = common::cluster().dir.clone();
    let mut proxies = Vec::new();
    let mut replicas = Vec::new();
    for id in ["s1", "s2", "s3"] {
        let proxy = Proxy::start(Proxy::upstream_of(&base.kubeconfig));
        let kubeconfig = dir.join(format!("slow-{id}.kubeconfig"));
        proxy.kubeconfig(&base.kubeconfig, &kubeconfig);
        replicas.push(Replica::start_with(
            id,
            SLOW_GROUP,
            SHARDS,
            &ReplicaOptions {
                kubeconfig,
                ..opts.clone()
            },
        ));
        proxies.push(proxy);
    }
    let holders = || shard_holders_in(client, RELEASE_NS, SLOW_GROUP, SHARDS);
    wait_for("s1..s3 balanced", Duration::from_secs(60), || {
        settled_in(client, SLOW_GROUP, &["s1", "s2", "s3"], fleet)
    })
    .await;
    fleet
        .converge(client, "before the slow phase", Duration::from_secs(60))
        .await;
    // A metric that is missing fails the test: nothing defaults to "fine".
    let scrape = |r: &Replica, name: &str| -> f64 {
        let text = replica_http(&r.log, "/metrics")
            .unwrap_or_else(|| panic!("{}: /metrics answers", r.identity));
        metric(&text, name).unwrap_or_else(|| panic!("{}: {name} in /metrics", r.identity))
    };
    let losses_before: Vec<f64> = replicas
        .iter()
        .map(|r| scrape(r, "vecodex_operator_shard_losses_total"))
        .collect();
    let retries_before: f64 = replicas
        .iter()
        .map(|r| scrape(r, "workqueue_retries_total{name=\"vecodexsets\"}"))
        .sum();

    let stop_churn = CancellationToken::new();
    let churner = fleet.churn(client.clone(), 4, stop_churn.clone());
    // Connections open before the latency: the watches (one per kind and held shard) and
    // idle pooled connections.
    let settled: Vec<u64> = proxies.iter().map(|p| p.open_connections().0).collect();
    for p in &proxies {
        p.set(Mode::Delay(LATENCY));
    }
    let slow = Instant::now();
    let mut max_depth = 0.0f64;
    let mut max_open = vec![0u64; proxies.len()];
    while slow.elapsed() < Duration::from_secs(40) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        for (i, (r, p)) in replicas.iter().zip(&proxies).enumerate() {
            max_depth = max_depth.max(scrape(r, "workqueue_depth{name=\"vecodexsets\"}"));
            max_open[i] = max_open[i].max(p.open_connections().1);
        }
    }
    let held: usize = holders().await.iter().flatten().count();
    let losses_after: Vec<f64> = replicas
        .iter()
        .map(|r| scrape(r, "vecodex_operator_shard_losses_total"))
        .collect();
    let retries: f64 = replicas
        .iter()
        .map(|r| scrape(r, "workqueue_retries_total{name=\"vecodexsets\"}"))
        .sum::<f64>()
        - retries_before;
    let timeouts: usize = replicas
        .iter()
        .map(|r| {
            r.log_text()
                .lines()
                .filter(|l| l.contains("reconcile failed") && l.contains("did not finish within"))
                .count()
        })
        .sum();
    for p in &proxies {
        p.set(Mode::Pass);
    }
    let fast = Instant::now();
    stop_churn.cancel();
    let applied = churner.await.unwrap();
    let took = fleet
        .converge(
            client,
            "after the latency is gone",
            Duration::from_secs(120),
        )
        .await;
    eprintln!(
        "slow API server (+{LATENCY:?} per response, 40 s, {applied} updates): {timeouts} reconciles timed out, {retries} retries, queue depth at most {max_depth}, connections open per replica {settled:?} before, at most {max_open:?} during, {held}/{SHARDS} shards held; converged {took:?} after the latency was gone ({:?} incl. churn stop)",
        fast.elapsed()
    );
    assert!(timeouts >= 1, "reconciles timed out under a 2 s latency");
    assert!(retries >= 1.0, "timed-out reconciles were retried");
    // Per replica, requests in flight are its workers' (one each: the churn changes one
    // Deployment per set) and its heartbeat's (a list, every shard's renewal and one
    // acquisition per round). The proxy counts a connection abandoned by a timeout until the
    // API server's delayed answer has drained, by which time its requester has started the
    // next one, so each can count twice; the bound allows two heartbeat rounds. All of it
    // comes on top of the connections open before (watches and the idle pool). The count
    // rises as failing sets fill the queue until every worker is busy, then stays. Abandoned
    // requests that kept their connections
    // (a pile-up) would add one per timeout, about 50 per replica in the 40 s. Events (at
    // most EVENTS_IN_FLIGHT more) do not count here: every reconcile times out before its
    // apply answers, and only an answered apply leads to an Event.
    let in_flight = 2 * (CONCURRENCY + 2 * (SHARDS as usize + 1)) as u64;
    for (i, (&before, &during)) in settled.iter().zip(&max_open).enumerate() {
        assert!(
            during <= before + in_flight,
            "requests in flight pile up at replica {i}: {during} connections open at once, {before} before the latency (bound {before} + {in_flight})"
        );
    }
    assert_eq!(held, SHARDS as usize, "every shard stayed held");
    assert_eq!(
        losses_before, losses_after,
        "no replica lost a shard to a 2 s latency"
    );
    assert!(applied > 40, "churn went on ({applied} updates)");
    for r in replicas {
        terminate(r).await;
    }
}

const REVOKED_GROUP: &str = "revoked";
/// The ServiceAccount of the replica whose Lease access is taken away, bound to the chart's
/// ClusterRole and Lease Role like the chart's own.
const REVOCABLE: &str = "revocable";

fn revocable_rbac() -> String {
    [
        format!("apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {REVOCABLE}\n  namespace: {RELEASE_NS}\n"),
        format!("apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: {REVOCABLE}\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: vecodex-operator\nsubjects:\n- kind: ServiceAccount\n  name: {REVOCABLE}\n  namespace: {RELEASE_NS}\n"),
        format!("apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: {REVOCABLE}-leases\n  namespace: {RELEASE_NS}\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: Role\n  name: vecodex-operator-leases\nsubjects:\n- kind: ServiceAccount\n  name: {REVOCABLE}\n  namespace: {RELEASE_NS}\n"),
    ]
    .join("---\n")
}

/// One replica loses the right to touch Leases (its RoleBinding deleted) while it keeps
/// reaching the API server for everything else, under churn: its Lease writes stop
/// succeeding, but its child writes still would. The audit log is the witness that it fenced
/// itself: no child or status write of it reached the API server later than its last
/// successful Lease write plus its renew deadline (and a second for a write in flight), and
/// every write of the group came from the holder of its shard at that moment. When the
/// binding is back, it rejoins and the sets converge.
async fn lease_access_revoked(client: &Client, fleet: &Fleet) {
    common::kubectl_apply_stdin(&revocable_rbac());
    let out = common::kubectl([
        "-n",
        RELEASE_NS,
        "create",
        "token",
        REVOCABLE,
        "--duration",
        "1h",
    ]);
    assert!(out.status.success(), "kubectl create token {REVOCABLE}");
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let cluster = common::cluster();
    let kubeconfig = cluster.dir.join("revocable.kubeconfig");
    common::token_kubeconfig(&cluster.kubeconfig, &token, &kubeconfig);

    let opts = sa_replica_options();
    let replicas = [
        Replica::start_with("r1", REVOKED_GROUP, SHARDS, &opts),
        Replica::start_with("r2", REVOKED_GROUP, SHARDS, &opts),
        Replica::start_with(
            "r3",
            REVOKED_GROUP,
            SHARDS,
            &ReplicaOptions {
                kubeconfig,
                ..opts.clone()
            },
        ),
    ];
    let ids = ["r1", "r2", "r3"];
    wait_for("r1..r3 balanced", Duration::from_secs(60), || {
        settled_in(client, REVOKED_GROUP, &ids, fleet)
    })
    .await;
    fleet
        .converge(client, "before the revocation", Duration::from_secs(60))
        .await;
    let stop = CancellationToken::new();
    let churner = fleet.churn(client.clone(), 4, stop.clone());
    tokio::time::sleep(Duration::from_secs(5)).await;

    let revoked = jiff::Timestamp::now();
    let out = common::kubectl([
        "-n",
        RELEASE_NS,
        "delete",
        "rolebinding",
        &format!("{REVOCABLE}-leases"),
    ]);
    assert!(out.status.success(), "the Lease RoleBinding is deleted");
    wait_for(
        "r1 and r2 to hold every shard",
        Duration::from_secs(30),
        || settled_in(client, REVOKED_GROUP, &["r1", "r2"], fleet),
    )
    .await;
    // r3's shards are served by the others for a while before the binding returns.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let restored = jiff::Timestamp::now();
    common::kubectl_apply_stdin(&revocable_rbac());
    wait_for("r1..r3 balanced again", Duration::from_secs(60), || {
        settled_in(client, REVOKED_GROUP, &ids, fleet)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    let applied = churner.await.unwrap();
    fleet
        .converge(
            client,
            "after the binding is back",
            Duration::from_secs(120),
        )
        .await;
    assert!(applied > 40, "churn went on ({applied} updates)");

    let records = audit::records();
    let r3_writes = |from: jiff::Timestamp, to: jiff::Timestamp| -> Vec<&audit::Record> {
        records
            .iter()
            .filter(|r| r.replica() == Some("r3") && r.is_reconcile_write())
            .filter(|r| r.received >= from && r.received < to)
            .collect()
    };
    let last_renewal = records
        .iter()
        .filter(|r| r.is_lease_traffic() && r.replica() == Some("r3") && r.succeeded())
        .filter(|r| r.received < restored)
        .map(|r| r.received)
        .max()
        .expect("r3 wrote Leases before the revocation");
    assert!(
        last_renewal >= revoked - jiff::SignedDuration::from_secs(2),
        "r3 renewed its Leases until the revocation (last {last_renewal}, revoked {revoked})"
    );
    let fence = last_renewal
        + jiff::SignedDuration::from_secs(opts.renew_deadline_s as i64)
        + jiff::SignedDuration::from_secs(1);
    let before = r3_writes(revoked - jiff::SignedDuration::from_secs(5), revoked).len();
    assert!(before > 0, "r3 served churn before the revocation");
    let unfenced: Vec<String> = r3_writes(fence, restored)
        .iter()
        .map(|r| format!("{} {} at {} ({})", r.resource, r.key(), r.received, r.code))
        .collect();
    assert!(
        unfenced.is_empty(),
        "r3 wrote after its last Lease renewal ({last_renewal}) plus its renew deadline: {unfenced:?}"
    );
    let lease_duration = Duration::from_secs(opts.lease_duration_s);
    let history = LeaseHistory::new(&records, &format!("{REVOKED_GROUP}-shard-"), lease_duration);
    let checked = audit::assert_writes_by_holders(&records, &history, |replica, ns| {
        ids.contains(&replica)
            .then(|| shard_lease_name(REVOKED_GROUP, shard_of(ns, SHARDS), SHARDS))
    });
    eprintln!(
        "Lease access revoked: r3's last Lease write at {last_renewal}, {before} writes of r3 in the 5 s before, none after {fence}; {checked} writes checked against the Lease history; {applied} updates"
    );
    for r in replicas {
        terminate(r).await;
    }
}
