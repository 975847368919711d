//! What a shard group's Leases say to one replica, as last observed: the live members of
//! its shard scheme, each shard's holder, and whether it must wait for a replica or a Lease
//! of another scheme (the rules are in `manager.rs`, which acts on this view).

use std::time::Duration;

use jiff::Timestamp;
use tokio::time::Instant;

use super::config::ShardConfig;
use super::lease::{LeaseClient, Observed};
use super::names::{member_prefix, shard_prefix};

/// What the Leases say now.
pub(super) struct View {
    /// Live replicas of this replica's scheme, itself included.
    pub members: Vec<String>,
    /// Each shard's holder, if its Lease is unexpired and of this scheme.
    pub holders: Vec<Option<String>>,
    /// An older live replica of another scheme: hand every shard over.
    pub yield_to: Option<String>,
    /// Why no shard may be taken now.
    pub waiting_for: Option<String>,
}

impl View {
    /// What the Leases say now: the live members of this replica's scheme, each shard's
    /// holder (unexpired, of this scheme), and why this replica must wait for another scheme.
    ///
    /// Membership only decides who is *preferred* for a shard; safety rests on the shard
    /// Leases alone. So besides observed expiry it may also use the heartbeat's `renewTime`:
    /// a replica that just started has not watched a dead member's heartbeat for a lease
    /// duration yet, and would otherwise keep assigning shards to it.
    pub(super) fn read(leases: &LeaseClient, config: &ShardConfig) -> View {
        let me = config.identity.as_str();
        let scheme = config.scheme.id();
        let members_prefix = member_prefix(&config.group);
        let now = Instant::now();
        let wall = Timestamp::now();
        let stale_after =
            jiff::SignedDuration::try_from(config.lease_duration + Duration::from_secs(1))
                .unwrap_or(jiff::SignedDuration::from_secs(16));
        let live = |o: &&Observed| {
            let renewed = o
                .lease
                .spec
                .as_ref()
                .and_then(|s| s.renew_time.as_ref())
                .map(|t| t.0);
            !o.is_free(now) && renewed.is_none_or(|t| wall.duration_since(t) < stale_after)
        };
        let mut heartbeats: Vec<(&String, &Observed)> = leases
            .all_observed()
            .filter(|(name, _)| name.starts_with(&members_prefix))
            .filter(|(_, o)| live(o))
            .filter(|(_, o)| o.holder().is_some())
            .collect();
        heartbeats.sort_by_key(|(name, _)| *name);
        let heartbeats: Vec<&Observed> = heartbeats.into_iter().map(|(_, o)| o).collect();
        // A scheme's age is its oldest live heartbeat: created first, then by identity (the
        // same verdict on every replica of a scheme). A waiting replica keeps no heartbeat,
        // so a scheme none of whose replicas serves has no age and waits for every other.
        let age = |o: &Observed| {
            (
                o.created().unwrap_or(Timestamp::MAX),
                o.holder().unwrap_or_default().to_owned(),
            )
        };
        let ours = heartbeats
            .iter()
            .filter(|o| o.scheme() == Some(scheme.as_str()))
            .map(|o| age(o))
            .min();
        let mut members: Vec<String> = heartbeats
            .iter()
            .filter(|o| o.scheme() == Some(scheme.as_str()))
            .filter_map(|o| o.holder().map(str::to_owned))
            .collect();
        members.push(me.to_owned());
        members.sort();
        members.dedup();
        let elder = heartbeats
            .iter()
            .filter(|o| o.scheme() != Some(scheme.as_str()))
            .min_by_key(|o| age(o))
            .filter(|o| ours.as_ref().is_none_or(|ours| age(o) < *ours))
            .map(|o| {
                format!(
                    "replica {} started earlier with shard scheme {}",
                    o.holder().unwrap_or_default(),
                    o.scheme().unwrap_or("(none recorded)")
                )
            });
        let foreign = foreign_shard_lease(leases, config, now);
        let holders = (0..config.scheme.shards)
            .map(|shard| {
                leases
                    .observed(&config.shard_lease(shard))
                    .filter(|o| !o.is_free(now) && o.scheme() == Some(scheme.as_str()))
                    .and_then(|o| o.holder().map(str::to_owned))
            })
            .collect();
        View {
            members,
            holders,
            yield_to: elder.clone(),
            waiting_for: elder.or(foreign),
        }
    }
}

/// An unexpired shard Lease of this group written under another scheme, if any.
fn foreign_shard_lease(leases: &LeaseClient, config: &ShardConfig, now: Instant) -> Option<String> {
    let scheme = config.scheme.id();
    let prefix = shard_prefix(&config.group);
    leases
        .all_observed()
        .filter(|(name, _)| name.starts_with(&prefix))
        .filter(|(_, o)| !o.is_free(now) && o.scheme() != Some(scheme.as_str()))
        .min_by_key(|(name, _)| *name)
        .map(|(name, o)| {
            format!(
                "{name} is held by {} under shard scheme {}",
                o.holder().unwrap_or_default(),
                o.scheme().unwrap_or("(none recorded)")
            )
        })
}
