//! The shard-cache lifecycle: which shards' child watches run here (held shards, and standby
//! shards kept warm once the replica has caught up), and queueing a shard's sets once its
//! caches have listed.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube::runtime::watcher;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::triggers::classify_children;
use super::watch::{self, Sink, Watched, list_config};
use crate::cache::{Cache, Stored};
use crate::children::shard_selector;
use crate::key::SetKey;
use crate::queue::{Priority, Trigger};
use crate::recent_writes::RecentWrites;
use crate::shard::{ShardEvent, ShardLoads};
use crate::stores::Stores;

/// A set found when its shard's children are listed, in the order such sets are queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Takeover {
    /// Its status observed an older generation: changed while no one held the shard.
    Behind,
    NeverReconciled,
    UpToDate,
}

/// Sets per shard, from the set cache every replica keeps whole: what the shard manager
/// balances.
pub(super) fn shard_loads(stores: &Stores) -> ShardLoads {
    let (sets, scheme) = (stores.sets.clone(), stores.scheme);
    Arc::new(move || {
        let mut loads = vec![0u64; scheme.shards as usize];
        for set in sets.state() {
            if let Some(ns) = set.namespace() {
                loads[scheme.shard_of(ns) as usize] += 1;
            }
        }
        loads
    })
}

/// Starts and stops the child watches of the shards this replica holds or keeps warm.
#[derive(Clone)]
pub(super) struct ShardWatches {
    pub(super) client: Client,
    pub(super) watched: Vec<Option<String>>,
    pub(super) sink: Sink,
    pub(super) stores: Stores,
    pub(super) recent: Arc<RecentWrites>,
    pub(super) shutdown: CancellationToken,
}

impl ShardWatches {
    /// Registers `shard`'s caches and starts its child watches (only its children, by label;
    /// of its namespaces when namespaces are listed). Once they have all listed, the shard's
    /// sets are queued if it is held by then; a standby shard's sets are queued when it is
    /// gained (see `follow_shards`). Returns what stops the watches.
    fn start(&self, shard: u32, generation: u64) -> CancellationToken {
        self.stores.start_shard(shard, generation);
        let stop = self.shutdown.child_token();
        let config = list_config().labels(&shard_selector(shard));
        let scheme = self.stores.scheme;
        let mut listed = Vec::new();
        for ns in self
            .watched
            .iter()
            .filter(|ns| ns.as_deref().is_none_or(|ns| scheme.shard_of(ns) == shard))
        {
            let s = &self.stores;
            listed.extend([
                self.watch(&s.deployments, shard, generation, ns, &config, &stop),
                self.watch(&s.services, shard, generation, ns, &config, &stop),
                self.watch(&s.config_maps, shard, generation, ns, &config, &stop),
                self.watch(&s.ingresses, shard, generation, ns, &config, &stop),
            ]);
        }
        let (watches, until) = (self.clone(), stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = until.cancelled() => return,
                _ = futures::future::join_all(listed) => {}
            }
            // Synced first, held second: `follow_shards` checks them the other way round
            // when the shard is gained, so one of the two queues the sets.
            if watches.stores.mark_synced(shard, generation) && watches.sink.gate.is_held(shard) {
                watches.queue_sets(shard, false).await;
            }
        });
        stop
    }

    /// Whether this replica and its peers have caught up: every shard it holds listed,
    /// nothing queued or being reconciled here, and at most 1 % of all sets (from the set
    /// cache every replica has) with a generation their status has not yet observed, at most
    /// 0.1 % without any status. Only then are standby caches started or kept: a replica
    /// that finishes its part of a cold start early must not list a third of all children
    /// while its peers still converge theirs on the same API server.
    fn caught_up(&self) -> bool {
        self.behind().is_none()
    }

    /// Why this replica has not caught up (see [`caught_up`](Self::caught_up)), if it has not.
    fn behind(&self) -> Option<String> {
        if !self.sink.queue.is_idle() {
            return Some(format!(
                "{} sets queued, {} being reconciled",
                self.sink.queue.len(),
                self.sink.queue.in_progress()
            ));
        }
        let unlisted: Vec<u32> = self
            .sink
            .gate
            .held()
            .into_iter()
            .filter(|s| !self.stores.children_synced(*s))
            .collect();
        if !unlisted.is_empty() {
            return Some(format!("held shards {unlisted:?} not listed yet"));
        }
        let sets = self.stores.sets.state();
        let (mut behind, mut never) = (0, 0);
        for set in &sets {
            match set.observed_generation {
                None => never += 1,
                Some(observed) if Some(observed) != set.generation => behind += 1,
                Some(_) => {}
            }
        }
        // Sets never reconciled at all (no status yet) are what a cold start is made of: at
        // most 0.1 % of them, so that standby lists do not slow the end of a cold start. Sets
        // behind by a spec change are what churn is made of, and churn must not keep standby
        // caches away for ever.
        (never * 1000 > sets.len() || (behind + never) * 100 > sets.len()).then(|| {
            format!(
                "{never} of {} sets never reconciled, {behind} behind their spec",
                sets.len()
            )
        })
    }

    /// Queues the sets of a held shard whose caches have listed. Sets whose spec changed
    /// after a status was written (updated while the shard had no holder) go first, at the
    /// priority of any spec change. Sets never reconciled come next but stay low, as after
    /// any initial list: at a cold start, thousands of them must not queue ahead of a
    /// tenant's change. The rest are checks for drift.
    /// `warm`: the caches were kept as a standby, so the takeover listed nothing.
    async fn queue_sets(&self, shard: u32, warm: bool) {
        let mut keys: Vec<(Takeover, SetKey)> = self
            .stores
            .sets
            .state()
            .iter()
            .filter_map(|s| {
                let key = s
                    .key()
                    .filter(|k| self.sink.gate.shard_of_key(k) == shard)?;
                let state = match s.observed_generation {
                    None => Takeover::NeverReconciled,
                    Some(g) if Some(g) != s.generation => Takeover::Behind,
                    Some(_) => Takeover::UpToDate,
                };
                Some((state, key))
            })
            .collect();
        keys.sort_by_key(|(state, _)| *state);
        info!(
            shard,
            warm,
            sets = keys.len(),
            behind = keys.iter().filter(|(s, _)| *s == Takeover::Behind).count(),
            "shard's children are cached; queueing its sets"
        );
        for (state, key) in keys {
            let priority = match state {
                Takeover::Behind => Priority::Normal,
                _ => Priority::Low,
            };
            self.sink
                .queue
                .add(&key, priority, Trigger::ShardTakeover)
                .await;
        }
    }

    /// One reflected child watch of `shard` feeding the queue until `stop`; returns what
    /// waits for its first list.
    fn watch<K>(
        &self,
        cache: &Cache<Stored<K>>,
        shard: u32,
        generation: u64,
        ns: &Option<String>,
        config: &watcher::Config,
        stop: &CancellationToken,
    ) -> BoxReady
    where
        K: Watched,
    {
        let store = watch::spawn(
            &self.client,
            ns.as_deref(),
            config.clone(),
            Some(self.recent.clone()),
            &self.sink,
            classify_children::<K>(self.recent.clone()),
            stop.clone(),
        );
        cache.insert(shard, generation, ns.clone(), store.clone());
        Box::pin(async move {
            let _ = store.wait_until_ready().await;
        })
    }
}

type BoxReady = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Where the standby caches stand since the members last changed, as last logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StandbyPhase {
    /// Some are not running; `said_at`: when it was last said why they wait (every 10 s).
    Waiting { said_at: Option<Instant> },
    /// All started; "every standby shard's children are cached" not said yet.
    Started,
    /// All listed, and said so.
    Cached,
}

/// How often it is said why standby caches wait.
const SAY_WHY_EVERY: Duration = Duration::from_secs(10);
/// How often the standby caches are checked.
const STANDBY_CHECK: Duration = Duration::from_secs(1);

/// The child caches that run here: of the held shards, and of the standby shards once the
/// replica has caught up.
struct Follower {
    watches: ShardWatches,
    /// How long the members must stay unchanged before standby caches start: a Lease
    /// duration.
    settle: Duration,
    /// Shard → (the start that runs its caches, what stops them).
    running: HashMap<u32, (u64, CancellationToken)>,
    /// Starts so far: each start of a shard's caches has its own number.
    starts: u64,
    /// The standby shards of this replica (see `hash::standby`), since `standby_since`.
    standby: Vec<u32>,
    standby_since: Instant,
    phase: StandbyPhase,
}

impl Follower {
    fn start(&mut self, shard: u32) {
        self.starts += 1;
        let stop = self.watches.start(shard, self.starts);
        self.running.insert(shard, (self.starts, stop));
    }

    fn stop(&mut self, shard: u32) {
        if let Some((start, stop)) = self.running.remove(&shard) {
            stop.cancel();
            self.watches.stores.drop_shard(shard, start);
        }
    }

    fn settled(&self) -> bool {
        self.standby_since.elapsed() >= self.settle
    }

    /// Starts the missing standby caches once the members have settled and the replica has
    /// caught up; says once when they have all listed.
    fn check_standby(&mut self) {
        let missing: Vec<u32> = self
            .standby
            .iter()
            .copied()
            .filter(|s| !self.running.contains_key(s))
            .collect();
        if missing.is_empty() {
            let all_listed = self
                .standby
                .iter()
                .all(|s| self.watches.stores.children_synced(*s));
            // No standby shard (one replica, or warm standby off): nothing to say.
            if self.phase != StandbyPhase::Cached && all_listed && !self.standby.is_empty() {
                self.phase = StandbyPhase::Cached;
                info!(shards = ?self.standby, "every standby shard's children are cached");
            }
            return;
        }
        // `behind` reads the whole set cache: only when there is a watch to start.
        if !self.settled() {
            return;
        }
        match self.watches.behind() {
            Some(reason) => {
                let said_at = match self.phase {
                    StandbyPhase::Waiting { said_at } => said_at,
                    _ => None,
                };
                if said_at.is_none_or(|at| at.elapsed() >= SAY_WHY_EVERY) {
                    info!(shards = ?missing, %reason, "standby shards wait until this replica has caught up");
                    self.phase = StandbyPhase::Waiting {
                        said_at: Some(Instant::now()),
                    };
                }
            }
            None => {
                info!(shards = ?missing, "keeping the caches of standby shards warm");
                for shard in missing {
                    self.start(shard);
                }
                // Said again once these have listed too: a shard handed over before the
                // replica caught up had its caches stopped.
                self.phase = StandbyPhase::Started;
            }
        }
    }

    fn apply(&mut self, event: ShardEvent) {
        match event {
            ShardEvent::Gained(shard) => {
                if self.running.contains_key(&shard) {
                    // Kept warm: held first, synced second (the other way round in `start`).
                    if self.watches.stores.children_synced(shard) {
                        let watches = self.watches.clone();
                        tokio::spawn(async move { watches.queue_sets(shard, true).await });
                    }
                } else {
                    self.start(shard);
                }
            }
            ShardEvent::Lost(shard) => {
                // Kept as a standby only by a replica that has caught up: at a cold start the
                // first replica takes every shard and hands most of them over, and keeping
                // them would double its work while it converges its own.
                let keep =
                    self.standby.contains(&shard) && self.settled() && self.watches.caught_up();
                if !keep {
                    self.stop(shard);
                }
                let gate = &self.watches.sink.gate;
                self.watches
                    .sink
                    .queue
                    .retain(|k| gate.shard_of_key(k) != shard);
            }
            ShardEvent::Standby(shards) => {
                info!(shards = ?shards, "standby shards changed (the members changed)");
                let unwanted: Vec<u32> = self
                    .running
                    .keys()
                    .copied()
                    .filter(|s| !shards.contains(s) && !self.watches.sink.gate.is_held(*s))
                    .collect();
                for shard in unwanted {
                    self.stop(shard);
                }
                self.standby = shards;
                self.standby_since = Instant::now();
                self.phase = StandbyPhase::Waiting { said_at: None };
            }
        }
    }
}

/// Applies shard ownership changes: a gained shard starts its child watches (which queue its
/// sets once listed), or queues its sets at once if they already run as a standby; a lost
/// one stops them, drops its caches and its queued keys, unless it is a standby.
///
/// Standby shards get their watches only once the replica has caught up (see
/// [`ShardWatches::caught_up`]) and the members have not changed for `settle`. During a cold
/// start they would compete with the replica's own work for the API server and the CPU, for
/// a failover that may never come; and while a dead replica's replacement is starting, the
/// two survivors would each warm all the shards for a few seconds.
pub(super) async fn follow_shards(
    mut events: tokio::sync::mpsc::UnboundedReceiver<ShardEvent>,
    watches: ShardWatches,
    settle: Duration,
) {
    let mut follower = Follower {
        watches,
        settle,
        running: HashMap::new(),
        starts: 0,
        standby: Vec::new(),
        standby_since: Instant::now(),
        phase: StandbyPhase::Waiting { said_at: None },
    };
    let mut check = tokio::time::interval(STANDBY_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => follower.apply(event),
                None => return,
            },
            _ = check.tick() => follower.check_standby(),
        }
    }
}
