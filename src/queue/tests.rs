use std::time::Duration;

use super::*;

fn config() -> QueueConfig {
    QueueConfig::default()
}

fn k(key: &str) -> SetKey {
    key.parse().expect("a namespace/name key")
}

async fn key(q: &WorkQueue) -> String {
    q.get().await.expect("queue open").key.to_string()
}

/// `get` that must not wait (paused time: a pending get would auto-advance the clock).
async fn try_key(q: &WorkQueue) -> Option<String> {
    tokio::time::timeout(Duration::from_millis(1), q.get())
        .await
        .ok()
        .flatten()
        .map(|i| i.key.to_string())
}

#[tokio::test(start_paused = true)]
async fn keys_are_deduplicated() {
    let q = WorkQueue::new(config());
    q.add(&k("a/x"), Priority::Normal, Trigger::Update).await;
    q.add(&k("a/x"), Priority::Normal, Trigger::Update).await;
    q.add(&k("a/y"), Priority::Normal, Trigger::Update).await;
    assert_eq!(q.len(), 2);
    assert_eq!(key(&q).await, "a/x");
    assert_eq!(key(&q).await, "a/y");
    assert_eq!(try_key(&q).await, None);
}

#[tokio::test(start_paused = true)]
async fn a_key_is_never_processed_twice_at_once_and_dirty_keys_run_again() {
    let q = WorkQueue::new(config());
    q.add(&k("a/x"), Priority::Normal, Trigger::Update).await;
    let taken = k(&key(&q).await);
    q.add(&k("a/x"), Priority::Normal, Trigger::Update).await;
    q.add(&k("a/x"), Priority::Normal, Trigger::Update).await;
    assert_eq!(
        try_key(&q).await,
        None,
        "not handed to a second worker while processing"
    );
    q.done(&taken);
    assert_eq!(
        try_key(&q).await.as_deref(),
        Some("a/x"),
        "dirty key runs again, once"
    );
    q.done(&k("a/x"));
    assert_eq!(try_key(&q).await, None);
}

#[tokio::test(start_paused = true)]
async fn backoff_doubles_caps_and_resets_on_success() {
    let q = WorkQueue::new(QueueConfig {
        max_delay: Duration::from_millis(80),
        retry_rate: 0.0,
        ..config()
    });
    let delays: Vec<u128> = (0..6)
        .map(|_| q.retry(&k("a/x"), Priority::Normal).as_millis())
        .collect();
    assert_eq!(delays, [5, 10, 20, 40, 80, 80]);
    q.forget(&k("a/x"));
    assert_eq!(q.retry(&k("a/x"), Priority::Normal).as_millis(), 5);
}

#[tokio::test(start_paused = true)]
async fn retried_keys_come_back_after_their_delay() {
    let q = WorkQueue::new(config());
    q.add(&k("a/x"), Priority::Normal, Trigger::Update).await;
    let taken = k(&key(&q).await);
    let delay = q.retry(&taken, Priority::Normal);
    q.done(&taken);
    assert_eq!(delay, Duration::from_millis(5));
    assert_eq!(try_key(&q).await, None);
    tokio::time::sleep(Duration::from_millis(6)).await;
    assert_eq!(try_key(&q).await.as_deref(), Some("a/x"));
}

#[tokio::test(start_paused = true)]
async fn the_token_bucket_limits_retries_of_many_keys() {
    let q = WorkQueue::new(QueueConfig {
        retry_rate: 10.0,
        retry_burst: 100,
        ..config()
    });
    let delays: Vec<Duration> = (0..103)
        .map(|i| q.retry(&k(&format!("a/k{i}")), Priority::Normal))
        .collect();
    assert!(
        delays[..100].iter().all(|d| *d == Duration::from_millis(5)),
        "the burst goes at the per-key delay"
    );
    assert_eq!(delays[100], Duration::from_millis(100));
    assert_eq!(delays[101], Duration::from_millis(200));
    assert_eq!(delays[102], Duration::from_millis(300));
}

#[tokio::test(start_paused = true)]
async fn an_event_does_not_cut_a_backoff_short_but_a_spec_change_does() {
    let q = WorkQueue::new(QueueConfig {
        base_delay: Duration::from_secs(3),
        retry_rate: 0.0,
        ..config()
    });
    q.retry(&k("a/x"), Priority::Normal);
    tokio::time::sleep(Duration::from_millis(10)).await;
    q.add(&k("a/x"), Priority::Normal, Trigger::Update).await;
    assert_eq!(
        try_key(&q).await,
        None,
        "a status echo waits for the backoff"
    );
    q.add_now(&k("a/x"), Priority::Normal, Trigger::Update)
        .await;
    assert_eq!(
        try_key(&q).await.as_deref(),
        Some("a/x"),
        "a spec change is worked on at once"
    );
}

#[tokio::test(start_paused = true)]
async fn producers_wait_at_capacity() {
    let q = WorkQueue::new(QueueConfig {
        capacity: 2,
        ..config()
    });
    q.add(&k("a/1"), Priority::Normal, Trigger::Update).await;
    q.add(&k("a/2"), Priority::Normal, Trigger::Update).await;
    let third = tokio::spawn({
        let q = q.clone();
        async move { q.add(&k("a/3"), Priority::Normal, Trigger::Update).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!third.is_finished(), "the third add waits");
    assert_eq!(q.len(), 2);
    // Re-adding a queued key never waits.
    q.add(&k("a/1"), Priority::Normal, Trigger::Update).await;
    assert_eq!(key(&q).await, "a/1");
    third.await.unwrap();
    assert_eq!(q.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn normal_priority_goes_first_and_upgrades_move_keys_up() {
    let q = WorkQueue::new(config());
    q.add(&k("a/resync-1"), Priority::Low, Trigger::Resync)
        .await;
    q.add(&k("a/resync-2"), Priority::Low, Trigger::Resync)
        .await;
    q.add(&k("b/edit"), Priority::Normal, Trigger::Update).await;
    q.add(&k("a/resync-2"), Priority::Normal, Trigger::Update)
        .await;
    assert_eq!(key(&q).await, "b/edit");
    assert_eq!(key(&q).await, "a/resync-2");
    assert_eq!(key(&q).await, "a/resync-1");
}

#[tokio::test(start_paused = true)]
async fn finishing_a_set_goes_before_starting_the_next() {
    let q = WorkQueue::new(config());
    for i in 0..100 {
        q.add(
            &k(&format!("ns-{i}/new")),
            Priority::Normal,
            Trigger::Create,
        )
        .await;
    }
    q.add(
        &k("ns-7/first-status"),
        Priority::Finish,
        Trigger::ChildStatus,
    )
    .await;
    assert_eq!(key(&q).await, "ns-7/first-status");
    assert_eq!(key(&q).await, "ns-0/new");
}

#[tokio::test(start_paused = true)]
async fn namespaces_are_served_in_turn() {
    let q = WorkQueue::new(config());
    for i in 0..5000 {
        q.add(
            &k(&format!("flood/set-{i}")),
            Priority::Normal,
            Trigger::Update,
        )
        .await;
    }
    q.add(&k("quiet/only"), Priority::Normal, Trigger::Update)
        .await;
    let first: Vec<String> = [key(&q).await, key(&q).await].into();
    assert!(
        first.contains(&"quiet/only".to_owned()),
        "served within the first two: {first:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn retain_drops_queued_and_waiting_keys_and_their_failures() {
    let q = WorkQueue::new(QueueConfig {
        retry_rate: 0.0,
        ..config()
    });
    q.add(&k("lost/a"), Priority::Normal, Trigger::Update).await;
    q.add(&k("kept/b"), Priority::Normal, Trigger::Update).await;
    for _ in 0..4 {
        q.retry(&k("lost/c"), Priority::Normal);
        q.retry(&k("kept/d"), Priority::Normal);
    }
    q.retain(|k| k.namespace() != "lost");
    assert_eq!(q.len(), 1);
    assert_eq!(q.waiting(), 1, "kept/d still waits");
    assert_eq!(key(&q).await, "kept/b");
    // The shard comes back: its keys start their backoff over, the others do not.
    assert_eq!(q.retry(&k("lost/c"), Priority::Normal).as_millis(), 5);
    assert_eq!(q.retry(&k("kept/d"), Priority::Normal).as_millis(), 80);
}

#[tokio::test(start_paused = true)]
async fn shut_down_releases_waiting_workers() {
    let q = WorkQueue::new(config());
    let waiter = tokio::spawn({
        let q = q.clone();
        async move { q.get().await }
    });
    tokio::task::yield_now().await;
    q.shut_down();
    assert_eq!(waiter.await.unwrap(), None);
}

#[tokio::test(start_paused = true)]
async fn metrics_follow_client_go_names() {
    let q = WorkQueue::new(config());
    let mut registry = prometheus_client::registry::Registry::default();
    q.metrics().register(&mut registry);
    q.add(&k("a/x"), Priority::Normal, Trigger::Update).await;
    q.add(&k("a/y"), Priority::Normal, Trigger::Update).await;
    let taken = k(&key(&q).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    q.update_unfinished_work();
    q.retry(&taken, Priority::Normal);
    q.done(&taken);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for line in [
        "workqueue_depth{name=\"vecodexsets\"} 1",
        "workqueue_adds_total{name=\"vecodexsets\"} 2",
        "workqueue_retries_total{name=\"vecodexsets\"} 1",
        "workqueue_queue_duration_seconds_count{name=\"vecodexsets\"} 1",
        "workqueue_work_duration_seconds_count{name=\"vecodexsets\"} 1",
        "workqueue_unfinished_work_seconds{name=\"vecodexsets\"} 2.0",
        "workqueue_longest_running_processor_seconds{name=\"vecodexsets\"} 2.0",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
}

#[tokio::test(start_paused = true)]
async fn items_carry_their_trigger_and_attempt() {
    let q = WorkQueue::new(config());
    q.add(&k("a/x"), Priority::Low, Trigger::Resync).await;
    q.add(&k("a/x"), Priority::Normal, Trigger::SpecChange)
        .await;
    let item = q.get().await.unwrap();
    assert_eq!(
        (item.trigger, item.attempt),
        (Trigger::SpecChange, 1),
        "the reason that raised the priority"
    );
    q.retry(&item.key, item.priority);
    q.done(&item.key);
    tokio::time::sleep(Duration::from_millis(6)).await;
    let again = q.get().await.unwrap();
    assert_eq!((again.trigger, again.attempt), (Trigger::Retry, 2));
}
