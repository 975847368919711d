//! Which shards this replica may reconcile right now, shared by the shard manager (which
//! gains, renews, drains and loses shards) and the controller (which asks before queueing and
//! before reconciling a key).
//!
//! Fencing lives here: a shard whose Lease was not renewed within the renew deadline stops
//! being served at once, whatever the manager is doing, because every check compares the
//! last renewal with the clock.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::hash::Scheme;
use crate::key::SetKey;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    /// Not ours.
    Idle,
    /// Ours: keys are queued and reconciled.
    Active,
    /// Being handed over: no new keys; in-flight reconciles finish, then the Lease goes.
    Draining,
}

struct Slot {
    state: SlotState,
    /// Cancels in-flight reconciles when the shard is lost.
    token: CancellationToken,
    in_flight: usize,
    /// Start of the last successful renewal request.
    renewed_at: Instant,
}

/// What the controller must do when ownership changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardEvent {
    /// Queue every set of the shard (at low priority).
    Gained(u32),
    /// Drop the shard's queued keys.
    Lost(u32),
    /// The shards whose caches to keep warm (see `hash::standby`): those assigned here and
    /// those this replica would gain if any one peer left. Sent when it changes, that is
    /// when the members change.
    Standby(Vec<u32>),
}

pub struct ShardGate {
    scheme: Scheme,
    renew_deadline: Duration,
    slots: Mutex<Vec<Slot>>,
    drained: Notify,
    events: mpsc::UnboundedSender<ShardEvent>,
    /// The last standby shards sent.
    standby: Mutex<Vec<u32>>,
}

/// Held by a worker while it reconciles a key of a shard.
pub struct WorkGuard {
    gate: Arc<ShardGate>,
    shard: u32,
    pub token: CancellationToken,
}

impl Drop for WorkGuard {
    fn drop(&mut self) {
        let mut slots = self.gate.lock();
        if let Some(slot) = slots.get_mut(self.shard as usize) {
            slot.in_flight = slot.in_flight.saturating_sub(1);
        }
        drop(slots);
        self.gate.drained.notify_waiters();
    }
}

impl ShardGate {
    /// A gate and the stream of ownership changes. The channel carries at most two events
    /// per shard per lease period, and a standby change per membership change, so it cannot
    /// grow without bound.
    pub fn new(
        scheme: Scheme,
        renew_deadline: Duration,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<ShardEvent>) {
        let (events, rx) = mpsc::unbounded_channel();
        let now = Instant::now();
        let slots = (0..scheme.shards)
            .map(|_| Slot {
                state: SlotState::Idle,
                token: CancellationToken::new(),
                in_flight: 0,
                renewed_at: now,
            })
            .collect();
        let gate = Arc::new(ShardGate {
            scheme,
            renew_deadline,
            slots: Mutex::new(slots),
            drained: Notify::new(),
            events,
            standby: Mutex::new(Vec::new()),
        });
        (gate, rx)
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    pub fn shard_of_key(&self, key: &SetKey) -> u32 {
        self.scheme.shard_of(key.namespace())
    }

    fn fresh(&self, slot: &Slot, now: Instant) -> bool {
        now.saturating_duration_since(slot.renewed_at) < self.renew_deadline
    }

    /// Whether a key of this shard should be queued now.
    pub fn accepts(&self, key: &SetKey) -> bool {
        let shard = self.shard_of_key(key);
        let slots = self.lock();
        let slot = &slots[shard as usize];
        slot.state == SlotState::Active && self.fresh(slot, Instant::now())
    }

    /// Registers a reconcile of `key`; `None` if its shard is not served here now.
    pub fn begin(self: &Arc<Self>, key: &SetKey) -> Option<WorkGuard> {
        let shard = self.shard_of_key(key);
        let mut slots = self.lock();
        let slot = &mut slots[shard as usize];
        if slot.state != SlotState::Active || !self.fresh(slot, Instant::now()) {
            return None;
        }
        slot.in_flight += 1;
        Some(WorkGuard {
            gate: self.clone(),
            shard,
            token: slot.token.clone(),
        })
    }

    /// Shards held (active or draining).
    pub fn held(&self) -> Vec<u32> {
        self.lock()
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state != SlotState::Idle)
            .map(|(i, _)| i as u32)
            .collect()
    }

    pub fn is_held(&self, shard: u32) -> bool {
        self.lock()[shard as usize].state != SlotState::Idle
    }

    pub fn is_draining(&self, shard: u32) -> bool {
        self.lock()[shard as usize].state == SlotState::Draining
    }

    pub fn in_flight(&self, shard: u32) -> usize {
        self.lock()[shard as usize].in_flight
    }

    /// The Lease was acquired with a request started at `at`.
    pub fn gain(&self, shard: u32, at: Instant) {
        let mut slots = self.lock();
        let slot = &mut slots[shard as usize];
        slot.state = SlotState::Active;
        slot.token = CancellationToken::new();
        slot.renewed_at = at;
        drop(slots);
        let _ = self.events.send(ShardEvent::Gained(shard));
    }

    /// The shards to keep warm; sends [`ShardEvent::Standby`] when they changed.
    pub fn set_standby(&self, shards: Vec<u32>) {
        let mut last = self.standby.lock().unwrap_or_else(|e| e.into_inner());
        if *last != shards {
            last.clone_from(&shards);
            drop(last);
            let _ = self.events.send(ShardEvent::Standby(shards));
        }
    }

    /// Start of the last successful renewal (or acquisition) of a held shard's Lease.
    pub fn renewed_at(&self, shard: u32) -> Option<Instant> {
        let slots = self.lock();
        let slot = &slots[shard as usize];
        (slot.state != SlotState::Idle).then_some(slot.renewed_at)
    }

    /// The Lease was renewed with a request started at `at`.
    pub fn renewed(&self, shard: u32, at: Instant) {
        let mut slots = self.lock();
        let slot = &mut slots[shard as usize];
        if slot.state != SlotState::Idle && at > slot.renewed_at {
            slot.renewed_at = at;
        }
    }

    /// Stops taking new keys of `shard`; in-flight reconciles go on.
    pub fn drain(&self, shard: u32) {
        let mut slots = self.lock();
        if slots[shard as usize].state == SlotState::Active {
            slots[shard as usize].state = SlotState::Draining;
        }
        drop(slots);
        let _ = self.events.send(ShardEvent::Lost(shard));
    }

    /// Waits until no reconcile of `shard` is in flight, at most `timeout`; then cancels
    /// whatever is left.
    pub async fn drained(&self, shard: u32, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.drained.notified();
            if self.in_flight(shard) == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                self.lock()[shard as usize].token.cancel();
                return;
            }
        }
    }

    /// The shard is not ours any more: cancel its in-flight reconciles, drop its keys.
    pub fn lose(&self, shard: u32) {
        let mut slots = self.lock();
        let slot = &mut slots[shard as usize];
        if slot.state == SlotState::Idle {
            return;
        }
        let was_active = slot.state == SlotState::Active;
        slot.state = SlotState::Idle;
        slot.token.cancel();
        drop(slots);
        if was_active {
            let _ = self.events.send(ShardEvent::Lost(shard));
        }
    }

    /// Fencing: loses every shard not renewed within the renew deadline. Returns them.
    pub fn fence(&self) -> Vec<u32> {
        let now = Instant::now();
        let stale: Vec<u32> = self
            .lock()
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state != SlotState::Idle && !self.fresh(s, now))
            .map(|(i, _)| i as u32)
            .collect();
        for shard in &stale {
            self.lose(*shard);
        }
        stale
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::super::hash::{Scheme, ShardHash};
    use super::{ShardEvent, ShardGate};
    use crate::key::SetKey;

    #[tokio::test(start_paused = true)]
    async fn keys_are_served_only_while_the_shard_is_held_and_fresh() {
        let (gate, mut events) =
            ShardGate::new(Scheme::new(ShardHash::Mixed, 1), Duration::from_secs(10));
        assert!(!gate.accepts(&SetKey::new("ns", "a")));
        assert!(gate.begin(&SetKey::new("ns", "a")).is_none());
        gate.gain(0, Instant::now());
        assert_eq!(events.recv().await, Some(ShardEvent::Gained(0)));
        assert!(gate.accepts(&SetKey::new("ns", "a")));
        let guard = gate.begin(&SetKey::new("ns", "a")).expect("served");
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(
            !gate.accepts(&SetKey::new("ns", "a")),
            "not renewed within the deadline: fenced"
        );
        assert_eq!(gate.fence(), vec![0]);
        assert!(guard.token.is_cancelled(), "in-flight work is cancelled");
        assert_eq!(events.recv().await, Some(ShardEvent::Lost(0)));
    }

    #[tokio::test(start_paused = true)]
    async fn draining_waits_for_in_flight_work() {
        let (gate, _events) =
            ShardGate::new(Scheme::new(ShardHash::Mixed, 1), Duration::from_secs(10));
        gate.gain(0, Instant::now());
        let guard = gate.begin(&SetKey::new("ns", "a")).unwrap();
        gate.drain(0);
        assert!(
            gate.begin(&SetKey::new("ns", "b")).is_none(),
            "no new work while draining"
        );
        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move { gate.drained(0, Duration::from_secs(5)).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiter.is_finished());
        drop(guard);
        waiter.await.unwrap();
        assert!(
            !gate.lock()[0].token.is_cancelled(),
            "finished, not cancelled"
        );
    }
}
