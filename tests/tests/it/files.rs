//! FileService end to end, the same suite against `file://` and a real S3-protocol server.

use std::{collections::BTreeMap, time::Duration};

use bytes::Bytes;
use futures::TryStreamExt;
use strata_client::scheduler::JobChanges;
use strata_client::{
    Client,
    types::{FileQuery, UploadOptions, UploadState},
};
use strata_server::{config::Config, objects::MIN_PART_SIZE};
use strata_tests::{S3Server, TestServer, server::test_config};
use tonic::Code;

use crate::{objects::pattern, support::eventually};

const PART: usize = MIN_PART_SIZE as usize;

/// A server on SQLite with the given object store, and what keeps it alive.
struct Fixture {
    server: TestServer,
    client: Client,
    dir: tempfile::TempDir,
    _s3: Option<S3Server>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Store {
    Local,
    S3,
}

async fn fixture(store: Store, tweak: impl FnOnce(&mut Config)) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(
        format!("sqlite://{}", dir.path().join("strata.db").display()),
        vec![],
        &dir.path().join("objects"),
    );
    let s3 = match store {
        Store::Local => None,
        Store::S3 => {
            let s3 = S3Server::start("strata-files").unwrap();
            config.object_store_url = s3.url();
            Some(s3)
        }
    };
    config.s3_part_size = MIN_PART_SIZE;
    config.s3_concurrency = 2;
    tweak(&mut config);
    let server = TestServer::start(config).await.unwrap();
    let client = server.client().await;
    Fixture { server, client, dir, _s3: s3 }
}

impl Fixture {
    /// A configuration for another server on this fixture's catalog and local store.
    fn local_config(&self) -> Config {
        test_config(
            format!("sqlite://{}", self.dir.path().join("strata.db").display()),
            vec![],
            &self.dir.path().join("objects"),
        )
    }
}

/// Reads a download stream to its end: the bytes read, and the error it ended with (None when it
/// ended as complete).
async fn read_rest<S, E>(mut stream: S) -> (usize, Option<E>)
where
    S: futures::Stream<Item = Result<Bytes, E>> + Unpin,
{
    let mut read = 0;
    loop {
        match stream.try_next().await {
            Ok(Some(c)) => read += c.len(),
            Ok(None) => return (read, None),
            Err(e) => return (read, Some(e)),
        }
    }
}

fn opts(owner: &str) -> UploadOptions {
    UploadOptions { owner: owner.into(), content_type: Some("application/octet-stream".into()), ..Default::default() }
}

/// Chunks of at most 1 MiB (messages are limited to 4 MiB).
fn mib_chunks(data: &[u8]) -> Vec<Bytes> {
    data.chunks(1 << 20).map(Bytes::copy_from_slice).collect()
}

fn code<T: std::fmt::Debug>(r: Result<T, strata_client::Error>) -> Code {
    r.unwrap_err().code().unwrap_or(Code::Unknown)
}

async fn round_trips(store: Store) {
    let f = fixture(store, |_| {}).await;
    for (i, len) in [0, 1, PART - 1, PART, 3 * PART + 123].into_iter().enumerate() {
        let data = pattern(len, i as u64 + 7);
        let file =
            f.client.upload_bytes(&opts("alice"), &format!("f{i}.bin"), Bytes::from(data.clone())).await.unwrap();
        assert_eq!(file.size_bytes, len as u64);
        assert_eq!(file.blake3, blake3::hash(&data).to_hex().to_string(), "content address of {len} bytes");
        assert_eq!(file.sha256, None);
        assert_eq!(file.owner, "alice");
        assert_eq!(f.client.download_bytes(&file.id, 0, 0).await.unwrap(), data, "{store:?} round trip of {len} bytes");
        assert_eq!(f.client.stat_file(&file.id).await.unwrap(), file);
        if len > 100 {
            let (off, n) = (len as u64 / 2 - 10, 50);
            assert_eq!(f.client.download_bytes(&file.id, off, n).await.unwrap(), data[off as usize..off as usize + 50]);
        }
    }
    let some = f.client.list_files(&FileQuery::default()).await.unwrap().files[0].clone();
    assert_eq!(code(f.client.download_bytes(&some.id, some.size_bytes + 1, 0).await), Code::OutOfRange);
    assert_eq!(code(f.client.stat_file("0190b1e2-0000-7000-8000-000000000000").await), Code::NotFound);
    assert_eq!(code(f.client.stat_file("not-an-id").await), Code::InvalidArgument);
    f.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn round_trips_local() {
    round_trips(Store::Local).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn round_trips_s3() {
    round_trips(Store::S3).await;
}

async fn declared_mismatches(store: Store) {
    let f = fixture(store, |_| {}).await;
    let data = Bytes::from(pattern(PART + 10, 1));
    // A stream that ends cleanly short of the declared size is progress, not failure: the upload
    // stays open at its committed offset, which the error names (message and ErrorInfo).
    let whole = Bytes::from(pattern(PART + 11, 1));
    let id = f.client.create_upload(&opts("o"), "short.bin", Some(whole.len() as u64)).await.unwrap();
    let r = f.client.resume_upload(&id, 0, futures::stream::iter(mib_chunks(&data))).await;
    let Err(strata_client::Error::Status(s)) = r else { panic!("a short stream succeeded: {r:?}") };
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    let committed = strata_client::incomplete_upload_offset(&s).expect("ErrorInfo with the committed offset");
    assert!(s.message().contains(&format!("offset {committed}")), "{}", s.message());
    // S3 keeps whole parts only; the local store every byte received.
    let expected = if store == Store::S3 { PART as u64 } else { data.len() as u64 };
    assert_eq!(committed, expected);
    let status = f.client.upload_status(&id).await.unwrap();
    assert_eq!((status.state, status.committed_offset), (UploadState::Open, committed));
    // Continued to completion, with the right bytes.
    let rest = whole.slice(committed as usize..);
    let file = f.client.resume_upload(&id, committed, futures::stream::iter(mib_chunks(&rest))).await.unwrap();
    assert_eq!(f.client.download_bytes(&file.id, 0, 0).await.unwrap(), whole);
    f.client.delete_file(&file.id).await.unwrap();
    // More than declared.
    let id = f.client.create_upload(&opts("o"), "long.bin", Some(10)).await.unwrap();
    let r = f.client.resume_upload(&id, 0, futures::stream::iter(mib_chunks(&data))).await;
    assert_eq!(code(r), Code::DataLoss);
    // Wrong SHA-256.
    let wrong = UploadOptions { declared_sha256: Some("ab".repeat(32)), ..opts("o") };
    assert_eq!(code(f.client.upload_bytes(&wrong, "sha.bin", data.clone()).await), Code::DataLoss);
    // Nothing became visible, nothing is left in the store.
    assert!(f.client.list_files(&FileQuery::default()).await.unwrap().files.is_empty());
    // The right SHA-256 is verified and kept.
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&data))
    };
    let right = UploadOptions { declared_sha256: Some(sha.to_uppercase()), ..opts("o") };
    let file = f.client.upload_bytes(&right, "sha.bin", data).await.unwrap();
    assert_eq!(file.sha256.as_deref(), Some(sha.as_str()));
    f.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn declared_mismatches_local() {
    declared_mismatches(Store::Local).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn declared_mismatches_s3() {
    declared_mismatches(Store::S3).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_and_hostile_names() {
    let f = fixture(Store::Local, |c| {
        c.max_file_size = 1000;
        c.allowed_content_types = vec!["image/*".into(), "text/plain".into()];
    })
    .await;
    let ok = UploadOptions { content_type: Some("text/plain".into()), ..opts("o") };
    for name in ["", "..", "../etc/passwd", "a/b", "a\\b", "x\u{0}y", "tab\there", &"n".repeat(300)] {
        let r = f.client.upload_bytes(&ok, name, Bytes::from_static(b"hi")).await;
        assert_eq!(code(r), Code::InvalidArgument, "name {name:?}");
    }
    let r = f.client.upload_bytes(&opts("o"), "a.bin", Bytes::from_static(b"hi")).await;
    assert_eq!(code(r), Code::InvalidArgument, "content type not allowed");
    let png = UploadOptions { content_type: Some("image/png".into()), ..opts("o") };
    f.client.upload_bytes(&png, "a.png", Bytes::from_static(b"png")).await.unwrap();
    // Over the limit: declared, and undeclared (counted while streaming).
    assert_eq!(code(f.client.create_upload(&ok, "big.txt", Some(1001)).await), Code::InvalidArgument);
    let id = f.client.create_upload(&ok, "big.txt", None).await.unwrap();
    let r = f.client.resume_upload(&id, 0, futures::stream::iter([Bytes::from(vec![b'x'; 1001])])).await;
    assert_eq!(code(r), Code::InvalidArgument);
    let bad_meta = UploadOptions { metadata: BTreeMap::from([("k".into(), "v\u{7}".into())]), ..ok.clone() };
    assert_eq!(code(f.client.upload_bytes(&bad_meta, "m.txt", Bytes::from_static(b"x")).await), Code::InvalidArgument);
    assert_eq!(f.client.list_files(&FileQuery::default()).await.unwrap().files.len(), 1);
    // Stored names are display names only: the object keys are the server's.
    let keys: Vec<String> = walk(&f.dir.path().join("objects"));
    assert!(keys.iter().all(|k| k.starts_with("blobs/") && !k.contains(".png")), "{keys:?}");
}

/// Bytes in every file under `root`, hidden ones included (an S3 server's stored parts).
fn bytes_under(root: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => dirs.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

fn walk(root: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel == ".staging" {
                continue;
            }
            if p.is_dir() { dirs.push(p) } else { out.push(rel) }
        }
    }
    out
}

async fn disconnect_then_resume(store: Store) {
    let f = fixture(store, |_| {}).await;
    let data = pattern(3 * PART + 777, 3);
    // A declared SHA-256: the hashes roll back with the writer, to the start as well.
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data));
    let o = UploadOptions { declared_sha256: Some(sha.clone()), ..opts("o") };
    let id = f.client.create_upload(&o, "resumed.bin", Some(data.len() as u64)).await.unwrap();
    if store == Store::S3 {
        // Half a part, cut: S3 keeps nothing of it, so everything starts over at 0.
        send_then_cut(&f.server, &id, &data[..PART / 2], None).await;
        assert_eq!(f.client.upload_status(&id).await.unwrap().committed_offset, 0);
    }

    // Send 2.5 parts through a proxy, then cut the connection as a network failure would.
    let proxy = strata_tests::proxy::CutProxy::start(f.server.addr).await.unwrap();
    let via_proxy = Client::connect(format!("http://{}", proxy.addr)).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let call = {
        let id = id.clone();
        tokio::spawn(
            async move { via_proxy.resume_upload(&id, 0, tokio_stream::wrappers::ReceiverStream::new(rx)).await },
        )
    };
    for chunk in data[..PART * 5 / 2].chunks(256 << 10) {
        tx.send(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    // Cut once two parts' worth has reached the store (a fixed sleep was not enough on a busy
    // machine): the store then keeps exactly two parts (S3) or at least that much (local).
    let store_dir = match store {
        Store::Local => f.dir.path().join("objects"),
        Store::S3 => f._s3.as_ref().unwrap().root.clone(),
    };
    eventually("two parts in the store", Duration::from_secs(60), || {
        let d = store_dir.clone();
        async move { (bytes_under(&d) >= 2 * PART as u64).then_some(()) }
    })
    .await;
    proxy.cut();
    assert!(call.await.unwrap().is_err(), "the interrupted call fails on the client");
    drop(tx);

    let status = eventually("a committed offset after the disconnect", Duration::from_secs(10), || {
        let (c, id) = (f.client.clone(), id.clone());
        async move { c.upload_status(&id).await.ok().filter(|s| s.committed_offset > 0) }
    })
    .await;
    assert_eq!(status.state, UploadState::Open);
    let committed = status.committed_offset as usize;
    match store {
        // S3 keeps whole parts only; the local writer keeps every byte it received.
        Store::S3 => assert_eq!(committed, 2 * PART),
        Store::Local => assert!((2 * PART..=PART * 5 / 2).contains(&committed), "{committed}"),
    }
    assert!(f.client.list_files(&FileQuery::default()).await.unwrap().files.is_empty(), "nothing visible yet");
    // Resuming anywhere but the committed offset is refused.
    let wrong = f.client.resume_upload(&id, committed as u64 + 1, futures::stream::empty()).await;
    assert_eq!(code(wrong), Code::FailedPrecondition);

    let rest: Vec<Bytes> = data[committed..].chunks(1 << 20).map(Bytes::copy_from_slice).collect();
    let file = f.client.resume_upload(&id, committed as u64, futures::stream::iter(rest)).await.unwrap();
    assert_eq!(file.size_bytes, data.len() as u64);
    assert_eq!(file.blake3, blake3::hash(&data).to_hex().to_string());
    assert_eq!(file.sha256.as_deref(), Some(sha.as_str()));
    assert_eq!(f.client.download_bytes(&file.id, 0, 0).await.unwrap(), data);
    let done = f.client.upload_status(&id).await.unwrap();
    assert_eq!((done.state, done.file_id.as_deref()), (UploadState::Complete, Some(file.id.as_str())));
    assert_eq!(code(f.client.resume_upload(&id, 0, futures::stream::empty()).await), Code::FailedPrecondition);
    f.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn disconnect_then_resume_local() {
    disconnect_then_resume(Store::Local).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn disconnect_then_resume_s3() {
    disconnect_then_resume(Store::S3).await;
}

async fn dedup_and_delete(store: Store) {
    let f = fixture(store, |_| {}).await;
    let data = Bytes::from(pattern(2 * PART + 5, 11));
    let (oa, ob) = (opts("a"), opts("b"));
    let (a, b) = tokio::join!(
        f.client.upload_bytes(&oa, "one.bin", data.clone()),
        f.client.upload_bytes(&ob, "two.bin", data.clone())
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.id, b.id);
    assert_eq!(a.blake3, b.blake3);
    let objects = match store {
        Store::Local => walk(&f.dir.path().join("objects")),
        Store::S3 => {
            let s3 = f._s3.as_ref().unwrap();
            walk(&s3.root.join(&s3.bucket)).into_iter().filter(|k| !k.starts_with(".")).collect()
        }
    };
    assert_eq!(objects.iter().filter(|k| k.starts_with("blobs/")).count(), 1, "one object for two files: {objects:?}");

    assert!(!f.client.delete_file(&a.id).await.unwrap(), "content still referenced");
    assert_eq!(code(f.client.stat_file(&a.id).await), Code::NotFound);
    assert_eq!(f.client.download_bytes(&b.id, 0, 0).await.unwrap(), data);
    assert!(f.client.delete_file(&b.id).await.unwrap(), "last reference removes the content");
    assert_eq!(code(f.client.delete_file(&b.id).await), Code::NotFound);
    // Uploading the same content again stores it anew.
    let c = f.client.upload_bytes(&opts("c"), "three.bin", data.clone()).await.unwrap();
    assert_eq!(f.client.download_bytes(&c.id, 0, 0).await.unwrap(), data);
    f.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn dedup_and_delete_local() {
    dedup_and_delete(Store::Local).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dedup_and_delete_s3() {
    dedup_and_delete(Store::S3).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn list_filters_and_pages() {
    let f = fixture(Store::Local, |_| {}).await;
    let mut ids = Vec::new();
    for (i, owner) in ["ann", "bob", "ann", "ann", "bob"].into_iter().enumerate() {
        let name = if i % 2 == 0 { format!("report-{i}.txt") } else { format!("photo_{i}.jpg") };
        ids.push(f.client.upload_bytes(&opts(owner), &name, Bytes::from(vec![i as u8; i + 1])).await.unwrap().id);
    }
    let all = f.client.list_files(&FileQuery::default()).await.unwrap();
    assert_eq!(
        all.files.iter().map(|x| x.id.clone()).collect::<Vec<_>>(),
        ids.iter().rev().cloned().collect::<Vec<_>>()
    );
    let ann = f.client.list_files(&FileQuery { owner: Some("ann".into()), ..Default::default() }).await.unwrap();
    assert_eq!(ann.files.len(), 3);
    let reports =
        f.client.list_files(&FileQuery { name_prefix: Some("report-".into()), ..Default::default() }).await.unwrap();
    assert_eq!(reports.files.len(), 3);
    // `_` is literal, not a wildcard.
    let underscore =
        f.client.list_files(&FileQuery { name_prefix: Some("photo_".into()), ..Default::default() }).await.unwrap();
    assert_eq!(underscore.files.len(), 2);
    let none =
        f.client.list_files(&FileQuery { name_prefix: Some("photo%".into()), ..Default::default() }).await.unwrap();
    assert!(none.files.is_empty());
    // Pages of two.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = f
            .client
            .list_files(&FileQuery { page_size: 2, page_token: token.clone(), ..Default::default() })
            .await
            .unwrap();
        assert!(page.files.len() <= 2);
        seen.extend(page.files.into_iter().map(|x| x.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 5);
    let later = f
        .client
        .list_files(&FileQuery {
            created_after: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(later.files.is_empty());
    let earlier = f
        .client
        .list_files(&FileQuery {
            created_before: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(earlier.files.len(), 5);
    assert_eq!(
        code(f.client.list_files(&FileQuery { page_token: "junk".into(), ..Default::default() }).await),
        Code::InvalidArgument
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sdk_upload_path_and_download_to() {
    let f = fixture(Store::S3, |_| {}).await;
    let src = f.dir.path().join("source.bin");
    let data = pattern(2 * PART + 99, 21);
    std::fs::write(&src, &data).unwrap();
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let s = seen.clone();
    let o = UploadOptions { sha256: true, ..opts("cli") };
    let file = f
        .client
        .upload_path(&src, &o, move |sent, total| {
            assert!(sent <= total);
            s.store(sent, std::sync::atomic::Ordering::Relaxed);
        })
        .await
        .unwrap();
    assert_eq!(seen.load(std::sync::atomic::Ordering::Relaxed), data.len() as u64);
    assert_eq!(file.name, "source.bin");
    assert!(file.sha256.is_some());
    let dst = f.dir.path().join("copy.bin");
    f.client.download_to(&file.id, &dst).await.unwrap();
    assert_eq!(std::fs::read(&dst).unwrap(), data);
    f.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn download_to_continues_after_a_dropped_connection() {
    let f = fixture(Store::Local, |_| {}).await;
    let data = pattern(24 << 20, 31);
    let file = f.client.upload_bytes(&opts("d"), "big.bin", Bytes::from(data.clone())).await.unwrap();
    // The first connection dies after 10 MiB have reached the client; the SDK reconnects and asks
    // for the rest.
    let proxy = strata_tests::proxy::CutOnceProxy::start(f.server.addr, 10 << 20).await.unwrap();
    let via_proxy = Client::connect(format!("http://{}", proxy.addr)).await.unwrap();
    let dst = f.dir.path().join("copy.bin");
    let got = via_proxy.download_to(&file.id, &dst).await.unwrap();
    assert_eq!(proxy.cuts(), 1, "the download was interrupted once");
    assert_eq!(got.id, file.id);
    assert_eq!(std::fs::read(&dst).unwrap(), data);
    let leftovers: Vec<_> = std::fs::read_dir(f.dir.path())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.contains(".part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    f.server.stop().await.unwrap();
}

/// Shutdown does not wait for slow transfers: an upload in progress is checkpointed and answered
/// UNAVAILABLE (a new server continues it from the committed offset), a download ends with
/// UNAVAILABLE rather than a silent cut.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_stops_transfers_resumably() {
    let f = fixture(Store::Local, |_| {}).await;
    let stored = pattern(24 << 20, 32);
    let file = f.client.upload_bytes(&opts("s"), "stored.bin", Bytes::from(stored.clone())).await.unwrap();
    // Its own connection, so the upload's connection closing cannot disturb what this one reads.
    let downloader = f.server.client().await;
    let (_, mut download) = downloader.download(&file.id, 0, 0).await.unwrap();
    let mut downloaded = download.try_next().await.unwrap().unwrap().len();

    let data = pattern(3 * PART, 33);
    let id = f.client.create_upload(&opts("s"), "cut.bin", Some(data.len() as u64)).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let upload = {
        let (c, id) = (f.client.clone(), id.clone());
        tokio::spawn(async move { c.resume_upload(&id, 0, tokio_stream::wrappers::ReceiverStream::new(rx)).await })
    };
    for chunk in data[..PART + 12345].chunks(256 << 10) {
        tx.send(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    // The sender stays open, as a slow client's would; shutdown must not wait for it. Stop only once
    // bytes have reached the store (a fixed sleep was not always enough on a busy machine).
    let staging = f.dir.path().join("objects/.staging");
    eventually("the upload's first bytes in the store", Duration::from_secs(30), || {
        let staging = staging.clone();
        async move {
            let sizes = std::fs::read_dir(&staging).ok()?.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len());
            (sizes.sum::<u64>() >= (PART / 2) as u64).then_some(())
        }
    })
    .await;
    let config = f.local_config();
    let stopping = tokio::spawn(f.server.stop());
    let ended = upload.await.unwrap().unwrap_err();
    assert_eq!(ended.code(), Some(Code::Unavailable), "{ended}");
    let (rest, end) = read_rest(download).await;
    downloaded += rest;
    let end = end.expect("the download ends with an error, not as if the file were complete");
    assert_eq!(end.code(), Some(Code::Unavailable), "{end}");
    assert!(downloaded < stored.len());
    tokio::time::timeout(Duration::from_secs(30), stopping).await.expect("shutdown finishes").unwrap().unwrap();
    drop(tx);

    let server = TestServer::start(config).await.unwrap();
    let client = server.client().await;
    let committed = client.upload_status(&id).await.unwrap().committed_offset;
    assert!(
        committed > 0 && committed <= PART as u64 + 12345,
        "what arrived before the shutdown was kept: {committed}"
    );
    let rest = mib_chunks(&data[committed as usize..]);
    let done = client.resume_upload(&id, committed, futures::stream::iter(rest)).await.unwrap();
    assert_eq!(client.download_bytes(&done.id, 0, 0).await.unwrap(), data);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_cannot_hold_the_shutdown() {
    let f = fixture(Store::Local, |c| c.shutdown_grace = Duration::from_secs(1)).await;
    let stored = pattern(24 << 20, 34);
    let file = f.client.upload_bytes(&opts("s"), "stored.bin", Bytes::from(stored.clone())).await.unwrap();
    // A download whose client reads its first message, then nothing: the server soon has no
    // window left to send in, so the call cannot end by itself, not even with its error.
    let stalled = f.server.client().await;
    let (_, mut download) = stalled.download(&file.id, 0, 0).await.unwrap();
    let mut downloaded = download.try_next().await.unwrap().unwrap().len();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Bounded by the grace period (the harness fails a stop after 120 s; before the grace period
    // existed this waited forever).
    f.server.stop().await.unwrap();
    // What the client had received is still readable; then the cut connection is an error, never
    // an end that reads as the whole file.
    let (rest, end) = read_rest(download).await;
    downloaded += rest;
    assert!(end.is_some(), "a download cut by the shutdown ended as if complete");
    assert!(downloaded < stored.len(), "{downloaded}");
}

#[tokio::test(flavor = "multi_thread")]
async fn abandoned_uploads_expire_and_their_data_goes() {
    let f = fixture(Store::Local, |c| {
        c.upload_expiry = Duration::from_secs(2);
        c.run_scheduler = true;
    })
    .await;
    // The built-in expiry job, every second instead of every ten minutes.
    let every_second = JobChanges { schedule: Some("* * * * * *".into()), ..Default::default() };
    f.client.update_job("upload-expiry", every_second).await.unwrap();
    let id = f.client.create_upload(&opts("o"), "abandoned.bin", Some(10 << 20)).await.unwrap();
    // Half the bytes arrive, then the connection dies.
    let proxy = strata_tests::proxy::CutProxy::start(f.server.addr).await.unwrap();
    let via_proxy = Client::connect(format!("http://{}", proxy.addr)).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let call = {
        let id = id.clone();
        tokio::spawn(
            async move { via_proxy.resume_upload(&id, 0, tokio_stream::wrappers::ReceiverStream::new(rx)).await },
        )
    };
    for c in mib_chunks(&pattern(5 << 20, 8)) {
        tx.send(c).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.cut();
    let _ = call.await;
    let staging = f.dir.path().join("objects/.staging");
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 1, "partial data is staged");
    let s = eventually("the upload to expire", Duration::from_secs(15), || {
        let (c, id) = (f.client.clone(), id.clone());
        async move { c.upload_status(&id).await.ok().filter(|s| s.state == UploadState::Failed) }
    })
    .await;
    assert!(s.error.unwrap().contains("expired"));
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0, "staged data removed");
    let r = f.client.resume_upload(&id, 0, futures::stream::empty()).await;
    assert_eq!(code(r), Code::FailedPrecondition);
    f.server.stop().await.unwrap();
}

async fn reconcile(store: Store) {
    let f = fixture(store, |_| {}).await;
    let keep = f.client.upload_bytes(&opts("o"), "keep.bin", Bytes::from(pattern(1000, 1))).await.unwrap();
    let gone = f.client.upload_bytes(&opts("o"), "gone.bin", Bytes::from(pattern(2000, 2))).await.unwrap();
    let root = match store {
        Store::Local => f.dir.path().join("objects"),
        Store::S3 => {
            let s3 = f._s3.as_ref().unwrap();
            s3.root.join(&s3.bucket)
        }
    };
    // Damage the store behind strata's back: one object vanishes, one appears from nowhere.
    let keys = walk(&root).into_iter().filter(|k| k.starts_with("blobs/")).collect::<Vec<_>>();
    assert_eq!(keys.len(), 2);
    let gone_key = keys.iter().find(|k| std::fs::read(root.join(k)).unwrap().len() == 2000).unwrap().clone();
    std::fs::remove_file(root.join(&gone_key)).unwrap();
    std::fs::write(root.join("blobs/stray-object"), b"nobody's").unwrap();

    let report = f.client.reconcile_objects(false, Duration::from_secs(3600)).await.unwrap();
    assert_eq!(report.orphan_object_keys, ["blobs/stray-object"]);
    assert!(report.deleted_object_keys.is_empty());
    assert_eq!(report.lost_file_ids, std::slice::from_ref(&gone.id));
    assert_eq!(report.lost_blake3, std::slice::from_ref(&gone.blake3));
    assert!(!f.client.stat_file(&gone.id).await.unwrap().lost, "a report changes nothing");

    // Repair with a long grace period keeps the fresh orphan but marks the loss.
    let report = f.client.reconcile_objects(true, Duration::from_secs(3600)).await.unwrap();
    assert!(report.deleted_object_keys.is_empty());
    assert!(f.client.stat_file(&gone.id).await.unwrap().lost);
    assert_eq!(code(f.client.download_bytes(&gone.id, 0, 0).await), Code::DataLoss);
    // Without a grace period the orphan goes; the healthy file is untouched.
    let report = f.client.reconcile_objects(true, Duration::ZERO).await.unwrap();
    assert_eq!(report.deleted_object_keys, ["blobs/stray-object"]);
    assert!(!root.join("blobs/stray-object").exists());
    assert_eq!(f.client.download_bytes(&keep.id, 0, 0).await.unwrap(), pattern(1000, 1));
    let clean = f.client.reconcile_objects(false, Duration::ZERO).await.unwrap();
    assert!(clean.orphan_object_keys.is_empty());
    f.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn reconcile_local() {
    reconcile(Store::Local).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reconcile_s3() {
    reconcile(Store::S3).await;
}

/// Sends `data` for upload `id` through a proxy, then cuts the connection: once `wait_for` bytes
/// are in the store under the given folder when asked, else after a moment.
async fn send_then_cut(server: &TestServer, id: &str, data: &[u8], wait_for: Option<(&std::path::Path, u64)>) {
    let proxy = strata_tests::proxy::CutProxy::start(server.addr).await.unwrap();
    let via_proxy = Client::connect(format!("http://{}", proxy.addr)).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let call = {
        let id = id.to_owned();
        tokio::spawn(
            async move { via_proxy.resume_upload(&id, 0, tokio_stream::wrappers::ReceiverStream::new(rx)).await },
        )
    };
    for chunk in data.chunks(256 << 10) {
        tx.send(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    match wait_for {
        Some((dir, bytes)) => {
            eventually("bytes in the store", Duration::from_secs(60), || async move {
                (bytes_under(dir) >= bytes).then_some(())
            })
            .await
        }
        None => tokio::time::sleep(Duration::from_millis(500)).await,
    }
    proxy.cut();
    assert!(call.await.unwrap().is_err(), "the interrupted call fails on the client");
}

#[tokio::test(flavor = "multi_thread")]
async fn local_upload_continues_after_a_server_restart() {
    let f = fixture(Store::Local, |_| {}).await;
    let data = pattern(3 * PART + 4321, 21);
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data));
    let o = UploadOptions { declared_sha256: Some(sha.clone()), ..opts("r") };
    let id = f.client.create_upload(&o, "restart.bin", Some(data.len() as u64)).await.unwrap();
    let objects = f.dir.path().join("objects");
    send_then_cut(&f.server, &id, &data[..2 * PART + 999], Some((&objects, PART as u64))).await;
    let committed = eventually("a committed offset", Duration::from_secs(10), || {
        let (c, id) = (f.client.clone(), id.clone());
        async move { c.upload_status(&id).await.ok().map(|s| s.committed_offset).filter(|o| *o > 0) }
    })
    .await;
    // A new server process (same catalog and store) continues at the committed offset; the hashes
    // it rebuilds from disk make the declared SHA-256 check pass.
    let config = f.local_config();
    f.server.stop().await.unwrap();
    let server = TestServer::start(config).await.unwrap();
    let client = server.client().await;
    let status = client.upload_status(&id).await.unwrap();
    assert_eq!(status.committed_offset, committed);
    let rest: Vec<Bytes> = data[committed as usize..].chunks(1 << 20).map(Bytes::copy_from_slice).collect();
    let file = client.resume_upload(&id, committed, futures::stream::iter(rest)).await.unwrap();
    assert_eq!(file.sha256.as_deref(), Some(sha.as_str()));
    assert_eq!(file.blake3, blake3::hash(&data).to_hex().to_string());
    assert_eq!(client.download_bytes(&file.id, 0, 0).await.unwrap(), data);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_upload_continues_after_a_server_restart() {
    let f = fixture(Store::S3, |_| {}).await;
    let data = pattern(3 * PART + 4321, 22);
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data));
    let o = UploadOptions { declared_sha256: Some(sha.clone()), ..opts("r") };
    let id = f.client.create_upload(&o, "restart.bin", Some(data.len() as u64)).await.unwrap();
    let root = f._s3.as_ref().unwrap().root.clone();
    send_then_cut(&f.server, &id, &data[..2 * PART + 999], Some((&root, PART as u64))).await;
    let committed = eventually("a committed offset", Duration::from_secs(10), || {
        let (c, id) = (f.client.clone(), id.clone());
        async move { c.upload_status(&id).await.ok().map(|s| s.committed_offset).filter(|o| *o > 0) }
    })
    .await;
    assert_eq!(committed % PART as u64, 0);
    let mut config = f.local_config();
    config.object_store_url = f._s3.as_ref().unwrap().url();
    config.s3_part_size = MIN_PART_SIZE;
    f.server.stop().await.unwrap();
    let server = TestServer::start(config).await.unwrap();
    let client = server.client().await;
    // The multipart upload and the hashes continue from the catalog: no byte is sent twice, and
    // the declared SHA-256 still verifies.
    assert_eq!(client.upload_status(&id).await.unwrap().committed_offset, committed);
    let rest: Vec<Bytes> = data[committed as usize..].chunks(1 << 20).map(Bytes::copy_from_slice).collect();
    let file = client.resume_upload(&id, committed, futures::stream::iter(rest)).await.unwrap();
    assert_eq!(file.sha256.as_deref(), Some(sha.as_str()));
    assert_eq!(client.download_bytes(&file.id, 0, 0).await.unwrap(), data);
    server.stop().await.unwrap();
}
