//! Alerts on real metric changes (a SQLite table grown past its thresholds and shrunk again):
//! firing, acknowledgement, escalation, resolution, deduplication, for-duration, manual resolve,
//! bounded history, WatchAlerts, the health score, and notifications received by a real local
//! HTTP listener (signed, retried after a failure) and a real local SMTP listener.

use std::time::Duration;

use diesel_async::SimpleAsyncConnection;
use futures::StreamExt;
use hmac::{Hmac, KeyInit, Mac};
use strata_client::{
    Client,
    alerts::{AlertChange, AlertMetric, AlertQuery, AlertRule, AlertSeverity, AlertState},
    scheduler::{JobKind, JobRunState, JobSpec},
};
use strata_tests::{
    TestServer,
    notify::{SmtpSink, WebhookSink},
    server::test_config,
};
use tonic::Code;

use crate::support::eventually;

const SECRET: &str = "webhook-secret";

/// Runs the alert-evaluation job now and waits for it.
async fn evaluate(c: &Client) -> String {
    let r = c.run_job_now("alert-evaluation").await.unwrap();
    let r = crate::support::finished_run(c, &r.id).await;
    assert_eq!(r.state, JobRunState::Succeeded, "{r:?}");
    r.message
}

/// Grows `t` by `rows` rows of 10 KiB.
async fn grow(db: &std::path::Path, from: i64, rows: i64) {
    let mut c = crate::support::sqlite(db).await;
    c.batch_execute(&format!(
        "WITH RECURSIVE s(i) AS (SELECT {from} UNION ALL SELECT i + 1 FROM s WHERE i < {})
         INSERT INTO messages SELECT i, randomblob(10240) FROM s;",
        from + rows - 1
    ))
    .await
    .unwrap();
}

async fn only(c: &Client, rule: &str) -> Vec<strata_client::alerts::Alert> {
    c.list_alerts(&AlertQuery { rule: Some(rule.into()), ..Default::default() }, 100).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn alerts_fire_escalate_acknowledge_resolve_and_notify_on_real_growth() {
    let hook = WebhookSink::start(1).await.unwrap();
    let smtp = SmtpSink::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let mut config = test_config(format!("sqlite://{}", db.display()), vec![], &dir.path().join("objects"));
    config.run_scheduler = true;
    config.alert_webhook_url = Some(hook.url());
    config.alert_webhook_secret = Some(SECRET.into());
    config.alert_smtp_url = Some(smtp.url());
    config.alert_email_from = "strata@example.com".into();
    config.alert_email_to = vec!["ops@example.com".into(), "dba@example.com".into()];
    config.alert_history = 2;
    let server = TestServer::start(config).await.unwrap();
    let c = server.client().await;
    // Evaluations happen when this test says: the built-in jobs are paused, the built-in rules
    // (whose disk and latency figures depend on the machine) disabled.
    for j in c.list_jobs().await.unwrap() {
        c.pause_job(&j.spec.name).await.unwrap();
    }
    let builtin = c.list_rules().await.unwrap();
    assert_eq!(builtin.len(), 6);
    let db_size = builtin.iter().find(|r| r.name == "database-size").unwrap();
    assert_eq!((db_size.warning, db_size.critical), (Some(500.0 * 1048576.0), Some(1024.0 * 1048576.0)));
    for mut r in builtin {
        r.enabled = false;
        c.update_rule(&r, &["enabled"]).await.unwrap();
    }
    assert_eq!(c.delete_rule("database-size").await.unwrap_err().code(), Some(Code::FailedPrecondition));

    crate::support::sqlite(&db)
        .await
        .batch_execute("CREATE TABLE messages (id INTEGER PRIMARY KEY, body BLOB)")
        .await
        .unwrap();
    let mut rule = AlertRule::new("big-messages", AlertMetric::TableSize, Some(500_000.0), Some(2_000_000.0));
    rule.table = "messages".into();
    rule.labels.insert("team".into(), "chat".into());
    // Bad rules change nothing.
    let bad = AlertRule { critical: Some(100.0), ..rule.clone() };
    assert_eq!(c.create_rule(&bad).await.unwrap_err().code(), Some(Code::InvalidArgument));
    c.create_rule(&rule).await.unwrap();
    assert_eq!(c.create_rule(&rule).await.unwrap_err().code(), Some(Code::AlreadyExists));

    // No pause after subscribing: once the call is answered, every later change reaches it.
    let mut watch = Box::pin(c.watch_alerts(false, None, Some("big-messages")).await.unwrap());

    // Below the warning threshold: nothing.
    grow(&db, 1, 10).await;
    evaluate(&c).await;
    assert!(only(&c, "big-messages").await.is_empty());

    // Past the warning threshold: one firing warning alert, deduplicated across evaluations.
    grow(&db, 11, 60).await;
    evaluate(&c).await;
    evaluate(&c).await;
    let alerts = only(&c, "big-messages").await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let a = &alerts[0];
    assert_eq!((a.state, a.severity), (AlertState::Firing, AlertSeverity::Warning), "{a:?}");
    assert!(a.value >= 500_000.0 && a.threshold == 500_000.0, "{a:?}");
    assert_eq!(a.labels["table"], "main.messages");
    assert_eq!(a.labels["team"], "chat");
    assert!(a.summary.contains("table=main.messages"), "{}", a.summary);
    let id = a.id.clone();

    // Acknowledged by the operator (loopback), with a note.
    let acked = c.acknowledge_alert(&id, "looking into it").await.unwrap();
    assert_eq!((acked.state, acked.acknowledged_by.as_str()), (AlertState::Acknowledged, "loopback"));
    assert_eq!(c.acknowledge_alert(&id, "").await.unwrap_err().code(), Some(Code::FailedPrecondition));

    // Past the critical threshold: the same alert escalates and fires again.
    grow(&db, 71, 200).await;
    evaluate(&c).await;
    let a = &only(&c, "big-messages").await[0];
    assert_eq!(
        (a.id.as_str(), a.state, a.severity),
        (id.as_str(), AlertState::Firing, AlertSeverity::Critical),
        "{a:?}"
    );
    let health = c.health_report().await.unwrap();
    let critical = health.factors.iter().find(|f| f.name == "critical_alerts").unwrap();
    assert_eq!(critical.penalty, 25, "{health:?}");
    assert!(health.score <= 75, "{health:?}");

    // The table shrinks: resolved by strata.
    crate::support::sqlite(&db).await.batch_execute("DELETE FROM messages; VACUUM;").await.unwrap();
    evaluate(&c).await;
    let a = &only(&c, "big-messages").await[0];
    assert_eq!((a.state, a.resolved_by.as_str()), (AlertState::Resolved, "strata"), "{a:?}");
    assert!(c.health_report().await.unwrap().score > health.score);

    // The timeline tells the story in order.
    let d = c.alert(&id).await.unwrap();
    let kinds: Vec<&str> = d.events.iter().map(|e| e.kind.as_str()).filter(|k| !k.starts_with("notif")).collect();
    assert_eq!(kinds, ["firing", "acknowledged", "escalated", "resolved"], "{:?}", d.events);
    assert_eq!(d.events.iter().find(|e| e.kind == "acknowledged").unwrap().note, "looking into it");

    // WatchAlerts saw every transition.
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let c = tokio::time::timeout(Duration::from_secs(10), watch.next()).await.expect("a change").unwrap().unwrap();
        if let AlertChange::Event { event, alert } = c {
            assert_eq!(alert.id, id);
            if !event.kind.starts_with("notif") {
                seen.push(event.kind);
            }
        }
    }
    assert_eq!(seen, ["firing", "acknowledged", "escalated", "resolved"]);

    // Webhooks: one per transition, signed, the first retried after the receiver's 500.
    let webhooks = eventually("four delivered webhooks", Duration::from_secs(20), || {
        let got = hook.received();
        async move { (got.iter().filter(|r| r.status == 200).count() >= 4).then_some(got) }
    })
    .await;
    // In order per alert: the failed first one is retried before the next goes out.
    assert_eq!(webhooks[0].status, 500);
    assert_eq!(
        webhooks[0].headers["x-strata-delivery"], webhooks[1].headers["x-strata-delivery"],
        "a retry, not a new one"
    );
    for w in &webhooks {
        assert!(w.request_line.starts_with("POST /hook"), "{w:?}");
        let ts = &w.headers["x-strata-timestamp"];
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(format!("{ts}.{}", w.body).as_bytes());
        assert_eq!(w.headers["x-strata-signature"], format!("sha256={}", hex::encode(mac.finalize().into_bytes())));
        let doc: serde_json::Value = serde_json::from_str(&w.body).unwrap();
        assert_eq!(doc["alert"]["id"], id.as_str());
    }
    let events: Vec<String> = webhooks
        .iter()
        .filter(|w| w.status == 200)
        .map(|w| serde_json::from_str::<serde_json::Value>(&w.body).unwrap()["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(events, ["firing", "acknowledged", "escalated", "resolved"]);
    // Emails: the same four, to both recipients.
    let mails = eventually("four mails", Duration::from_secs(20), || {
        let got = smtp.mails();
        async move { (got.len() >= 4).then_some(got) }
    })
    .await;
    assert_eq!(mails[0].from, "strata@example.com");
    assert_eq!(mails[0].to, ["ops@example.com", "dba@example.com"]);
    assert!(
        mails[0].data.contains("Subject: [strata] FIRING warning: table_size table=main.messages"),
        "{}",
        mails[0].data
    );
    assert!(mails[2].data.contains("ESCALATED critical"), "{}", mails[2].data);
    // Deliveries are recorded on the alert.
    let d = eventually("deliveries recorded", Duration::from_secs(10), || {
        let (c, id) = (c.clone(), id.clone());
        async move {
            let d = c.alert(&id).await.unwrap();
            (d.notifications.iter().filter(|n| n.state == "sent").count() == 8).then_some(d)
        }
    })
    .await;
    let first = d.notifications.iter().find(|n| n.channel == "webhook").unwrap();
    assert_eq!(first.attempts, 2, "{first:?}");
    assert!(first.last_error.is_empty() || first.last_error.contains("500"), "{first:?}");
    assert_eq!(d.events.iter().filter(|e| e.kind == "notified").count(), 8);

    // A for-duration holds the alert pending (not listed by default) until it has lasted.
    let mut slow = AlertRule::new("slow-messages", AlertMetric::TableSize, Some(0.0), None);
    slow.table = "messages".into();
    slow.for_duration = Duration::from_secs(1);
    c.create_rule(&slow).await.unwrap();
    evaluate(&c).await;
    assert!(only(&c, "slow-messages").await.is_empty());
    let pending = c
        .list_alerts(
            &AlertQuery { states: vec![AlertState::Pending], rule: Some("slow-messages".into()), ..Default::default() },
            10,
        )
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    evaluate(&c).await;
    let a = only(&c, "slow-messages").await;
    assert_eq!(a[0].state, AlertState::Firing, "{a:?}");
    // Resolved by hand while the condition holds: the next evaluation opens a new alert.
    c.resolve_alert(&a[0].id, "known, fixing").await.unwrap();
    assert_eq!(c.resolve_alert(&a[0].id, "").await.unwrap_err().code(), Some(Code::FailedPrecondition));
    evaluate(&c).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    evaluate(&c).await;
    let a = only(&c, "slow-messages").await;
    assert_eq!(a.len(), 2, "{a:?}");
    assert_eq!(a[0].state, AlertState::Firing);
    // Deleting the rule resolves its alert; only `alert_history` (2) resolved alerts are kept.
    c.delete_rule("slow-messages").await.unwrap();
    evaluate(&c).await;
    let resolved =
        c.list_alerts(&AlertQuery { states: vec![AlertState::Resolved], ..Default::default() }, 100).await.unwrap();
    assert_eq!(resolved.len(), 2, "{resolved:?}");
    assert_eq!(c.alert(&id).await.unwrap_err().code(), Some(Code::NotFound), "the oldest was pruned");
    server.stop().await.unwrap();
}

/// Disables every built-in rule except `keep`.
async fn only_builtin(c: &Client, keep: &[&str]) {
    for mut r in c.list_rules().await.unwrap() {
        if r.builtin && !keep.contains(&r.name.as_str()) {
            r.enabled = false;
            c.update_rule(&r, &["enabled"]).await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_job_raises_the_failed_job_alert_and_costs_health() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("strata.db");
    let server = TestServer::sqlite(dir.path()).await.unwrap();
    let c = server.client().await;
    only_builtin(&c, &["failed-job"]).await;
    crate::support::sqlite(&db)
        .await
        .batch_execute("CREATE TABLE t (id INTEGER PRIMARY KEY, created_at TEXT); INSERT INTO t VALUES (1, '2020-01-01 00:00:00');")
        .await
        .unwrap();
    c.create_policy(&strata_client::archive::ArchivePolicy {
        name: "t".into(),
        table_name: "t".into(),
        time_column: "created_at".into(),
        key_columns: vec!["id".into()],
        archive_after: Duration::from_secs(86_400),
        ..Default::default()
    })
    .await
    .unwrap();
    let job = JobSpec::new("archive-t", JobKind::Archive, "@daily").target("t");
    c.create_job(&job).await.unwrap();
    // The application drops the table under the policy: the job fails.
    crate::support::sqlite(&db).await.batch_execute("DROP TABLE t").await.unwrap();
    let r = c.run_job_now("archive-t").await.unwrap();
    let r = crate::support::finished_run(&c, &r.id).await;
    assert_eq!(r.state, JobRunState::Failed, "{r:?}");
    evaluate(&c).await;
    let a = only(&c, "failed-job").await;
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!((a[0].state, a[0].labels["job"].as_str()), (AlertState::Firing, "archive-t"));
    let h = c.health_report().await.unwrap();
    assert_eq!(h.factors.iter().find(|f| f.name == "failed_jobs").unwrap().penalty, 5, "{h:?}");
    // Paused, the job no longer counts: the alert resolves.
    c.pause_job("archive-t").await.unwrap();
    evaluate(&c).await;
    assert_eq!(only(&c, "failed-job").await[0].state, AlertState::Resolved);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_in_a_default_partition_and_table_growth_alert_on_postgres() {
    let f = crate::support::PgFixture::new("alerts").await;
    let c = f.server.client().await;
    only_builtin(&c, &[]).await;
    f.sql(
        "CREATE TABLE events (id bigint, at timestamptz NOT NULL) PARTITION BY RANGE (at);
         CREATE TABLE events_default PARTITION OF events DEFAULT;
         CREATE TABLE blobs (id bigint PRIMARY KEY, body text);",
    )
    .await;
    let mut stray = AlertRule::new("stray-events", AlertMetric::DefaultPartitionRows, Some(1.0), Some(100.0));
    stray.table = "public.events".into();
    c.create_rule(&stray).await.unwrap();
    let mut big = AlertRule::new("big-blobs", AlertMetric::TableSize, Some(1_000_000.0), None);
    big.table = "blobs".into();
    c.create_rule(&big).await.unwrap();
    evaluate(&c).await;
    assert!(only(&c, "stray-events").await.is_empty());
    assert!(only(&c, "big-blobs").await.is_empty());

    f.sql("INSERT INTO events SELECT i, now() FROM generate_series(1, 5) i;").await;
    // Incompressible text, so TOAST cannot shrink it below the threshold.
    f.sql("INSERT INTO blobs SELECT i, (SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 40)) FROM generate_series(1, 1500) i; ANALYZE blobs;").await;
    evaluate(&c).await;
    let a = &only(&c, "stray-events").await[0];
    assert_eq!((a.state, a.severity, a.value), (AlertState::Firing, AlertSeverity::Warning, 5.0), "{a:?}");
    let b = &only(&c, "big-blobs").await[0];
    assert_eq!((b.state, b.labels["table"].as_str()), (AlertState::Firing, "public.blobs"), "{b:?}");

    f.sql("INSERT INTO events SELECT i, now() FROM generate_series(6, 200) i;").await;
    evaluate(&c).await;
    let a = &only(&c, "stray-events").await[0];
    assert_eq!((a.state, a.severity), (AlertState::Firing, AlertSeverity::Critical), "escalated: {a:?}");

    f.sql("DELETE FROM events; TRUNCATE blobs;").await;
    evaluate(&c).await;
    assert_eq!(only(&c, "stray-events").await[0].state, AlertState::Resolved);
    assert_eq!(only(&c, "big-blobs").await[0].state, AlertState::Resolved);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_that_does_not_read_is_resynced_and_stalls_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::sqlite(dir.path()).await.unwrap();
    let c = server.client().await;
    only_builtin(&c, &[]).await;
    // 800 tables, one alert each: 1 600 changes (firing, then resolved), more than the feed holds
    // for a subscriber that stopped reading.
    let mut sql = String::new();
    for i in 0..800 {
        sql.push_str(&format!("CREATE TABLE t{i} (id INTEGER PRIMARY KEY);"));
    }
    crate::support::sqlite(&dir.path().join("strata.db")).await.batch_execute(&sql).await.unwrap();
    let rule = AlertRule::new("every-table", AlertMetric::TableSize, Some(0.0), None);
    c.create_rule(&rule).await.unwrap();

    // The SDK opens wide HTTP/2 windows; this subscriber uses the protocol's default 64 KiB, so
    // the server soon cannot send it more and its feed position falls behind.
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .initial_stream_window_size(65_535)
        .connect()
        .await
        .unwrap();
    let mut slow = strata_client::pb::alert_service_client::AlertServiceClient::new(channel)
        .watch_alerts(strata_client::pb::WatchAlertsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let fast = c.watch_alerts(false, None, None).await.unwrap();
    let counted = tokio::spawn(async move {
        let mut fast = Box::pin(fast);
        let (mut fired, mut resolved) = (0, 0);
        while fired < 800 || resolved < 800 {
            match fast.next().await {
                Some(Ok(AlertChange::Event { event, .. })) if event.kind == "firing" => fired += 1,
                Some(Ok(AlertChange::Event { event, .. })) if event.kind == "resolved" => resolved += 1,
                Some(Ok(AlertChange::Resync)) => panic!("the reading subscriber fell behind"),
                Some(Ok(_)) => {}
                other => panic!("{other:?}"),
            }
        }
        (fired, resolved)
    });
    tokio::time::sleep(Duration::from_millis(600)).await;

    // Evaluations finish while one subscriber reads nothing.
    let m = evaluate(&c).await;
    assert!(m.contains("800 fired"), "{m}");
    c.update_rule(&AlertRule { warning: Some(1e12), ..rule }, &["warning_threshold"]).await.unwrap();
    let m = evaluate(&c).await;
    assert!(m.contains("800 resolved"), "{m}");
    let (fired, resolved) = tokio::time::timeout(Duration::from_secs(60), counted).await.expect("all changes").unwrap();
    assert_eq!((fired, resolved), (800, 800));

    // The one that did not read is told it missed changes, then gets the open alerts (none now).
    let mut resynced = false;
    while let Ok(Some(item)) = tokio::time::timeout(Duration::from_secs(5), slow.next()).await {
        if item.unwrap().kind == strata_client::pb::AlertChangeKind::Resync as i32 {
            resynced = true;
            break;
        }
    }
    assert!(resynced, "no RESYNC for a subscriber 1 600 changes behind");
    // Then the open alerts as they are, and only changes newer than them: none happen, so nothing
    // (a replay of the changes queued before the RESYNC would contradict the snapshot).
    let mut after = Vec::new();
    while let Ok(Some(item)) = tokio::time::timeout(Duration::from_secs(2), slow.next()).await {
        after.push(item.unwrap().kind);
    }
    assert!(after.is_empty(), "after RESYNC: {} items, kinds {:?}", after.len(), &after[..after.len().min(5)]);
    // A subscriber still connected (and not reading) does not hold the shutdown.
    server.stop().await.unwrap();
    drop(slow);
}

/// A subscriber gets every change made after WatchAlerts answered, and nothing from before: a
/// change made right after the call reaches it although the feed's tailer only starts following
/// the event table then (it stops while nobody watches), and an event older than a second at the
/// time of subscribing is in the snapshot, not replayed (the tailer once replayed ten seconds of
/// history to each first subscriber). Three rounds, each with a fresh first subscriber.
#[tokio::test(flavor = "multi_thread")]
async fn a_first_subscriber_sees_a_change_made_right_after_it_subscribed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let mut config = test_config(format!("sqlite://{}", db.display()), vec![], &dir.path().join("objects"));
    config.run_scheduler = true;
    let server = TestServer::start(config).await.unwrap();
    let c = server.client().await;
    for j in c.list_jobs().await.unwrap() {
        c.pause_job(&j.spec.name).await.unwrap();
    }
    for mut r in c.list_rules().await.unwrap() {
        r.enabled = false;
        c.update_rule(&r, &["enabled"]).await.unwrap();
    }
    crate::support::sqlite(&db)
        .await
        .batch_execute("CREATE TABLE messages (id INTEGER PRIMARY KEY, body BLOB)")
        .await
        .unwrap();
    grow(&db, 1, 60).await;
    for i in 0..3 {
        let mut rule = AlertRule::new(&format!("first-{i}"), AlertMetric::TableSize, Some(100_000.0), None);
        rule.table = "messages".into();
        c.create_rule(&rule).await.unwrap();
    }
    assert!(evaluate(&c).await.contains("3 fired"));
    for i in 0..3 {
        let rule = format!("first-{i}");
        let id = only(&c, &rule).await[0].id.clone();
        // Nobody watches for a while: the tailer stops (it checks every 250 ms), and the firing
        // event is more than a second old.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut watch = Box::pin(c.watch_alerts(false, None, Some(rule.as_str())).await.unwrap());
        c.acknowledge_alert(&id, "right away").await.unwrap();
        let change = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .unwrap_or_else(|_| panic!("round {i}: the acknowledgement never reached the new subscriber"))
            .unwrap()
            .unwrap();
        match change {
            AlertChange::Event { event, alert } => {
                assert_eq!((event.kind.as_str(), alert.id.as_str()), ("acknowledged", id.as_str()), "round {i}");
            }
            other => panic!("round {i}: {other:?}"),
        }
    }
    server.stop().await.unwrap();
}
