//! The shard manager: every retry period it reads the group's Leases, works out the live
//! replicas of its shard scheme and each shard's preferred owner (`assign`: rendezvous
//! hashing with loads bounded by sets), acquires the shards it is preferred for, hands over
//! the ones another live replica is preferred for (drain, then release), and renews its
//! heartbeat and the shards it holds once their last renewal is half a renew deadline old
//! (see `ShardConfig::renewal_due`). A watch of the same Leases dates each renewal from the
//! moment it arrives, so that another replica's Lease expires, as seen here, a lease
//! duration after its last renewal rather than up to a retry period later (see
//! `LeaseClient::observe_event`).
//!
//! Replicas of one group agree on the shard scheme (hash and shard count: a shard number
//! means other namespaces under another scheme). Every Lease a replica writes records its
//! scheme, and:
//! - the members among which shards are assigned are the live replicas of its own scheme;
//! - a replica takes no shard while a live replica of another scheme started before it (the
//!   older scheme wins: during a rolling upgrade the old replicas keep serving until the last
//!   one is gone), and gives up the shards it holds to such a replica;
//! - nor while an unexpired shard Lease carries another scheme;
//! - a shard it acquired is served only once a read that started after the acquisition
//!   shows no unexpired shard Lease of another scheme. Of two replicas of different schemes
//!   that acquire at the same moment, at least one sees the other's Lease and lets its own
//!   go, so no namespace is ever served under two schemes at once.
//!
//! `view.rs` reads these facts from the Leases; this file acts on them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::Client;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::assign::{assign, standby};
use super::config::ShardConfig;
use super::gate::ShardGate;
use super::lease::{Attempt, LeaseClient, Op};
use super::metrics::ShardMetrics;
use super::names::member_prefix;
use super::view::View;

/// Sets per shard under this replica's scheme (index = shard), from its set cache.
pub type ShardLoads = Arc<dyn Fn() -> Vec<u64> + Send + Sync>;

pub struct ShardManager {
    config: ShardConfig,
    leases: LeaseClient,
    gate: Arc<ShardGate>,
    metrics: ShardMetrics,
    loads: ShardLoads,
    /// Shards acquired this tick, not served until confirmed (see `confirm_takes`), with the
    /// start of their acquisition.
    taken: Vec<(u32, Instant)>,
    /// Why this replica waits for another scheme, and when that was last said.
    waiting: Option<(String, Instant)>,
    /// Since when this replica has been preferred for a shard it does not hold.
    wanted_since: HashMap<u32, Instant>,
    /// Whether the Leases were listed at least once.
    listed: bool,
    /// Start of the last successful write of our heartbeat Lease.
    member_renewed_at: Option<Instant>,
}

/// What an operation of a tick is for.
#[derive(Clone, Copy)]
enum Role {
    Member,
    Renew(u32),
    Take(u32),
    Release(u32),
}

impl ShardManager {
    pub fn new(
        client: Client,
        config: ShardConfig,
        gate: Arc<ShardGate>,
        metrics: ShardMetrics,
        loads: ShardLoads,
    ) -> Self {
        let leases = LeaseClient::new(
            client,
            &config.namespace,
            &config.identity,
            &config.scheme.id(),
            config.lease_duration,
            &config.group,
        );
        metrics.configured(config.scheme.shards);
        ShardManager {
            config,
            leases,
            gate,
            metrics,
            loads,
            taken: Vec::new(),
            waiting: None,
            wanted_since: HashMap::new(),
            listed: false,
            member_renewed_at: None,
        }
    }

    /// Runs until `stop`; then drains every held shard (in-flight work bounded by
    /// `drain_timeout`), releases its Leases and deletes the heartbeat.
    pub async fn run(mut self, stop: CancellationToken, drain_timeout: Duration) {
        info!(
            identity = %self.config.identity,
            scheme = %self.config.scheme,
            namespace = %self.config.namespace,
            "shard manager starting"
        );
        // Fencing does not wait for a slow tick: it runs on its own clock.
        let fencer = tokio::spawn({
            let gate = self.gate.clone();
            let metrics = self.metrics.clone();
            let stop = stop.clone();
            async move {
                let mut tick = tokio::time::interval(Duration::from_millis(200));
                while tokio::select! { _ = stop.cancelled() => false, _ = tick.tick() => true } {
                    for shard in gate.fence() {
                        warn!(
                            shard,
                            "lease not renewed within the renew deadline; stopped reconciling the shard"
                        );
                        metrics.lost();
                    }
                    metrics.held(&gate.held());
                }
            }
        });
        // Renewals as they happen (see `LeaseClient::observe_event`), stamped on arrival by a
        // task of their own so that a slow tick does not delay the stamp.
        let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let watch = tokio::spawn({
            let changes = self.leases.watch();
            async move {
                let mut changes = std::pin::pin!(changes);
                while let Some(lease) = changes.next().await {
                    if seen_tx.send((lease, Instant::now())).is_err() {
                        break;
                    }
                }
            }
        });
        'ticks: loop {
            let started = Instant::now();
            while let Ok((lease, at)) = seen.try_recv() {
                self.leases.observe_event(lease, at);
            }
            self.tick().await;
            // Tick again at the next retry period, or as soon as another replica's Lease
            // expires if that is earlier: a dead replica's shards are taken without waiting
            // for the tick after.
            loop {
                let mut next = started + self.config.retry_period;
                if let Some(expiry) = self.leases.next_expiry(Instant::now()) {
                    next = next.min(expiry + Duration::from_millis(10));
                }
                tokio::select! {
                    _ = stop.cancelled() => break 'ticks,
                    _ = tokio::time::sleep_until(next) => break,
                    Some((lease, at)) = seen.recv() => self.leases.observe_event(lease, at),
                }
            }
        }
        watch.abort();
        fencer.abort();
        self.shut_down(drain_timeout).await;
    }

    /// Says why this replica waits for another scheme: when it starts, and every 10 s.
    fn say_waiting(&mut self, view: &View) {
        self.metrics.waiting_for_scheme(view.waiting_for.is_some());
        match (&view.waiting_for, &self.waiting) {
            (None, Some(_)) => {
                info!("no replica of another shard scheme left; taking shards");
                self.waiting = None;
            }
            (Some(why), last)
                if last.as_ref().is_none_or(|(said, at)| {
                    said != why || at.elapsed() >= Duration::from_secs(10)
                }) =>
            {
                warn!(scheme = %self.config.scheme, reason = %why, "waiting for the replicas of another shard scheme; taking no shard");
                self.waiting = Some((why.clone(), Instant::now()));
            }
            _ => {}
        }
    }

    /// How long one Lease request may take. At least the retry period, and up to half the
    /// renew deadline: a renewal only counts from the moment it was sent, so a slow answer
    /// is still safe to use, and a 2 s API server must not cost us every shard.
    fn call_timeout(&self) -> Duration {
        self.config.retry_period.max(self.config.renew_deadline / 2)
    }

    async fn tick(&mut self) {
        self.metrics.ticked();
        let timeout = self.call_timeout();
        if !self.listed {
            // Decisions need a first look at the Leases.
            let listed = tokio::time::timeout(timeout, self.leases.refresh()).await;
            if !matches!(listed, Ok(Ok(()))) {
                warn!("cannot read the Leases yet");
                return;
            }
            self.listed = true;
        }
        // Decide from what the last tick saw, then send everything at once with the next
        // read of the Leases: a slow API server costs one round trip per tick, so renewals
        // keep up with the renew deadline whatever the number of shards.
        let me = self.config.identity.clone();
        let loads = (self.loads)();
        let view = View::read(&self.leases, &self.config);
        self.say_waiting(&view);
        let owners = assign(&view.members, &loads, &view.holders);
        let now = Instant::now();
        let due = |renewed_at: Option<Instant>| {
            renewed_at.is_none_or(|at| self.config.renewal_due(now.saturating_duration_since(at)))
        };
        let (mut ops, mut roles) = (Vec::new(), Vec::new());
        // A waiting replica keeps no heartbeat: neither its peers nor replicas of another
        // scheme (this version's or an older one's) count it as a member to hand shards to.
        if view.waiting_for.is_some() {
            if self.member_renewed_at.take().is_some() {
                let member = self.config.member_lease(&me);
                let _ = bounded(
                    self.call_timeout(),
                    "delete member lease",
                    self.leases.delete(&member),
                )
                .await;
            }
        } else if due(self.member_renewed_at) {
            ops.push((self.config.member_lease(&me), Op::Acquire("member")));
            roles.push(Role::Member);
        }
        for shard in 0..self.config.scheme.shards {
            // Waiting for another scheme's Leases to go, a replica keeps what it holds: its
            // peers could not take a shard handed over now either.
            let preferred = match (&view.yield_to, &view.waiting_for) {
                (Some(_), _) => false,
                (None, Some(_)) => true,
                (None, None) => owners.get(shard as usize).map(String::as_str) == Some(me.as_str()),
            };
            if !self.gate.is_held(shard) {
                continue;
            }
            let name = self.config.shard_lease(shard);
            if !preferred && !self.gate.is_draining(shard) {
                match &view.yield_to {
                    Some(why) => {
                        info!(shard, reason = %why, "handing the shard over to the replicas of an older shard scheme")
                    }
                    None => info!(
                        shard,
                        "another replica is preferred for this shard; handing it over"
                    ),
                }
                self.gate.drain(shard);
            }
            if self.gate.is_draining(shard) && self.gate.in_flight(shard) == 0 {
                ops.push((name, Op::Release));
                roles.push(Role::Release(shard));
            } else if due(self.gate.renewed_at(shard)) {
                ops.push((name, Op::Acquire("shard")));
                roles.push(Role::Renew(shard));
            }
        }
        if view.waiting_for.is_none() {
            self.plan_takes(&owners, &mut ops, &mut roles);
        }
        if !self.send(&ops, roles).await {
            warn!("cannot read the Leases; holding what we have until the renew deadline");
            self.release_unconfirmed().await;
            self.metrics.held(&self.gate.held());
            return;
        }
        self.collect_dead_members().await;
        // What the fresh read shows free now (a release, an expiry) is taken at once.
        let view = View::read(&self.leases, &self.config);
        if view.waiting_for.is_none() {
            let owners = assign(&view.members, &loads, &view.holders);
            let (mut ops, mut roles) = (Vec::new(), Vec::new());
            self.plan_takes(&owners, &mut ops, &mut roles);
            if !ops.is_empty() {
                self.send(&ops, roles).await;
            }
        }
        self.confirm_takes().await;
        self.metrics.held(&self.gate.held());
        let view = View::read(&self.leases, &self.config);
        let warm = match view.waiting_for {
            None if self.config.warm_standby => standby(&view.members, &loads, &view.holders, &me),
            _ => Vec::new(),
        };
        self.gate.set_standby(warm);
    }

    /// Serves the shards acquired this tick once a read that started after their
    /// acquisition shows no unexpired shard Lease of another scheme and no older replica of
    /// another scheme; otherwise lets them go unserved.
    async fn confirm_takes(&mut self) {
        if self.taken.is_empty() {
            return;
        }
        let read = tokio::time::timeout(self.call_timeout(), self.leases.refresh()).await;
        if !matches!(read, Ok(Ok(()))) {
            warn!("cannot confirm the shards just acquired; letting them go");
            self.release_unconfirmed().await;
            return;
        }
        if let Some(why) = View::read(&self.leases, &self.config).waiting_for {
            warn!(reason = %why, "another shard scheme appeared while acquiring; letting the shards go");
            self.release_unconfirmed().await;
            return;
        }
        for (shard, started) in std::mem::take(&mut self.taken) {
            info!(shard, lease = %self.config.shard_lease(shard), "acquired shard");
            self.gate.gain(shard, started);
            let since = self.wanted_since.remove(&shard).unwrap_or(started);
            self.metrics
                .acquired(started.saturating_duration_since(since));
        }
    }

    /// Releases the shards acquired this tick and never served.
    async fn release_unconfirmed(&mut self) {
        for (shard, _) in std::mem::take(&mut self.taken) {
            let name = self.config.shard_lease(shard);
            let _ = bounded(self.call_timeout(), "release", self.leases.release(&name)).await;
        }
    }

    /// Adds an acquisition of every shard preferred here, not held, and free as observed.
    fn plan_takes(
        &mut self,
        owners: &[String],
        ops: &mut Vec<(String, Op)>,
        roles: &mut Vec<Role>,
    ) {
        let me = self.config.identity.as_str();
        let now = Instant::now();
        for shard in 0..self.config.scheme.shards {
            if self.gate.is_held(shard) || self.taken.iter().any(|(s, _)| *s == shard) {
                continue;
            }
            if owners.get(shard as usize).map(String::as_str) != Some(me) {
                self.wanted_since.remove(&shard);
                continue;
            }
            self.wanted_since.entry(shard).or_insert(now);
            let name = self.config.shard_lease(shard);
            let obtainable = self
                .leases
                .observed(&name)
                .is_none_or(|o| o.is_free(now) || o.holder() == Some(me));
            if obtainable {
                ops.push((name, Op::Acquire("shard")));
                roles.push(Role::Take(shard));
            }
        }
    }

    /// Sends `ops` with a read of the Leases and applies the outcomes; whether the read
    /// succeeded.
    async fn send(&mut self, ops: &[(String, Op)], roles: Vec<Role>) -> bool {
        let started = Instant::now();
        let (refreshed, results) = self.leases.exchange(ops, self.call_timeout()).await;
        for (role, result) in roles.into_iter().zip(results) {
            match role {
                Role::Member => {
                    if let Some(Ok(Attempt::Held)) = result {
                        self.member_renewed_at = Some(started);
                    }
                }
                Role::Renew(shard) => self.renewed(shard, started, result),
                Role::Take(shard) => {
                    if let Some(Ok(Attempt::Held)) = result {
                        self.taken.push((shard, started));
                    }
                }
                Role::Release(shard) => {
                    self.stop_serving(shard, matches!(result, Some(Ok(_))));
                    self.metrics.handed_over();
                }
            }
        }
        refreshed
    }

    /// Applies the outcome of a renewal of `shard` sent at `started`.
    fn renewed(
        &mut self,
        shard: u32,
        started: Instant,
        result: Option<Result<Attempt, kube::Error>>,
    ) {
        match result {
            Some(Ok(Attempt::Held)) => self.gate.renewed(shard, started),
            Some(Ok(Attempt::NotHeld)) => {
                // Someone else wrote the Lease: it is not ours any more.
                warn!(shard, "lost the shard's lease to another replica");
                self.gate.lose(shard);
                self.metrics.lost();
            }
            Some(Err(e)) => {
                debug!(shard, error = %e, "renewal failed; retrying until the renew deadline")
            }
            None => debug!(
                shard,
                "renewal timed out; retrying until the renew deadline"
            ),
        }
    }

    async fn release(&mut self, shard: u32, name: &str) {
        let released = bounded(self.call_timeout(), "release", self.leases.release(name)).await;
        self.stop_serving(shard, released.is_some());
    }

    /// A released shard is not served any more, whether or not the release got through.
    fn stop_serving(&mut self, shard: u32, released: bool) {
        self.gate.lose(shard);
        info!(shard, released, "released shard");
    }

    /// Heartbeats of replicas gone for ten lease durations are deleted.
    async fn collect_dead_members(&mut self) {
        let prefix = member_prefix(&self.config.group);
        let now = Instant::now();
        let dead: Vec<String> = self
            .leases
            .all_observed()
            .filter(|(name, o)| {
                name.starts_with(&prefix)
                    && now.saturating_duration_since(o.observed_at)
                        > self.config.lease_duration * 10
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in dead {
            let _ = bounded(
                self.config.retry_period,
                "delete member lease",
                self.leases.delete(&name),
            )
            .await;
        }
    }

    async fn shut_down(&mut self, drain_timeout: Duration) {
        let held = self.gate.held();
        for shard in &held {
            self.gate.drain(*shard);
        }
        for shard in &held {
            self.gate.drained(*shard, drain_timeout).await;
        }
        for shard in held {
            let name = self.config.shard_lease(shard);
            self.release(shard, &name).await;
        }
        let member = self.config.member_lease(&self.config.identity.clone());
        let _ = bounded(
            self.config.retry_period,
            "delete member lease",
            self.leases.delete(&member),
        )
        .await;
        info!("released every lease");
    }
}

/// Bounds a lease request by the retry period (a hung call must not delay renewals) and logs
/// failures.
async fn bounded<T>(
    retry_period: Duration,
    what: &str,
    f: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Option<T> {
    match tokio::time::timeout(retry_period, f).await {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            warn!(error = %e, what, "lease request failed");
            None
        }
        Err(_) => {
            warn!(what, "lease request timed out");
            None
        }
    }
}
