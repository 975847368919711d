//! The census of the sets a replica serves, for the `vecodex_operator_sets` gauges: how many
//! sets of its held shards are Ready, and how many are not and why (their Ready condition's
//! reason), with the age of the oldest Ready transition per reason.
//!
//! The labels stay bounded: `ready` is True, False or Unknown, and `reason` is one of
//! [`REASONS`] (any other reason counts as [`OTHER`]). Namespaces and set names are never
//! labels; which sets a reason covers is in the sets' status and Events.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::status;

/// A set whose status does not describe its current generation yet.
pub const NOT_OBSERVED: &str = "NotObserved";
/// A Ready reason this operator does not write (an older version's, or someone else's).
pub const OTHER: &str = "Other";
const UNKNOWN: &str = "Unknown";
/// The values of the `ready` label.
pub const STATES: [&str; 3] = ["True", "False", UNKNOWN];
/// The Ready reasons the census keeps apart.
pub const REASONS: [&str; 7] = [
    status::ALL_COMPONENTS_READY,
    status::COMPONENTS_NOT_READY,
    status::APPLY_FAILED,
    status::INVALID_SPEC,
    status::POLICY_VIOLATION,
    status::HOST_CONFLICT,
    NOT_OBSERVED,
];

/// One set as the census sees it.
pub struct Entry<'a> {
    pub generation: Option<i64>,
    pub observed_generation: Option<i64>,
    /// The set's status (`None`: none yet).
    pub status: Option<&'a ReadyOnly>,
}

/// The part of a set's status the census reads.
#[derive(Deserialize, Default, Debug)]
pub struct ReadyOnly {
    #[serde(default)]
    conditions: Vec<ConditionOnly>,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct ConditionOnly {
    #[serde(rename = "type")]
    type_: String,
    status: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    last_transition_time: String,
}

/// Sets and the oldest transition per (ready, reason).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Tally {
    pub sets: i64,
    /// Seconds since the oldest Ready transition among these sets (0 when unknown).
    pub oldest_seconds: i64,
}

/// `value` as one of `known`, else `other`: label values stay within a fixed set.
fn bounded(known: &[&'static str], value: &str, other: &'static str) -> &'static str {
    known
        .iter()
        .find(|k| **k == value)
        .copied()
        .unwrap_or(other)
}

/// Counts `entries` by (ready, reason); `now` in Unix seconds.
pub fn count<'a>(
    entries: impl IntoIterator<Item = Entry<'a>>,
    now: i64,
) -> BTreeMap<(&'static str, &'static str), Tally> {
    let mut out: BTreeMap<(&'static str, &'static str), Tally> = BTreeMap::new();
    for e in entries {
        // A status of an older generation does not describe the set.
        let ready = e
            .status
            .filter(|_| e.observed_generation == e.generation)
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == status::READY));
        let (state, reason, since) = match ready {
            None => (UNKNOWN, NOT_OBSERVED, None),
            Some(c) => (
                bounded(&STATES, &c.status, UNKNOWN),
                bounded(&REASONS, &c.reason, OTHER),
                c.last_transition_time
                    .parse::<jiff::Timestamp>()
                    .ok()
                    .map(|t| t.as_second()),
            ),
        };
        let tally = out.entry((state, reason)).or_default();
        tally.sets += 1;
        if let Some(since) = since {
            tally.oldest_seconds = tally.oldest_seconds.max(now.saturating_sub(since).max(0));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{Entry, NOT_OBSERVED, OTHER, ReadyOnly, Tally, count};

    fn status(json: serde_json::Value) -> ReadyOnly {
        serde_json::from_value(json).unwrap()
    }

    fn ready(state: &str, reason: &str, at: &str) -> ReadyOnly {
        status(serde_json::json!({"conditions": [
            {"type": "Progressing", "status": "True", "reason": "RollingOut", "message": "",
             "lastTransitionTime": "2026-01-01T00:00:00Z"},
            {"type": "Ready", "status": state, "reason": reason, "message": "m",
             "lastTransitionTime": at},
        ]}))
    }

    #[test]
    fn sets_are_counted_by_ready_state_and_reason_with_the_oldest_transition() {
        // 2026-01-01T01:00:00Z
        let now = 1_767_229_200;
        let ok = ready("True", "AllComponentsReady", "2026-01-01T00:59:00Z");
        let slow = ready("False", "ComponentsNotReady", "2026-01-01T00:30:00Z");
        let slower = ready("False", "ComponentsNotReady", "2026-01-01T00:00:00Z");
        let refused = ready("False", "PolicyViolation", "2026-01-01T00:50:00Z");
        let odd = ready("False", "SomethingElse", "not a time");
        let entry = |s, g, o| Entry {
            generation: Some(g),
            observed_generation: Some(o),
            status: s,
        };
        let tally = count(
            [
                entry(Some(&ok), 1, 1),
                entry(Some(&slow), 2, 2),
                entry(Some(&slower), 3, 3),
                entry(Some(&refused), 1, 1),
                entry(Some(&odd), 1, 1),
                entry(Some(&ok), 2, 1),
                entry(None, 1, 0),
            ],
            now,
        );
        let get = |k: (&str, &str)| tally.get(&k).cloned().unwrap_or_default();
        assert_eq!(
            get(("True", "AllComponentsReady")),
            Tally {
                sets: 1,
                oldest_seconds: 60
            }
        );
        assert_eq!(
            get(("False", "ComponentsNotReady")),
            Tally {
                sets: 2,
                oldest_seconds: 3600
            }
        );
        assert_eq!(get(("False", "PolicyViolation")).sets, 1);
        assert_eq!(
            get(("False", OTHER)),
            Tally {
                sets: 1,
                oldest_seconds: 0
            },
            "an unknown reason is bounded to Other; an unreadable time counts no age"
        );
        assert_eq!(
            get(("Unknown", NOT_OBSERVED)).sets,
            2,
            "a status of an older generation, or none, is not observed yet"
        );
        assert_eq!(tally.values().map(|t| t.sets).sum::<i64>(), 7);
    }
}
