//! Kubernetes Events about sets (events.k8s.io/v1), deduplicated as client-go's correlator
//! does: an Event identical to a recent one (same object, type, reason *and* note) becomes a
//! series count on it instead of a new object. kube's own recorder leaves the note out of its
//! key and so keeps showing the first message for a different failure; hence this module.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use tokio::sync::mpsc;
use tracing::{Instrument as _, warn};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};

use crate::api::Writer;

/// How long an Event counts as recent for deduplication.
const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);
/// How often the recent Events are pruned. Pruning visits every one of them (one per set
/// after a cold start), so it is not done on every publish.
const PRUNE_EVERY: Duration = Duration::from_secs(10);
/// The Events API rejects notes above 1 kB.
const MAX_NOTE: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    uid: String,
    type_: EventType,
    reason: String,
    note: String,
}

struct Recent {
    name: String,
    count: i32,
    at: Instant,
}

pub struct Recorder {
    controller: String,
    instance: String,
    recent: Mutex<RecentEvents>,
}

/// Slots of recent Events.
struct RecentEvents {
    /// Per Event key, behind an async lock: Events are posted concurrently, and a repeat
    /// must wait for the first one's create to know which object to count on.
    by_key: HashMap<Key, Arc<tokio::sync::Mutex<Option<Recent>>>>,
    pruned_at: Instant,
}

impl RecentEvents {
    /// The slot of `key`, after forgetting Events older than the window and failed creates
    /// (keeping those in use) if the last prune is `PRUNE_EVERY` ago.
    fn slot(&mut self, key: Key) -> Arc<tokio::sync::Mutex<Option<Recent>>> {
        if self.pruned_at.elapsed() >= PRUNE_EVERY {
            self.by_key.retain(|_, slot| {
                slot.try_lock().map_or(true, |r| {
                    r.as_ref().is_some_and(|r| r.at.elapsed() < SERIES_WINDOW)
                })
            });
            self.pruned_at = Instant::now();
        }
        self.by_key.entry(key).or_default().clone()
    }
}

/// Cuts `note` to the API's limit, less `reserve` bytes, on a character boundary.
pub fn truncate_note(mut note: String, reserve: usize) -> String {
    let max = MAX_NOTE.saturating_sub(reserve);
    if note.len() > max {
        let mut cut = max;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
    }
    note
}

impl Recorder {
    pub fn new(controller: &str, instance: Option<String>) -> Self {
        Recorder {
            controller: controller.to_owned(),
            instance: instance.unwrap_or_else(|| controller.to_owned()),
            recent: Mutex::new(RecentEvents {
                by_key: HashMap::new(),
                pruned_at: Instant::now(),
            }),
        }
    }

    /// Publishes an Event about `regarding`, or counts a repeat of a recent identical one.
    /// `trace_id` is appended to the note (repeats show the latest) but is not part of what
    /// makes two Events identical.
    pub async fn publish(
        &self,
        writer: &Writer,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: String,
        trace_id: Option<&str>,
    ) -> Result<(), kube::Error> {
        let suffix = trace_id
            .map(|t| format!(" (trace {t})"))
            .unwrap_or_default();
        let note = truncate_note(note, suffix.len());
        let shown = format!("{note}{suffix}");
        let ns = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let key = Key {
            uid: regarding.uid.clone().unwrap_or_default(),
            type_,
            reason: reason.to_owned(),
            note: note.clone(),
        };
        let slot = self
            .recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .slot(key);
        let mut recent = slot.lock().await;
        let now = jiff::Timestamp::now();
        if let Some(r) = recent.as_mut() {
            r.count += 1;
            r.at = Instant::now();
            let series = EventSeries {
                count: r.count,
                last_observed_time: MicroTime(now),
            };
            return writer
                .patch_event_series(&ns, &r.name, &series, &shown)
                .await;
        }
        let name = format!(
            "{}.{:x}",
            regarding.name.as_deref().unwrap_or(&self.controller),
            now.as_nanosecond()
        );
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                ..ObjectMeta::default()
            },
            action: Some("Reconcile".to_owned()),
            reason: Some(reason.to_owned()),
            note: Some(shown),
            type_: Some(type_.as_str().to_owned()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        };
        writer.create_event(&ns, &event).await?;
        *recent = Some(Recent {
            name,
            count: 1,
            at: Instant::now(),
        });
        Ok(())
    }
}

/// Events posted at once, at most.
pub const EVENTS_IN_FLIGHT: usize = 4;
/// Events waiting to be posted, at most; beyond that they are dropped, as client-go's
/// broadcaster drops them when its queue is full.
const EVENTS_QUEUED: usize = 1000;

/// An Event waiting to be posted.
struct Pending {
    regarding: ObjectReference,
    type_: EventType,
    reason: String,
    note: String,
    trace_id: Option<String>,
    /// The reconcile's trace context, so that the POST shows in the reconcile's trace.
    parent: opentelemetry::Context,
}

/// Posts Events off the reconcile's path. A reconcile hands its Event over and goes on; one
/// task posts them, [`EVENTS_IN_FLIGHT`] at a time. An Event tells what happened, nothing
/// waits for it: under churn its round trip took a third of the workers' time, and the
/// changes queued behind it waited for it. Bounded: a slow API server makes Events queue up
/// to [`EVENTS_QUEUED`], then they are dropped with a warning, never piled up as requests.
#[derive(Clone)]
pub struct EventSender {
    tx: mpsc::Sender<Pending>,
}

impl EventSender {
    /// The sender, and the task that posts what it is given until every sender is dropped.
    pub fn start(recorder: Arc<Recorder>, writer: Writer) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<Pending>(EVENTS_QUEUED);
        let task = tokio::spawn(async move {
            futures::stream::poll_fn(|cx| rx.poll_recv(cx))
                .for_each_concurrent(EVENTS_IN_FLIGHT, |p| {
                    let (recorder, writer) = (recorder.clone(), writer.clone());
                    let span = tracing::info_span!("event", reason = %p.reason);
                    {
                        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
                        let _ = span.set_parent(p.parent.clone());
                    }
                    async move {
                        let sent = recorder
                            .publish(
                                &writer,
                                &p.regarding,
                                p.type_,
                                &p.reason,
                                p.note,
                                p.trace_id.as_deref(),
                            )
                            .await;
                        if let Err(e) = sent {
                            warn!(error = %e, reason = %p.reason, "could not publish event");
                        }
                    }
                    .instrument(span)
                })
                .await;
        });
        (EventSender { tx }, task)
    }

    /// Queues an Event about `regarding`, as part of the current span's trace.
    pub fn send(
        &self,
        regarding: ObjectReference,
        type_: EventType,
        reason: &str,
        note: String,
        trace_id: Option<String>,
    ) {
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let pending = Pending {
            regarding,
            type_,
            reason: reason.to_owned(),
            note,
            trace_id,
            parent: tracing::Span::current().context(),
        };
        if let Err(mpsc::error::TrySendError::Full(p)) = self.tx.try_send(pending) {
            warn!(
                reason = %p.reason,
                queued = EVENTS_QUEUED,
                "too many events waiting for the API server; dropping this one"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::{EventType, Key, PRUNE_EVERY, Recent, RecentEvents, SERIES_WINDOW, truncate_note};

    fn key(uid: &str) -> Key {
        Key {
            uid: uid.to_owned(),
            type_: EventType::Normal,
            reason: "Applied".to_owned(),
            note: "n".to_owned(),
        }
    }

    fn recent(ago: Duration) -> Arc<tokio::sync::Mutex<Option<Recent>>> {
        Arc::new(tokio::sync::Mutex::new(Some(Recent {
            name: "e".to_owned(),
            count: 1,
            at: Instant::now() - ago,
        })))
    }

    #[test]
    fn recent_events_are_pruned_only_every_so_often_and_slots_in_use_stay() {
        let in_use = Arc::new(tokio::sync::Mutex::new(None));
        let _held = in_use.try_lock().unwrap();
        let mut events = RecentEvents {
            by_key: HashMap::from([
                (key("old"), recent(SERIES_WINDOW + Duration::from_secs(1))),
                (key("fresh"), recent(Duration::from_secs(1))),
                (key("failed"), Arc::new(tokio::sync::Mutex::new(None))),
                (key("in-use"), in_use.clone()),
            ]),
            pruned_at: Instant::now(),
        };
        events.slot(key("a"));
        assert_eq!(events.by_key.len(), 5, "pruned before PRUNE_EVERY");
        events.pruned_at = Instant::now() - PRUNE_EVERY;
        events.slot(key("b"));
        let mut left: Vec<&str> = events.by_key.keys().map(|k| k.uid.as_str()).collect();
        left.sort();
        assert_eq!(left, ["b", "fresh", "in-use"]);
        assert!(events.pruned_at.elapsed() < PRUNE_EVERY);
    }

    #[test]
    fn notes_are_cut_to_the_api_limit_on_a_char_boundary() {
        let note = "é".repeat(600); // 1200 bytes
        let cut = truncate_note(note, 0);
        assert!(cut.len() <= 1000);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(truncate_note("short".into(), 0), "short");
        assert!(truncate_note("x".repeat(2000), 48).len() <= 952);
    }
}
