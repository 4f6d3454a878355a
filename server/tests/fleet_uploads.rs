//! Uploads through a fleet: `strata-server` processes on one PostgreSQL catalog and one S3 server
//! (or one shared folder), behind HAProxy, which sends each call to the next instance. An upload
//! is cut in every way a stream ends — connection lost, call cancelled, deadline passed, instance
//! SIGKILLed — and each time continues on another instance from what the catalog recorded.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use strata_client::{
    INSTANCE_HEADER,
    pb::{
        self, admin_service_client::AdminServiceClient, file_service_client::FileServiceClient, upload_request::Kind,
    },
};
use strata_tests::{
    PgCluster, S3Server,
    haproxy::{Backend, Haproxy},
    pattern,
    process::ServerProcess,
    proxy::CutProxy,
};
use tonic::transport::{Channel, Endpoint};

const MIB: usize = 1 << 20;
/// The instances' S3 part size: S3's smallest, for many parts.
const PART: usize = 5 * MIB;

async fn connect(url: String) -> Channel {
    Endpoint::from_shared(url).unwrap().connect().await.expect("connect")
}

#[derive(diesel::QueryableByName, Debug)]
struct Writing {
    #[diesel(sql_type = diesel::sql_types::Text)]
    writer: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    committed_offset: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    state: String,
}

/// Who writes upload `id` now ('' when nobody) and what it committed, straight from the catalog.
async fn writing(c: &mut diesel_async::AsyncPgConnection, id: &str) -> Writing {
    use diesel_async::RunQueryDsl;
    diesel::sql_query("SELECT writer, committed_offset, state FROM strata.uploads WHERE id = $1")
        .bind::<diesel::sql_types::Text, _>(id)
        .get_result(c)
        .await
        .unwrap()
}

#[derive(diesel::QueryableByName)]
struct StoreState {
    #[diesel(sql_type = diesel::sql_types::Text)]
    store_state: String,
}

/// The S3 multipart upload id upload `id`'s write state records.
async fn store_upload_id(c: &mut diesel_async::AsyncPgConnection, id: &str) -> String {
    use diesel_async::RunQueryDsl;
    let s: StoreState = diesel::sql_query("SELECT store_state FROM strata.uploads WHERE id = $1")
        .bind::<diesel::sql_types::Text, _>(id)
        .get_result(c)
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&s.store_state).unwrap();
    v["upload_id"].as_str().unwrap_or_default().to_owned()
}

/// Waits until `f` holds of the catalog's view of upload `id`.
async fn until(c: &mut diesel_async::AsyncPgConnection, id: &str, what: &str, f: impl Fn(&Writing) -> bool) -> Writing {
    let t0 = Instant::now();
    loop {
        let w = writing(c, id).await;
        if f(&w) {
            return w;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "waited a minute for {what}; the upload: {w:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The messages of a stream continuing upload `id` at `from`: the bytes up to `to`, then the end
/// of the stream when `close`, else nothing more (the stream stays open until cut).
fn messages(
    id: &str,
    data: Arc<Vec<u8>>,
    from: usize,
    to: usize,
    close: bool,
) -> tokio_stream::wrappers::ReceiverStream<pb::UploadRequest> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let first = pb::UploadRequest {
        kind: Some(Kind::Resume(pb::ResumeUpload { upload_id: id.to_owned(), offset: from as i64 })),
    };
    tokio::spawn(async move {
        if tx.send(first).await.is_err() {
            return;
        }
        for at in (from..to).step_by(MIB) {
            let chunk = Bytes::copy_from_slice(&data[at..(at + MIB).min(to)]);
            if tx.send(pb::UploadRequest { kind: Some(Kind::Chunk(chunk)) }).await.is_err() {
                return;
            }
        }
        if !close {
            // Held open (an idle client) until the call ends.
            tx.closed().await;
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Calls GetInfo through `channel` until `instance` answers: HAProxy's round robin then sends the
/// next call to another instance.
async fn after(channel: &Channel, instance: &str) {
    let t0 = Instant::now();
    loop {
        let r = AdminServiceClient::new(channel.clone()).get_info(pb::GetInfoRequest {}).await;
        if let Ok(r) = r
            && r.metadata().get(INSTANCE_HEADER).is_some_and(|v| v.to_str().unwrap() == instance)
        {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "{instance} never answered");
    }
}

/// A fleet of `n` instances on one catalog and one store, behind HAProxy.
struct Fleet {
    procs: Vec<ServerProcess>,
    ids: Vec<String>,
    proxy: Haproxy,
    db: diesel_async::AsyncPgConnection,
}

async fn fleet(name: &str, n: usize, objects_url: &str, extra: &[(&str, &str)]) -> Fleet {
    let cluster = PgCluster::shared();
    let db = cluster.create_database(name).await.unwrap();
    let db_url = cluster.primary_url(&db);
    let part = PART.to_string();
    let mut env = vec![
        ("STRATA_DATABASE_URL", db_url.as_str()),
        ("STRATA_OBJECT_STORE_URL", objects_url),
        ("STRATA_RUN_SCHEDULER", "false"),
        // A killed writer's lease lapses within 2 s.
        ("STRATA_RUN_LEASE", "2s"),
        ("STRATA_S3_PART_SIZE", part.as_str()),
    ];
    env.extend_from_slice(extra);
    let procs: Vec<ServerProcess> =
        (0..n).map(|_| ServerProcess::spawn(env!("CARGO_BIN_EXE_strata-server"), &env)).collect();
    let mut ids = Vec::new();
    for p in &procs {
        ids.push(p.client().await.scheduler_status().await.unwrap().this_instance);
    }
    let backends: Vec<Backend> = procs.iter().map(|p| Backend { grpc: p.addr(), admin: p.admin_addr() }).collect();
    let proxy = Haproxy::start(&backends).await.unwrap();
    let db = cluster.connect(&db).await.unwrap();
    Fleet { procs, ids, proxy, db }
}

/// Files in `dir` (not below) whose names start with `prefix`.
fn files_starting(dir: &std::path::Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// A 200 MiB upload with a declared SHA-256 on S3, cut four ways, each continuation on another
/// instance than the one cut: the file has the source's bytes, BLAKE3 and SHA-256, it is one
/// object, no multipart upload or part is left behind, and reconciliation finds no orphan.
#[tokio::test(flavor = "multi_thread")]
async fn an_upload_cut_four_ways_continues_on_other_instances() {
    let s3 = S3Server::start("fleet").unwrap();
    let mut f = fleet(
        "fleetupload",
        3,
        &s3.url(),
        &[("RUST_LOG", "warn,strata_server::service::files=debug,strata_server::objects=debug")],
    )
    .await;
    let data = Arc::new(pattern(200 * MIB, 5));
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data[..]));
    let via = connect(f.proxy.url()).await;
    let client = strata_client::Client::connect(f.proxy.url()).await.unwrap();
    let opts = strata_client::types::UploadOptions {
        owner: "fleet".into(),
        declared_sha256: Some(sha.clone()),
        ..Default::default()
    };
    let id = client.create_upload(&opts, "big.bin", Some(data.len() as u64)).await.unwrap();

    let mut last_writer = String::new();
    // The S3 multipart upload the killed instance was writing.
    let mut killed_upload = String::new();
    let mut committed = 0usize;
    let mut writers = Vec::new();
    for (cut, to) in [("connection lost", 40), ("call cancelled", 80), ("deadline", 120), ("instance killed", 160)] {
        let to = to * MIB;
        if !last_writer.is_empty() {
            after(&via, &last_writer).await;
        }
        let stream = messages(&id, data.clone(), committed, to, false);
        let cut_proxy = CutProxy::start(f.proxy.url().trim_start_matches("http://").parse().unwrap()).await.unwrap();
        let channel =
            if cut == "connection lost" { connect(format!("http://{}", cut_proxy.addr)).await } else { via.clone() };
        let mut request = tonic::Request::new(stream);
        if cut == "deadline" {
            request.set_timeout(Duration::from_secs(4));
        }
        let call = tokio::spawn(async move { FileServiceClient::new(channel).upload(request).await });
        // Bytes flow and progress is recorded by the instance that receives them.
        let w = until(&mut f.db, &id, "progress", |w| {
            !w.writer.is_empty() && w.committed_offset as usize >= committed + 10 * MIB
        })
        .await;
        assert_ne!(w.writer, last_writer, "{cut}: the stream landed on the instance that wrote before");
        let writer = w.writer.clone();
        let cut_at = Instant::now();
        match cut {
            "connection lost" => cut_proxy.cut(),
            "call cancelled" => call.abort(),
            "deadline" => {}
            _ => {
                let victim = f.ids.iter().position(|i| *i == writer).unwrap();
                f.procs[victim].kill9();
            }
        }
        let ended = call.await;
        assert!(!matches!(ended, Ok(Ok(_))), "{cut}: the cut call succeeded");
        let w = if cut == "instance killed" {
            // Nobody lets go: the next stream takes over once the lease lapses.
            killed_upload = store_upload_id(&mut f.db, &id).await;
            writing(&mut f.db, &id).await
        } else {
            // The stream's end is checkpointed: the offset is in the catalog, the upload let go.
            let w = until(&mut f.db, &id, "the checkpoint after the cut", |w| w.writer.is_empty()).await;
            let status = client.upload_status(&id).await.unwrap();
            assert_eq!(status.committed_offset, w.committed_offset as u64, "{cut}: status through another call");
            println!("{cut}: {} MiB committed, visible {:?} after the cut", w.committed_offset >> 20, cut_at.elapsed());
            w
        };
        assert_eq!(w.state, "open");
        assert!(w.committed_offset as usize > committed, "{cut}: no progress kept: {w:?}");
        assert_eq!(w.committed_offset as usize % PART, 0, "S3 keeps whole parts");
        committed = w.committed_offset as usize;
        writers.push(writer.clone());
        last_writer = writer;
    }

    // The rest, to the end, on another instance (the last writer was killed), taking over.
    let t0 = Instant::now();
    let response = loop {
        let stream = messages(&id, data.clone(), committed, data.len(), true);
        match FileServiceClient::new(via.clone()).upload(stream).await {
            Ok(r) => break r,
            // Refused while the killed writer's lease runs (ABORTED), or sent to the dead instance
            // before HAProxy's check noticed (UNAVAILABLE): a client retries.
            Err(s) if matches!(s.code(), tonic::Code::Aborted | tonic::Code::Unavailable) => {
                assert!(t0.elapsed() < Duration::from_secs(60), "never continued: {s:?}");
            }
            Err(s) => panic!("continuing after the kill: {s:?}"),
        }
    };
    let finisher = response.metadata().get(INSTANCE_HEADER).unwrap().to_str().unwrap().to_owned();
    assert_ne!(finisher, last_writer);
    writers.push(finisher);
    println!("written by, in turn: {writers:?}");
    let file = response.into_inner().file.unwrap();
    assert_eq!(file.size_bytes as usize, data.len());
    assert_eq!(file.blake3, blake3::hash(&data).to_hex().to_string());
    assert_eq!(file.sha256, sha);
    let downloaded = client.download_bytes(&file.id, 0, 0).await.unwrap();
    assert!(downloaded == *data, "the downloaded bytes differ from the source");

    // One object; no multipart upload or part left in the S3 server's storage.
    let objects = walk(&s3.root.join(&s3.bucket));
    assert_eq!(objects, ["blobs/".to_owned() + &id], "objects in the bucket");
    // A part the killed instance had wholly handed to the kernel before it died can still arrive
    // after the takeover completed that upload: S3 discards such a part, s3s-fs keeps it as a
    // file. Nothing else may be left.
    let (late, leftovers): (Vec<String>, Vec<String>) = files_starting(&s3.root, ".upload_id-")
        .into_iter()
        .partition(|f| !killed_upload.is_empty() && f.starts_with(&format!(".upload_id-{killed_upload}.part-")));
    if !leftovers.is_empty() {
        for procs in &f.procs {
            eprintln!("---- {}", procs.log());
        }
    }
    assert_eq!(leftovers, Vec::<String>::new(), "multipart leftovers");
    if !late.is_empty() {
        println!("late parts of the killed writer kept by s3s-fs: {late:?}");
    }
    assert_eq!(files_starting(&s3.root, ".tmp"), Vec::<String>::new(), "parts being written");
    let report = client.reconcile_objects(false, Duration::ZERO).await.unwrap();
    assert!(report.orphan_object_keys.is_empty(), "orphans: {:?}", report.orphan_object_keys);
    assert!(report.lost_file_ids.is_empty());
}

fn walk(root: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

/// Two clients continue the same upload at once, through HAProxy to different instances: exactly
/// one succeeds, and the file has the right bytes. On a shared folder (`file://`).
#[tokio::test(flavor = "multi_thread")]
async fn two_clients_continuing_one_upload_at_once_make_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let objects_url = format!("file://{}", dir.path().display());
    // A lease well above a busy machine's fsync (the test's other fleets use 2 s to take over a
    // killed writer quickly; a writer stalled in an fsync for longer is taken over, correctly).
    let mut f = fleet("fleettwo", 2, &objects_url, &[("STRATA_RUN_LEASE", "15s")]).await;
    let data = Arc::new(pattern(60 * MIB, 9));
    let client = strata_client::Client::connect(f.proxy.url()).await.unwrap();
    let opts = strata_client::types::UploadOptions { owner: "two".into(), ..Default::default() };
    let id = client.create_upload(&opts, "two.bin", Some(data.len() as u64)).await.unwrap();
    // A first stream sends a third and is cancelled.
    let via = connect(f.proxy.url()).await;
    let stream = messages(&id, data.clone(), 0, 20 * MIB, false);
    let channel = via.clone();
    let call = tokio::spawn(async move { FileServiceClient::new(channel).upload(stream).await });
    until(&mut f.db, &id, "progress", |w| w.committed_offset > 0).await;
    call.abort();
    let w = until(&mut f.db, &id, "the checkpoint", |w| w.writer.is_empty()).await;
    let at = w.committed_offset as usize;

    let calls: Vec<_> = (0..2)
        .map(|_| {
            let (channel, stream) = (via.clone(), messages(&id, data.clone(), at, data.len(), true));
            tokio::spawn(async move { FileServiceClient::new(channel).upload(stream).await })
        })
        .collect();
    let mut ok = Vec::new();
    let mut refused = Vec::new();
    for c in calls {
        match c.await.unwrap() {
            Ok(r) => ok.push(r.into_inner().file.unwrap()),
            Err(s) => refused.push(s),
        }
    }
    assert_eq!(ok.len(), 1, "successes: {ok:?}, refusals: {refused:?}");
    assert!(
        refused.iter().all(|s| matches!(s.code(), tonic::Code::Aborted | tonic::Code::FailedPrecondition)),
        "{refused:?}"
    );
    println!("the other stream was told: {:?}", refused[0].message());
    assert_eq!(client.download_bytes(&ok[0].id, 0, 0).await.unwrap(), *data);
    let files = client.list_files(&Default::default()).await.unwrap().files;
    assert_eq!(files.len(), 1);
    assert!(files_starting(&dir.path().join(".staging"), "").is_empty(), "staging files left");
}

/// With uploads expiring two seconds after their last progress and the expiry job running every
/// second on one instance, an upload written slowly for three times that long through another
/// instance completes; one nobody writes expires.
#[tokio::test(flavor = "multi_thread")]
async fn expiry_never_removes_an_upload_another_instance_writes() {
    let dir = tempfile::tempdir().unwrap();
    let objects_url = format!("file://{}", dir.path().display());
    let cluster = PgCluster::shared();
    let db = cluster.create_database("fleetexpiry").await.unwrap();
    let db_url = cluster.primary_url(&db);
    let common = [
        ("STRATA_DATABASE_URL", db_url.as_str()),
        ("STRATA_OBJECT_STORE_URL", objects_url.as_str()),
        ("STRATA_UPLOAD_EXPIRY", "2s"),
        ("STRATA_RUN_LEASE", "2s"),
    ];
    let writer_env: Vec<(&str, &str)> = common.iter().copied().chain([("STRATA_RUN_SCHEDULER", "false")]).collect();
    let writer = ServerProcess::spawn(env!("CARGO_BIN_EXE_strata-server"), &writer_env);
    let expirer = ServerProcess::spawn(env!("CARGO_BIN_EXE_strata-server"), &common);
    let admin = expirer.client().await;
    let every_second =
        strata_client::scheduler::JobChanges { schedule: Some("* * * * * *".into()), ..Default::default() };
    admin.update_job("upload-expiry", every_second).await.unwrap();
    let client = writer.client().await;
    let opts = strata_client::types::UploadOptions { owner: "slow".into(), ..Default::default() };
    let data = pattern(12 * MIB, 3);
    let live = client.create_upload(&opts, "live.bin", Some(data.len() as u64)).await.unwrap();
    let abandoned = client.create_upload(&opts, "abandoned.bin", Some(10)).await.unwrap();
    // One MiB every half second: six seconds.
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let sender = {
        let data = data.clone();
        tokio::spawn(async move {
            for c in data.chunks(MIB) {
                tx.send(Bytes::copy_from_slice(c)).await.unwrap();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let file = client.resume_upload(&live, 0, tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap();
    sender.await.unwrap();
    assert_eq!(client.download_bytes(&file.id, 0, 0).await.unwrap(), data);
    let gone = client.upload_status(&abandoned).await.unwrap();
    assert_eq!(gone.state, strata_client::types::UploadState::Failed, "the job ran: {gone:?}");
    assert!(gone.error.unwrap_or_default().contains("expired"));
}
