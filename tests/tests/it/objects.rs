//! The object store against a local folder and a real S3-protocol server (s3s-fs over loopback).

use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use strata_server::objects::{Error, MIN_PART_SIZE, ObjectStore, Resume, S3Settings, SizeHint, WriteState};
use strata_tests::S3Server;
use tokio_util::sync::CancellationToken;

/// A token nobody cancels: the calls that are not about cancellation.
fn live() -> CancellationToken {
    CancellationToken::new()
}

pub(crate) use strata_tests::pattern;

async fn read_all(store: &ObjectStore, key: &str, offset: u64, length: Option<u64>) -> Vec<u8> {
    let chunks: Vec<Bytes> = store.get(key, offset, length, &live()).await.unwrap().try_collect().await.unwrap();
    chunks.concat()
}

async fn write_in_chunks(store: &ObjectStore, key: &str, data: &[u8]) -> u64 {
    let mut w = store.begin_write(key, SizeHint::Exact(data.len() as u64), &live()).await.unwrap();
    for c in data.chunks(1 << 20) {
        w.write(Bytes::copy_from_slice(c)).await.unwrap();
    }
    assert_eq!(store.head(key, &live()).await.unwrap(), None, "nothing visible before finish");
    w.finish().await.unwrap()
}

async fn exercise(store: ObjectStore, part: usize) {
    for (i, len) in [0, 1, 1000, part, 3 * part + 123].into_iter().enumerate() {
        let key = format!("blobs/t{i}");
        let data = pattern(len, i as u64);
        assert_eq!(write_in_chunks(&store, &key, &data).await, len as u64);
        assert_eq!(store.head(&key, &live()).await.unwrap(), Some(len as u64));
        assert_eq!(read_all(&store, &key, 0, None).await, data, "round trip of {len} bytes");
        if len > 10 {
            assert_eq!(read_all(&store, &key, 3, Some(7)).await, data[3..10]);
            assert_eq!(read_all(&store, &key, len as u64 - 2, None).await, data[len - 2..]);
        }
    }
    // Whole-object puts: one request up to a part, a multipart upload beyond.
    for (i, len) in [0, 1, 1000, part, part + 1].into_iter().enumerate() {
        let key = format!("blobs/put{i}");
        let data = pattern(len, 50 + i as u64);
        assert_eq!(store.put(&key, Bytes::from(data.clone()), &live()).await.unwrap(), len as u64);
        assert_eq!(read_all(&store, &key, 0, None).await, data, "put of {len} bytes");
        store.delete(&key, &live()).await.unwrap();
    }
    assert!(store.get("blobs/t2", 990, Some(11), &live()).await.is_err(), "range past the end");
    assert!(matches!(
        store.get("blobs/missing", 0, None, &live()).await,
        Err(strata_server::objects::Error::NotFound(_))
    ));

    // Resume: a checkpoint keeps whole parts; writing continues from the committed offset.
    let data = pattern(2 * part + 4321, 99);
    let mut w = store.begin_write("blobs/resumed", SizeHint::Unknown, &live()).await.unwrap();
    w.write(Bytes::copy_from_slice(&data[..part + 1000])).await.unwrap();
    let committed = w.checkpoint().await.unwrap() as usize;
    assert_eq!(committed % w.part_size() as usize, 0);
    assert!(committed == part || committed == part + 1000, "{committed}");
    w.write(Bytes::copy_from_slice(&data[committed..])).await.unwrap();
    w.finish().await.unwrap();
    assert_eq!(read_all(&store, "blobs/resumed", 0, None).await, data);

    // Abort leaves nothing behind.
    let mut w = store.begin_write("blobs/aborted", SizeHint::Unknown, &live()).await.unwrap();
    w.write(Bytes::from(pattern(part + 10, 5))).await.unwrap();
    w.abort().await.unwrap();
    assert_eq!(store.head("blobs/aborted", &live()).await.unwrap(), None);

    let listed: Vec<String> = store.list("blobs/", &live()).await.unwrap().into_iter().map(|o| o.key).collect();
    assert_eq!(listed, ["blobs/resumed", "blobs/t0", "blobs/t1", "blobs/t2", "blobs/t3", "blobs/t4"]);
    store.delete("blobs/t1", &live()).await.unwrap();
    store.delete("blobs/t1", &live()).await.unwrap();
    assert_eq!(store.head("blobs/t1", &live()).await.unwrap(), None);
    assert!(store.begin_write("../escape", SizeHint::Unknown, &live()).await.is_err());
    cancellation(&store, part).await;
    handovers(&store, part).await;
}

/// A write continued by other writers from its recorded state alone (as another process would):
/// in place after a clean hand-over, then fenced while the previous writer is still alive and
/// goes on writing other bytes. The object holds exactly the right bytes, none of the stale
/// writer's.
async fn handovers(store: &ObjectStore, part: usize) {
    let key = "blobs/handover";
    let data = pattern(4 * part + 777, 31);
    let size = SizeHint::Exact(data.len() as u64);
    let mut a = store.begin_write(key, size, &live()).await.unwrap();
    a.write(Bytes::copy_from_slice(&data[..part + 500])).await.unwrap();
    let at = a.checkpoint().await.unwrap();
    // Through JSON, as the catalog keeps it.
    let state: WriteState = serde_json::from_str(&serde_json::to_string(&a.state()).unwrap()).unwrap();
    drop(a);
    let mut b = store.resume_write(key, &state, at, Resume::InPlace, size, &live()).await.unwrap();
    b.write(Bytes::copy_from_slice(&data[at as usize..2 * part + 100])).await.unwrap();
    let at = b.checkpoint().await.unwrap();
    let state = b.state();
    assert!(at >= 2 * part as u64 && at % b.part_size() == 0, "{at}");
    // B hangs; C takes over, fenced. Then B wakes up and writes (and commits) other bytes.
    let mut c = store.resume_write(key, &state, at, Resume::Fenced(3), size, &live()).await.unwrap();
    b.write(Bytes::from(vec![0xEE; 2 * part])).await.unwrap();
    b.checkpoint().await.unwrap();
    c.write(Bytes::copy_from_slice(&data[at as usize..])).await.unwrap();
    // A later stale write may land after C's bytes, too.
    b.write(Bytes::from(vec![0xDD; part])).await.unwrap();
    b.checkpoint().await.unwrap();
    assert_eq!(c.finish().await.unwrap(), data.len() as u64);
    assert!(read_all(store, key, 0, None).await == data, "the object holds none of the stale writer's bytes");
    // A state that does not fit the store is refused, not guessed at.
    let bogus = WriteState::Local { segments: vec![] };
    assert!(store.resume_write("blobs/bogus", &bogus, 10, Resume::InPlace, size, &live()).await.is_err());
    store.delete(key, &live()).await.unwrap();
}

/// A cancelled token stops every kind of call; what a writer had made durable stays reported, and
/// nothing becomes visible.
async fn cancellation(store: &ObjectStore, part: usize) {
    let cancelled = CancellationToken::new();
    cancelled.cancel();
    assert!(matches!(store.head("blobs/t0", &cancelled).await, Err(Error::Cancelled)));
    assert!(matches!(store.list("blobs/", &cancelled).await, Err(Error::Cancelled)));
    assert!(matches!(store.delete("blobs/t0", &cancelled).await, Err(Error::Cancelled)));
    assert!(matches!(store.get("blobs/t0", 0, None, &cancelled).await, Err(Error::Cancelled)));
    assert!(matches!(store.put("blobs/never", Bytes::from_static(b"x"), &cancelled).await, Err(Error::Cancelled)));
    assert!(matches!(store.begin_write("blobs/never", SizeHint::Unknown, &cancelled).await, Err(Error::Cancelled)));
    assert_eq!(store.head("blobs/t0", &live()).await.unwrap(), Some(0), "the refused delete changed nothing");
    assert_eq!(store.head("blobs/never", &live()).await.unwrap(), None);

    // A stream cancelled part-way ends with an error, not silently (which would read as the end).
    let data = pattern(3 * part + 5, 7);
    write_in_chunks(store, "blobs/long", &data).await;
    let token = CancellationToken::new();
    let mut stream = store.get("blobs/long", 0, None, &token).await.unwrap();
    let first = stream.try_next().await.unwrap().expect("a first chunk");
    assert!(!first.is_empty());
    token.cancel();
    let mut rest = Vec::new();
    let end = loop {
        match stream.try_next().await {
            Ok(Some(c)) => rest.push(c),
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    assert!(matches!(end, Some(Error::Cancelled)), "the stream ends with Cancelled, got {end:?}");
    assert!(first.len() + rest.iter().map(Bytes::len).sum::<usize>() < data.len());

    // A writer whose token fires: writes and finish refuse, the checkpoint still reports what is
    // durable, abort cleans up, nothing is ever visible.
    let token = CancellationToken::new();
    let mut w = store.begin_write("blobs/cut", SizeHint::Unknown, &token).await.unwrap();
    w.write(Bytes::copy_from_slice(&data[..2 * part + 1])).await.unwrap();
    token.cancel();
    assert!(matches!(w.write(Bytes::copy_from_slice(&data[2 * part + 1..])).await, Err(Error::Cancelled)));
    let committed = w.checkpoint().await.unwrap();
    assert!(committed <= 2 * part as u64 + 1 && committed.is_multiple_of(w.part_size()), "{committed}");
    assert_eq!(store.head("blobs/cut", &live()).await.unwrap(), None);
    assert!(matches!(w.finish().await, Err(Error::Cancelled)));
    assert_eq!(store.head("blobs/cut", &live()).await.unwrap(), None, "a refused finish publishes nothing");
    let mut w = store.begin_write("blobs/cut2", SizeHint::Unknown, &token.child_token()).await;
    assert!(matches!(w, Err(Error::Cancelled)), "a child of a cancelled token is cancelled");
    let token = CancellationToken::new();
    w = store.begin_write("blobs/cut2", SizeHint::Unknown, &token).await;
    let mut w = w.unwrap();
    w.write(Bytes::copy_from_slice(&data[..part])).await.unwrap();
    token.cancel();
    w.abort().await.unwrap();
    assert_eq!(store.head("blobs/cut2", &live()).await.unwrap(), None);
    store.delete("blobs/long", &live()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn local_store_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let store = ObjectStore::open(&format!("file://{}", dir.path().display()), &S3Settings::default()).await.unwrap();
    exercise(store, 5 << 20).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_store_round_trips() {
    let s3 = S3Server::start("strata-objects").unwrap();
    let settings = S3Settings { part_size: MIN_PART_SIZE, concurrency: 2, ..S3Settings::default() };
    let store = ObjectStore::open(&s3.url(), &settings).await.unwrap();
    exercise(store, MIN_PART_SIZE as usize).await;
    // A wrong secret is refused by the server.
    let bad = s3.url().replace(strata_tests::s3::SECRET_KEY, "wrong");
    assert!(ObjectStore::open(&bad, &settings).await.is_err());
}

/// A secret key holding `+ @ : / %` (AWS secrets hold `+` and `/`), percent-encoded in the URL as
/// RFC 3986 says: a `+` stays a `+` whether written plainly or as `%2B` (form encoding would make it
/// a space), and the rest decode to themselves. Also read from `object_store_url_file`'s text.
#[tokio::test(flavor = "multi_thread")]
async fn s3_secret_keys_with_reserved_characters() {
    let secret = "se+cr@t:/%x+y";
    let s3 = S3Server::start_with_keys("strata-odd-keys", "odd-access", secret).unwrap();
    let settings = S3Settings { part_size: MIN_PART_SIZE, concurrency: 2, ..S3Settings::default() };
    let url = |encoded: &str| format!("s3://odd-access:{encoded}@strata-odd-keys?endpoint=http://{}", s3.addr());
    for encoded in ["se%2Bcr%40t%3A%2F%25x%2By", "se+cr%40t%3A%2F%25x+y"] {
        let store = ObjectStore::open(&url(encoded), &settings).await.unwrap_or_else(|e| panic!("{encoded}: {e}"));
        write_in_chunks(&store, "k", b"hello").await;
        assert_eq!(read_all(&store, "k", 0, None).await, b"hello");
        store.delete("k", &live()).await.unwrap();
    }
    // A space where the `+` was (what form decoding would have sent) is refused.
    assert!(ObjectStore::open(&url("se%20cr%40t%3A%2F%25x%20y"), &settings).await.is_err());
}

/// FileService and ArchiveService report NOT_SERVING while the object store does not answer (the
/// server as a whole and the other services keep serving), and SERVING again once it does.
#[tokio::test(flavor = "multi_thread")]
async fn file_and_archive_services_follow_the_object_store() {
    use strata_tests::proxy::StallProxy;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

    let s3 = S3Server::start("strata-health").unwrap();
    let proxy = StallProxy::start(s3.addr()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = strata_tests::server::test_config(
        format!("sqlite://{}", dir.path().join("strata.db").display()),
        vec![],
        &dir.path().join("objects"),
    );
    config.object_store_url = s3.url_via(proxy.addr);
    // Each probe attempt gives up quickly; the probe itself is bounded at 3 s.
    config.s3_attempt_timeout = Duration::from_millis(500);
    config.s3_max_attempts = 1;
    let server = strata_tests::TestServer::start(config).await.unwrap();
    let channel = tonic::transport::Endpoint::from_shared(server.url()).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel);
    let statuses = async |health: &mut HealthClient<tonic::transport::Channel>| {
        let mut out = Vec::new();
        for service in ["", "strata.v1.FileService", "strata.v1.ArchiveService", "strata.v1.StorageService"] {
            let r = health.check(HealthCheckRequest { service: service.into() }).await.unwrap();
            out.push(r.into_inner().status() == ServingStatus::Serving);
        }
        out
    };
    let wait_for = async |health: &mut HealthClient<tonic::transport::Channel>, want: Vec<bool>| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let now = statuses(health).await;
            if now == want {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "statuses {now:?}, expected {want:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    wait_for(&mut health, vec![true, true, true, true]).await;
    proxy.stall();
    wait_for(&mut health, vec![true, false, false, true]).await;
    let ready = reqwest::get(format!("{}/readyz", server.admin_url())).await.unwrap();
    assert_eq!(ready.status(), 200, "the server as a whole still serves");
    let metrics = reqwest::get(format!("{}/metrics", server.admin_url())).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("strata_object_store_up 0"), "{metrics}");
    assert!(metrics.contains("strata_service_serving{service=\"strata.v1.FileService\"} 0"));
    proxy.resume();
    wait_for(&mut health, vec![true, true, true, true]).await;
    server.stop().await.unwrap();
}
