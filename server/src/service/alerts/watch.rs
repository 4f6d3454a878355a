//! The live feed of alert changes (WatchAlerts): the tail of the event table that feeds this
//! instance's broadcast channel, and each subscriber's filtered stream.

use std::{collections::BTreeMap, time::Duration};

use chrono::NaiveDateTime;
use tokio::sync::broadcast;

use super::{Alert, AlertEvent, AlertFilter, AlertState, Context, Result, Severity, list_alerts};
use crate::{db::alerts as store, service::Error};

/// A change pushed to WatchAlerts subscribers.
#[derive(Debug, Clone)]
pub enum Change {
    /// An event of an alert, with the alert as it was after it.
    Event(Box<(AlertEvent, Alert)>),
    /// The subscriber fell behind and missed changes: what follows is the current open alerts.
    Resync,
}

/// The feed of this instance: the channel its subscribers listen on, and where its tailer must
/// start when it (re)starts.
#[derive(Debug)]
pub struct Feed {
    tx: broadcast::Sender<Change>,
    /// The newest event id a subscriber had seen reflected when it read its snapshot: the tailer,
    /// when it starts, publishes every event after it. Without this, events between the first
    /// subscriber's snapshot and the tailer's first step would reach nobody.
    start: std::sync::Mutex<Option<(i64, NaiveDateTime)>>,
}

impl Default for Feed {
    fn default() -> Self {
        Self { tx: broadcast::channel(FEED_CAPACITY).0, start: Default::default() }
    }
}

impl Feed {
    /// Subscribers listening now.
    pub fn receiver_count(&self) -> usize {
        self.tx.receiver_count()
    }

    fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.tx.subscribe()
    }

    fn send(&self, c: Change) {
        let _ = self.tx.send(c);
    }

    /// A subscriber is about to read its snapshot, which reflects every event up to `id`, read at
    /// `at` (the database's time).
    fn start_after(&self, id: i64, at: NaiveDateTime) {
        let mut s = self.start.lock().expect("feed lock");
        *s = Some(match *s {
            Some((old, old_at)) if old < id => (old, old_at),
            _ => (id, at),
        });
    }

    fn take_start(&self) -> Option<(i64, NaiveDateTime)> {
        self.start.lock().expect("feed lock").take()
    }
}

/// How many changes a subscriber may be behind before it is told to resync.
pub const FEED_CAPACITY: usize = 1024;
/// Events committed up to this late (out of id order) are still seen.
const TAIL_WINDOW: Duration = Duration::from_secs(10);

/// Where the feed's tailer is in the event table. The loop in `jobs::feed` calls [`Tail::step`]
/// while anyone listens, and [`Tail::reset`] while nobody does.
#[derive(Debug, Default)]
pub struct Tail {
    /// The highest event id published (None: start from the newest at the next step).
    last: Option<i64>,
    /// Events published within the window, so one committed late is published once.
    seen: BTreeMap<i64, NaiveDateTime>,
}

impl Tail {
    /// Nobody listens: the next subscriber starts from what is new then.
    pub fn reset(&mut self) {
        self.last = None;
    }

    /// Reads the events recorded since the last step and publishes each on `ctx.alert_feed`.
    pub async fn step(&mut self, ctx: &Context) -> Result<()> {
        let Self { last, seen } = self;
        let mut conn = ctx.db.read_prefer_primary().await?.0;
        let t = ctx.now();
        let mut settled_before = None;
        let after = match (*last, ctx.alert_feed.take_start()) {
            (Some(l), _) => l,
            // Starting: from where the first subscriber's snapshot ends (so nothing between the two
            // is lost), else from now.
            (None, start) => {
                seen.clear();
                // Events up to the starting place that are older than a second then are in the
                // subscriber's snapshot: not replayed. Younger ones may still have been committing
                // (ids are taken before commit) and are published — at worst twice. (No place yet:
                // a subscriber is between subscribing and reading its place; it reads it after
                // this, so starting from the newest event now loses nothing.)
                let (l, at) = match start {
                    Some(place) => place,
                    None => (store::last_event_id(&mut conn).await?, t),
                };
                settled_before = Some(at - chrono::Duration::seconds(1));
                *last = Some(l);
                l
            }
        };
        let since = t - chrono::Duration::from_std(TAIL_WINDOW).expect("small");
        for ev in store::recent_events(&mut conn, after, since, 1000).await? {
            if ev.id <= after && seen.contains_key(&ev.id) {
                continue;
            }
            if seen.insert(ev.id, ev.at).is_some() {
                continue;
            }
            if ev.id <= after && settled_before.is_some_and(|b| ev.at < b) {
                continue;
            }
            *last = Some(last.unwrap_or(0).max(ev.id));
            if let Some(a) = store::get_alert(&mut conn, &ev.alert_id).await? {
                ctx.alert_feed.send(Change::Event(Box::new((ev.into(), a.into()))));
            }
        }
        seen.retain(|_, at| *at >= since - chrono::Duration::seconds(1));
        Ok(())
    }
}

/// What WatchAlerts sends.
#[derive(Debug, Clone)]
pub enum WatchItem {
    /// An open alert as it is.
    Snapshot(Box<Alert>),
    /// An event and the alert after it.
    Event(Box<(AlertEvent, Alert)>),
    /// The subscriber missed changes; snapshots follow.
    Resync,
}

/// Which changes a subscriber wants.
#[derive(Debug, Clone, Default)]
pub struct WatchFilter {
    /// Open alerts first.
    pub send_initial: bool,
    /// At least this severity.
    pub min_severity: Option<Severity>,
    /// Only this rule.
    pub rule: Option<String>,
}

impl WatchFilter {
    fn passes(&self, a: &Alert) -> bool {
        self.rule.as_ref().is_none_or(|r| r == &a.rule) && self.min_severity.is_none_or(|m| a.severity >= m)
    }
}

async fn send_open(
    ctx: &Context,
    f: &WatchFilter,
    tx: &tokio::sync::mpsc::Sender<Result<WatchItem>>,
) -> std::result::Result<(), ()> {
    let states = vec![AlertState::Firing, AlertState::Acknowledged];
    match list_alerts(ctx, &AlertFilter { states, ..Default::default() }, 10_000, None).await {
        Ok((open, _)) => {
            for a in open.into_iter().rev().filter(|a| f.passes(a)) {
                deliver(ctx, tx, Ok(WatchItem::Snapshot(Box::new(a)))).await?;
            }
            Ok(())
        }
        Err(e) => {
            let _ = deliver(ctx, tx, Err(e)).await;
            Err(())
        }
    }
}

/// Hands one item to the subscriber's stream; Err when the subscriber went away or the server is
/// stopping. A subscriber that stopped reading must not keep this task (and the server's
/// shutdown) waiting in a full channel.
async fn deliver(
    ctx: &Context,
    tx: &tokio::sync::mpsc::Sender<Result<WatchItem>>,
    item: Result<WatchItem>,
) -> std::result::Result<(), ()> {
    tokio::select! {
        biased;
        _ = ctx.closing.cancelled() => Err(()),
        sent = tx.send(item) => sent.map_err(|_| ()),
    }
}

/// A subscriber's place on this instance's feed, taken before its snapshot is read.
pub struct Subscription {
    rx: broadcast::Receiver<Change>,
}

/// Subscribes to the feed and tells the tailer where to start (the newest event now), before the
/// snapshot is read: nothing recorded after this returns is missed (an event may also arrive that
/// the snapshot already reflects). WatchAlerts calls it before answering, so a client that sees
/// the call answered sees every change made after.
pub async fn subscribe(ctx: &Context) -> Result<Subscription> {
    let rx = ctx.alert_feed.subscribe();
    // Counted with this one: two subscribing at once never both pass the last place.
    let max = ctx.config.max_alert_watchers as usize;
    if ctx.alert_feed.receiver_count() > max {
        return Err(Error::ResourceExhausted(format!(
            "{max} WatchAlerts subscribers on this instance already (max_alert_watchers); retry later or on another instance"
        )));
    }
    let mut conn = ctx.db.read_prefer_primary().await?.0;
    ctx.alert_feed.start_after(store::last_event_id(&mut conn).await?, ctx.now());
    Ok(Subscription { rx })
}

/// Streams alert changes to `tx` until the subscriber goes away or the server stops: the open
/// alerts first (when asked), then every change from the place `sub` holds.
pub async fn watch(ctx: Context, f: WatchFilter, sub: Subscription, tx: tokio::sync::mpsc::Sender<Result<WatchItem>>) {
    let mut rx = sub.rx;
    if f.send_initial && send_open(&ctx, &f, &tx).await.is_err() {
        return;
    }
    loop {
        let item = tokio::select! {
            _ = ctx.closing.cancelled() => break,
            _ = tx.closed() => break,
            r = rx.recv() => r,
        };
        match item {
            Ok(Change::Event(b)) => {
                if f.passes(&b.1) && deliver(&ctx, &tx, Ok(WatchItem::Event(b))).await.is_err() {
                    break;
                }
            }
            Ok(Change::Resync) => {}
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::debug!(missed = n, "an alert watcher fell behind; resyncing it");
                // The changes still queued for this subscriber are older than the snapshot that
                // follows: start again from now (before reading the snapshot, so nothing after it
                // is lost) rather than replay them after it.
                rx = rx.resubscribe();
                if deliver(&ctx, &tx, Ok(WatchItem::Resync)).await.is_err() || send_open(&ctx, &f, &tx).await.is_err() {
                    break;
                }
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
}
