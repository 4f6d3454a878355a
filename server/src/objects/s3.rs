//! `s3://BUCKET[/PREFIX]?endpoint=URL&region=R`: an S3-compatible bucket through aws-sdk-s3.
//!
//! Credentials come from the URL's user info (`s3://KEY:SECRET@bucket`, shown redacted) or from
//! `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`. Path-style addressing, so any S3-compatible server
//! works. Writes are multipart uploads with several parts in flight.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use aws_sdk_s3::{
    Client,
    config::{
        BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
        retry::RetryConfig, timeout::TimeoutConfig,
    },
    error::DisplayErrorContext,
    primitives::{ByteStream as AwsBody, SdkBody},
    types::{CompletedMultipartUpload, CompletedPart, StorageClass},
};
use bytes::Bytes;
use futures::StreamExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{ByteStream, Error, ObjectInfo, Part, Result, Resume, SizeHint, WriteState, Writer, check_key};

/// S3's smallest part (all but the last).
pub const MIN_PART_SIZE: u64 = 5 << 20;
/// S3's largest number of parts per upload.
const MAX_PARTS: u64 = 10_000;
/// UploadPartCopy requests in flight when a takeover copies the committed parts.
const COPY_CONCURRENCY: usize = 4;

/// Tuning of S3 writes.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// Multipart part size (≥ 5 MiB; grown for files that would need more than 10 000 parts).
    pub part_size: u64,
    /// Parts uploaded concurrently per file.
    pub concurrency: usize,
    /// Storage class for new objects (e.g. `STANDARD_IA`); None: the bucket's default.
    pub storage_class: Option<String>,
    /// Time to open a connection before an attempt fails.
    pub connect_timeout: Duration,
    /// Longest wait for a response's bytes before an attempt fails.
    pub read_timeout: Duration,
    /// Longest one attempt of one call may take, sending its body included.
    pub attempt_timeout: Duration,
    /// Attempts per call, the first included (retried with the SDK's standard backoff).
    pub max_attempts: u32,
}

impl Default for S3Settings {
    fn default() -> Self {
        Self {
            part_size: 8 << 20,
            concurrency: 4,
            storage_class: None,
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(120),
            max_attempts: 3,
        }
    }
}

impl S3Settings {
    /// The longest one call can take, all its attempts and the backoff between them: what an
    /// archive batch's segment upload may hold the batch's rows for.
    pub fn call_bound(&self) -> Duration {
        // The standard retry strategy's backoff is capped at 20 s between attempts.
        self.attempt_timeout * self.max_attempts + Duration::from_secs(20) * self.max_attempts.saturating_sub(1)
    }
}

fn s3_err<'k, E: std::error::Error + 'static>(op: &'static str, key: &'k str) -> impl FnOnce(E) -> Error + 'k {
    move |e| Error::S3 { op, key: key.to_owned(), message: DisplayErrorContext(&e).to_string() }
}

/// An S3-compatible bucket.
#[derive(Clone)]
pub struct S3Store {
    client: Client,
    bucket: Arc<str>,
    prefix: Arc<str>,
    settings: Arc<S3Settings>,
}

impl S3Store {
    /// Connects and checks that the bucket exists.
    pub async fn open(raw: &str, settings: &S3Settings) -> Result<Self> {
        let url = url::Url::parse(raw).map_err(|e| Error::InvalidUrl(e.to_string()))?;
        let bucket =
            url.host_str().filter(|b| !b.is_empty()).ok_or_else(|| Error::InvalidUrl("missing bucket".into()))?;
        let mut endpoint = None;
        let mut region = "us-east-1".to_owned();
        for (k, v) in url.query_pairs() {
            match k.as_ref() {
                "endpoint" => endpoint = Some(v.into_owned()),
                "region" => region = v.into_owned(),
                other => return Err(Error::InvalidUrl(format!("unknown s3 url parameter {other:?}"))),
            }
        }
        let (ak, sk) = if !url.username().is_empty() {
            let user = percent(url.username());
            let pass = percent(url.password().unwrap_or_default());
            (user, pass)
        } else {
            match (std::env::var("AWS_ACCESS_KEY_ID"), std::env::var("AWS_SECRET_ACCESS_KEY")) {
                (Ok(a), Ok(s)) => (a, s),
                _ => {
                    return Err(Error::InvalidUrl(
                        "no credentials: use s3://KEY:SECRET@bucket or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY".into(),
                    ));
                }
            }
        };
        if settings.part_size < MIN_PART_SIZE {
            return Err(Error::InvalidUrl(format!("part size must be at least {MIN_PART_SIZE} bytes")));
        }
        let mut conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region))
            .credentials_provider(Credentials::new(ak, sk, None, None, "strata-config"))
            // Path-style (bucket in the path) works with every S3-compatible server.
            .force_path_style(true)
            // strata verifies content itself (BLAKE3/SHA-256 over the stream); per-request checksums
            // only where the protocol requires them.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            // A stalled or unreachable store fails a call within a known time instead of holding
            // what waits on it (an archive batch holds its rows' locks while its segment uploads).
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(settings.connect_timeout)
                    .read_timeout(settings.read_timeout)
                    .operation_attempt_timeout(settings.attempt_timeout)
                    .operation_timeout(settings.call_bound())
                    .build(),
            )
            .retry_config(RetryConfig::standard().with_max_attempts(settings.max_attempts.max(1)));
        if let Some(e) = endpoint {
            conf = conf.endpoint_url(e);
        }
        let client = Client::from_conf(conf.build());
        let prefix = url.path().trim_matches('/');
        let prefix = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
        client.head_bucket().bucket(bucket).send().await.map_err(s3_err("HeadBucket", bucket))?;
        Ok(Self { client, bucket: bucket.into(), prefix: prefix.into(), settings: Arc::new(settings.clone()) })
    }

    /// HeadBucket: the endpoint answers and the bucket is there.
    pub(super) async fn probe(&self) -> Result<()> {
        self.client.head_bucket().bucket(&*self.bucket).send().await.map_err(s3_err("HeadBucket", &self.bucket))?;
        Ok(())
    }

    fn full_key(&self, key: &str) -> Result<String> {
        check_key(key)?;
        Ok(format!("{}{key}", self.prefix))
    }

    pub(super) fn part_size(&self) -> u64 {
        self.settings.part_size
    }

    /// One PutObject of a whole (small) object.
    pub(super) async fn put(&self, key: &str, data: Bytes) -> Result<u64> {
        let full = self.full_key(key)?;
        put_object(&self.client, &self.bucket, &full, self.settings.storage_class.as_deref(), vec![data]).await
    }

    /// A writer for `key`: one PutObject at the end for an object known to fit in one part (one
    /// round trip instead of three for a multipart upload), else a multipart upload.
    pub(super) async fn begin_write(&self, key: &str, size: SizeHint) -> Result<Writer> {
        if let SizeHint::Exact(n) = size
            && n <= self.settings.part_size
        {
            return Ok(Writer::S3Small(SmallWriter {
                store: self.clone(),
                key: key.to_owned(),
                data: Pending::default(),
            }));
        }
        let full = self.full_key(key)?;
        let part_size = self.part_size_for(size);
        let mut req = self.client.create_multipart_upload().bucket(&*self.bucket).key(&full);
        if let Some(class) = &self.settings.storage_class {
            req = req.storage_class(StorageClass::from(class.as_str()));
        }
        let out = req.send().await.map_err(s3_err("CreateMultipartUpload", &full))?;
        let upload_id = out.upload_id().ok_or_else(|| Error::S3 {
            op: "CreateMultipartUpload",
            key: full.clone(),
            message: "no upload id".into(),
        })?;
        Ok(Writer::S3(self.writer(full, upload_id.to_owned(), part_size, BTreeMap::new(), 0)))
    }

    /// Parts (in whole MiB) grown so that an object of the size's bound needs at most
    /// [`MAX_PARTS`].
    fn part_size_for(&self, size: SizeHint) -> u64 {
        let needed = size.bound().map_or(0, |s| s.div_ceil(MAX_PARTS).next_multiple_of(1 << 20));
        self.settings.part_size.max(needed)
    }

    fn writer(
        &self,
        key: String,
        upload_id: String,
        part_size: u64,
        done: BTreeMap<i32, (String, u64)>,
        committed: u64,
    ) -> S3Writer {
        S3Writer {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key,
            upload_id,
            part_size,
            concurrency: self.settings.concurrency.max(1),
            storage_class: self.settings.storage_class.clone(),
            buf: Pending::default(),
            buf_start: committed,
            inflight: JoinSet::new(),
            done,
            abandoned: false,
        }
    }

    async fn create_multipart(&self, full: &str) -> Result<String> {
        let mut req = self.client.create_multipart_upload().bucket(&*self.bucket).key(full);
        if let Some(class) = &self.settings.storage_class {
            req = req.storage_class(StorageClass::from(class.as_str()));
        }
        let out = req.send().await.map_err(s3_err("CreateMultipartUpload", full))?;
        out.upload_id().map(str::to_owned).ok_or_else(|| Error::S3 {
            op: "CreateMultipartUpload",
            key: full.to_owned(),
            message: "no upload id".into(),
        })
    }

    /// The parts of multipart upload `upload_id` numbered past `after`, as S3 lists them, with
    /// any gap among them filled by a part of zeros (a part finished while an earlier one was cut
    /// off): completing them all leaves none behind. None when listing fails (they are completed
    /// only so as not to be left behind).
    async fn parts_after(&self, full: &str, upload_id: &str, after: i32, part_size: u64) -> Vec<CompletedPart> {
        let mut found = BTreeMap::new();
        let mut marker = Some(after.to_string());
        while let Some(m) = marker.take() {
            let page = match self
                .client
                .list_parts()
                .bucket(&*self.bucket)
                .key(full)
                .upload_id(upload_id)
                .part_number_marker(m)
                .send()
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(key = %full, error = %DisplayErrorContext(&e), "listing the parts of a taken-over upload failed");
                    return Vec::new();
                }
            };
            for p in page.parts() {
                if let (Some(n), Some(etag)) = (p.part_number(), p.e_tag())
                    && n > after
                {
                    found.insert(n, etag.to_owned());
                }
            }
            if page.is_truncated() == Some(true) {
                marker = page.next_part_number_marker().map(str::to_owned);
            }
        }
        let Some(&last) = found.keys().next_back() else { return Vec::new() };
        let mut out = Vec::new();
        for n in after + 1..=last {
            let etag = match found.remove(&n) {
                Some(e) => e,
                None => {
                    let filler = self
                        .client
                        .upload_part()
                        .bucket(&*self.bucket)
                        .key(full)
                        .upload_id(upload_id)
                        .part_number(n)
                        .content_length(part_size as i64)
                        .body(AwsBody::from(vec![0u8; part_size as usize]))
                        .customize()
                        .disable_payload_signing()
                        .send()
                        .await;
                    match filler.ok().and_then(|o| o.e_tag().map(str::to_owned)) {
                        Some(e) => e,
                        None => return out,
                    }
                }
            };
            out.push(CompletedPart::builder().part_number(n).e_tag(etag).build());
        }
        out
    }

    /// Continues multipart upload `upload_id` of `key` at `committed` (the end of `parts`).
    ///
    /// Fenced, the previous writer may still be sending parts. Its multipart upload is completed
    /// with exactly the committed parts (their recorded ETags): that ends it in the store — a
    /// late UploadPart or CompleteMultipartUpload of the previous writer fails — and leaves the
    /// committed bytes as an interim object under the key, which no file references yet. A new
    /// multipart upload starts with those bytes as server-side copies (UploadPartCopy, nothing
    /// passes through strata), and this writer continues it. Part numbers stay contiguous from 1,
    /// which some S3-compatible servers require.
    pub(super) async fn resume_write(
        &self,
        key: &str,
        upload_id: &str,
        part_size: u64,
        parts: &[Part],
        committed: u64,
        how: Resume,
    ) -> Result<S3Writer> {
        let full = self.full_key(key)?;
        let bad = |why: String| Error::BadState(format!("S3 upload {upload_id} of {key}: {why}"));
        if part_size < MIN_PART_SIZE {
            return Err(bad(format!("part size {part_size}")));
        }
        let mut at = 0;
        for (i, p) in parts.iter().enumerate() {
            if p.size != part_size || p.number != i as i32 + 1 {
                return Err(bad(format!("part {} of {} bytes at place {}", p.number, p.size, i + 1)));
            }
            at += p.size;
        }
        if at != committed {
            return Err(bad(format!("its parts hold {at} bytes, not {committed}")));
        }
        if how == Resume::InPlace {
            let done = parts.iter().map(|p| (p.number, (p.etag.clone(), p.size))).collect();
            return Ok(self.writer(full, upload_id.to_owned(), part_size, done, committed));
        }
        if parts.is_empty() {
            // Nothing committed: the previous upload goes, a new one starts.
            self.abort_orphan(key, upload_id).await?;
            let id = self.create_multipart(&full).await?;
            return Ok(self.writer(full, id, part_size, BTreeMap::new(), 0));
        }
        // Parts the previous writer finished after it last recorded progress are completed too (they
        // sit past the committed bytes and are never copied): S3 discards parts a completion does
        // not list, but some S3-compatible servers keep them as files for ever.
        let mut listed: Vec<CompletedPart> =
            parts.iter().map(|p| CompletedPart::builder().part_number(p.number).e_tag(&p.etag).build()).collect();
        listed.extend(self.parts_after(&full, upload_id, parts.len() as i32, part_size).await);
        match self
            .client
            .complete_multipart_upload()
            .bucket(&*self.bucket)
            .key(&full)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(listed)).build())
            .send()
            .await
        {
            Ok(_) => {}
            // The previous writer published it meanwhile (it was stopped in the middle of
            // finishing): what was committed is no longer there to continue from.
            Err(e) if e.as_service_error().is_some_and(|s| s.meta().code() == Some("NoSuchUpload")) => {
                return Err(bad("it was completed by its previous writer".into()));
            }
            Err(e) => return Err(s3_err("CompleteMultipartUpload", &full)(e)),
        }
        let id = self.create_multipart(&full).await?;
        let source = format!("{}/{full}", self.bucket);
        // Owned jobs: a stream of futures borrowing `parts` would not be Send for every lifetime.
        let jobs: Vec<(u64, i32, u64)> =
            parts.iter().enumerate().map(|(i, p)| (i as u64 * part_size, p.number, p.size)).collect();
        let (client, bucket, target, new_id) = (self.client.clone(), self.bucket.clone(), full.clone(), id.clone());
        let mut copies =
            futures::stream::iter(jobs.into_iter().map(move |(start, number, size)| {
                let (client, bucket, full, id, source) =
                    (client.clone(), bucket.clone(), target.clone(), new_id.clone(), source.clone());
                async move {
                    let out = client
                        .upload_part_copy()
                        .bucket(&*bucket)
                        .key(&full)
                        .upload_id(id)
                        .part_number(number)
                        .copy_source(source)
                        .copy_source_range(format!("bytes={start}-{}", start + size - 1))
                        .send()
                        .await
                        .map_err(s3_err("UploadPartCopy", &full))?;
                    let etag = out.copy_part_result().and_then(|r| r.e_tag()).map(str::to_owned).ok_or_else(|| {
                        Error::S3 { op: "UploadPartCopy", key: full.clone(), message: "no ETag".into() }
                    })?;
                    Ok::<_, Error>((number, (etag, size)))
                }
            }))
            .buffer_unordered(COPY_CONCURRENCY);
        let mut done = BTreeMap::new();
        let mut failed = None;
        while let Some(copied) = copies.next().await {
            match copied {
                Ok((n, part)) => {
                    done.insert(n, part);
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        drop(copies);
        if let Some(e) = failed {
            let _ = self.abort_orphan(key, &id).await;
            return Err(e);
        }
        Ok(self.writer(full, id, part_size, done, committed))
    }

    pub(super) async fn get(&self, key: &str, offset: u64, length: Option<u64>) -> Result<ByteStream> {
        let full = self.full_key(key)?;
        let size = self.head(key).await?.ok_or_else(|| Error::NotFound(key.to_owned()))?;
        let length = length.unwrap_or(size.saturating_sub(offset));
        if offset.checked_add(length).is_none_or(|end| end > size) {
            return Err(Error::Range { offset, length, size });
        }
        if length == 0 {
            return Ok(futures::stream::empty().boxed());
        }
        let out = self
            .client
            .get_object()
            .bucket(&*self.bucket)
            .key(&full)
            .range(format!("bytes={offset}-{}", offset + length - 1))
            .send()
            .await
            .map_err(s3_err("GetObject", &full))?;
        let stream = futures::stream::unfold((out.body, full), |(mut body, key)| async move {
            match body.next().await {
                Some(Ok(b)) => Some((Ok(b), (body, key))),
                Some(Err(e)) => Some((Err(s3_err("GetObject", &key)(e)), (body, key))),
                None => None,
            }
        });
        Ok(stream.boxed())
    }

    pub(super) async fn head(&self, key: &str) -> Result<Option<u64>> {
        let full = self.full_key(key)?;
        match self.client.head_object().bucket(&*self.bucket).key(&full).send().await {
            Ok(o) => Ok(Some(o.content_length().unwrap_or(0).max(0) as u64)),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(s3_err("HeadObject", &full)(e)),
        }
    }

    pub(super) async fn stat(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let full = self.full_key(key)?;
        match self.client.head_object().bucket(&*self.bucket).key(&full).send().await {
            Ok(o) => Ok(Some(ObjectInfo {
                key: key.to_owned(),
                size: o.content_length().unwrap_or(0).max(0) as u64,
                modified: o.last_modified().and_then(|t| std::time::SystemTime::try_from(*t).ok()),
            })),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(s3_err("HeadObject", &full)(e)),
        }
    }

    pub(super) async fn delete(&self, key: &str) -> Result<()> {
        let full = self.full_key(key)?;
        self.client
            .delete_object()
            .bucket(&*self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(s3_err("DeleteObject", &full))?;
        Ok(())
    }

    /// One page (at most `max` keys) of the objects under `prefix` in key order: after
    /// `start_after` on the first call, then from the continuation token. Returns the objects and
    /// the token of the next page (None: the last).
    pub(super) async fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        token: Option<String>,
        max: usize,
    ) -> Result<(Vec<ObjectInfo>, Option<String>)> {
        let full_prefix = format!("{}{prefix}", self.prefix);
        let page = self
            .client
            .list_objects_v2()
            .bucket(&*self.bucket)
            .prefix(&full_prefix)
            .set_start_after(start_after.filter(|_| token.is_none()).map(|s| format!("{}{s}", self.prefix)))
            .set_continuation_token(token)
            .max_keys(max.clamp(1, 1000) as i32)
            .send()
            .await
            .map_err(s3_err("ListObjectsV2", &full_prefix))?;
        let out = page
            .contents()
            .iter()
            .filter_map(|o| {
                let k = o.key()?.strip_prefix(&*self.prefix)?;
                Some(ObjectInfo {
                    key: k.to_owned(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    modified: o.last_modified().and_then(|t| std::time::SystemTime::try_from(*t).ok()),
                })
            })
            .collect();
        Ok((out, page.next_continuation_token().map(str::to_owned)))
    }

    pub(super) async fn abort_orphan(&self, key: &str, upload_id: &str) -> Result<()> {
        if upload_id.is_empty() {
            return Ok(());
        }
        let full = self.full_key(key)?;
        match self.client.abort_multipart_upload().bucket(&*self.bucket).key(&full).upload_id(upload_id).send().await {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_upload()) => Ok(()),
            Err(e) => Err(s3_err("AbortMultipartUpload", &full)(e)),
        }
    }
}

/// Userinfo as written in the URL, percent-decoded (RFC 3986: a `+` stays a `+`).
fn percent(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// A part's number, size and outcome (its ETag).
type PartResult = (i32, u64, Result<String>);

/// A multipart upload in progress.
pub(super) struct S3Writer {
    client: Client,
    bucket: Arc<str>,
    key: String,
    upload_id: String,
    part_size: u64,
    concurrency: usize,
    storage_class: Option<String>,
    /// Bytes not yet sent, starting at offset `buf_start`.
    buf: Pending,
    buf_start: u64,
    inflight: JoinSet<PartResult>,
    /// Completed parts: number → (etag, size).
    done: BTreeMap<i32, (String, u64)>,
    /// A checkpoint abandoned parts in flight (they may still land).
    abandoned: bool,
}

/// A small object kept in memory and stored with one PutObject by `finish`: nothing is durable
/// before that, so a checkpoint commits nothing.
pub(super) struct SmallWriter {
    store: S3Store,
    key: String,
    data: Pending,
}

impl SmallWriter {
    pub(super) fn write(&mut self, data: Bytes) -> Result<()> {
        self.data.push(data);
        Ok(())
    }

    pub(super) fn checkpoint(&mut self) -> u64 {
        self.data.clear();
        0
    }

    pub(super) async fn finish(mut self) -> Result<u64> {
        let full = self.store.full_key(&self.key)?;
        let chunks = self.data.take(self.data.len);
        let s = &self.store;
        put_object(&s.client, &s.bucket, &full, s.settings.storage_class.as_deref(), chunks).await
    }
}

impl S3Writer {
    pub(super) fn upload_id(&self) -> &str {
        &self.upload_id
    }

    pub(super) fn part_size(&self) -> u64 {
        self.part_size
    }

    fn spawn_part(&mut self, data: Vec<Bytes>) {
        let size: u64 = data.iter().map(|b| b.len() as u64).sum();
        let number = (self.buf_start / self.part_size) as i32 + 1;
        self.buf_start += size;
        let (client, bucket, key, upload_id) =
            (self.client.clone(), self.bucket.clone(), self.key.clone(), self.upload_id.clone());
        self.inflight.spawn(async move {
            let r = client
                .upload_part()
                .bucket(&*bucket)
                .key(&key)
                .upload_id(upload_id)
                .part_number(number)
                .content_length(size as i64)
                .body(part_body(data))
                // SigV4 would hash every body with SHA-256 (≈ 0.2 GB/s on this hardware without SHA
                // instructions); content is verified end to end with BLAKE3 instead.
                .customize()
                .disable_payload_signing()
                .send()
                .await
                .map_err(s3_err("UploadPart", &key))
                .and_then(|o| {
                    o.e_tag().map(str::to_owned).ok_or_else(|| Error::S3 {
                        op: "UploadPart",
                        key: key.clone(),
                        message: "no ETag".into(),
                    })
                });
            (number, size, r)
        });
    }

    /// Records finished parts; returns the first failure.
    fn record(&mut self, (number, size, r): PartResult) -> Result<()> {
        let etag = r?;
        self.done.insert(number, (etag, size));
        Ok(())
    }

    /// Counts the parts that finished, without waiting; returns the committed offset.
    pub(super) fn durable(&mut self) -> Result<u64> {
        while let Some(joined) = self.inflight.try_join_next() {
            match joined {
                // A failed part is sent again after the next checkpoint.
                Ok(r) => {
                    if let Err(e) = self.record(r) {
                        tracing::debug!(key = %self.key, error = %e, "part upload failed; sent again after the checkpoint");
                        return Err(e);
                    }
                }
                Err(e) if e.is_cancelled() => {}
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        }
        Ok(self.committed())
    }

    /// The committed parts.
    pub(super) fn state(&self) -> WriteState {
        let n = self.contiguous();
        WriteState::S3 {
            upload_id: self.upload_id.clone(),
            part_size: self.part_size,
            parts: self
                .done
                .range(..=n)
                .map(|(number, (etag, size))| Part { number: *number, etag: etag.clone(), size: *size })
                .collect(),
        }
    }

    pub(super) fn abandoned(&self) -> bool {
        self.abandoned
    }

    /// The last of the parts done without a gap from the first (0: none).
    fn contiguous(&self) -> i32 {
        let mut n = 0;
        while self.done.contains_key(&(n + 1)) {
            n += 1;
        }
        n
    }

    pub(super) async fn write(&mut self, data: Bytes) -> Result<()> {
        self.buf.push(data);
        while self.buf.len >= self.part_size {
            // Bounded parts in flight: memory stays at about (concurrency + 1) × part size. Waited
            // for before the part leaves `buf`, so a write dropped here (cancelled) loses nothing
            // that a checkpoint would not account for.
            while self.inflight.len() >= self.concurrency {
                let r = self.inflight.join_next().await.expect("nonempty");
                self.record(r.expect("part task panicked"))?;
            }
            let part = self.buf.take(self.part_size);
            self.spawn_part(part);
        }
        Ok(())
    }

    /// Waits for the parts in flight, recording them; when `cancel` fires, abandons the rest.
    /// Returns the first failure.
    async fn drain(&mut self, cancel: &CancellationToken) -> Result<()> {
        let mut first_err = None;
        let mut abandoned = false;
        loop {
            let joined = tokio::select! {
                biased;
                _ = cancel.cancelled(), if !abandoned => {
                    self.abandoned |= !self.inflight.is_empty();
                    self.inflight.abort_all();
                    abandoned = true;
                    first_err.get_or_insert(Error::Cancelled);
                    continue;
                }
                j = self.inflight.join_next() => j,
            };
            match joined {
                None => break,
                Some(Ok(r)) => {
                    if let Err(e) = self.record(r) {
                        first_err.get_or_insert(e);
                    }
                }
                Some(Err(e)) if e.is_cancelled() => {}
                Some(Err(e)) => std::panic::resume_unwind(e.into_panic()),
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    pub(super) fn committed(&self) -> u64 {
        self.done.range(..=self.contiguous()).map(|(_, (_, size))| size).sum()
    }

    pub(super) async fn checkpoint(&mut self, cancel: &CancellationToken) -> Result<u64> {
        let drained = self.drain(cancel).await;
        let committed = self.committed();
        // Parts past a gap would be sent again from the committed offset: forget them.
        let contiguous = self.contiguous();
        self.done.retain(|n, _| *n <= contiguous);
        self.buf.clear();
        self.buf_start = committed;
        if let Err(e) = drained {
            tracing::warn!(key = %self.key, error = %e, committed, "part upload failed; the writer resumes at the committed offset");
        }
        Ok(committed)
    }

    pub(super) async fn finish(mut self, cancel: &CancellationToken) -> Result<u64> {
        if self.buf.len > 0 || self.done.is_empty() && self.inflight.is_empty() {
            let last = self.buf.take(self.buf.len);
            if last.is_empty() {
                // An empty object: S3 rejects a multipart upload without parts.
                self.abort_multipart().await?;
                return put_object(&self.client, &self.bucket, &self.key, self.storage_class.as_deref(), Vec::new())
                    .await;
            }
            self.spawn_part(last);
        }
        self.drain(cancel).await?;
        let size = self.committed();
        if size != self.buf_start {
            return Err(Error::S3 { op: "CompleteMultipartUpload", key: self.key, message: "missing parts".into() });
        }
        let parts = self
            .done
            .iter()
            .map(|(n, (etag, _))| CompletedPart::builder().part_number(*n).e_tag(etag).build())
            .collect();
        self.client
            .complete_multipart_upload()
            .bucket(&*self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .map_err(s3_err("CompleteMultipartUpload", &self.key))?;
        Ok(size)
    }

    pub(super) async fn abort(mut self) -> Result<()> {
        self.inflight.abort_all();
        while self.inflight.join_next().await.is_some() {}
        self.abort_multipart().await
    }

    async fn abort_multipart(&self) -> Result<()> {
        self.client
            .abort_multipart_upload()
            .bucket(&*self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .send()
            .await
            .map_err(s3_err("AbortMultipartUpload", &self.key))?;
        Ok(())
    }
}

/// Received chunks not yet sent in a part.
#[derive(Default)]
struct Pending {
    chunks: std::collections::VecDeque<Bytes>,
    len: u64,
}

impl Pending {
    fn push(&mut self, b: Bytes) {
        self.len += b.len() as u64;
        if !b.is_empty() {
            self.chunks.push_back(b);
        }
    }

    /// The first `n` bytes (n ≤ len), as the chunks that hold them: no bytes are copied.
    fn take(&mut self, mut n: u64) -> Vec<Bytes> {
        let mut out = Vec::new();
        while n > 0 {
            let front = self.chunks.front_mut().expect("n ≤ len");
            let b = if front.len() as u64 <= n {
                self.chunks.pop_front().expect("front exists")
            } else {
                front.split_to(n as usize)
            };
            n -= b.len() as u64;
            self.len -= b.len() as u64;
            out.push(b);
        }
        out
    }

    fn clear(&mut self) {
        self.chunks.clear();
        self.len = 0;
    }
}

/// One PutObject of `chunks` under the full key `full`; returns the size. No SHA-256 payload
/// signing, as for parts: callers verify content themselves.
async fn put_object(
    client: &Client,
    bucket: &str,
    full: &str,
    storage_class: Option<&str>,
    chunks: Vec<Bytes>,
) -> Result<u64> {
    let size: u64 = chunks.iter().map(|c| c.len() as u64).sum();
    let body = if chunks.is_empty() { AwsBody::from(Bytes::new()) } else { part_body(chunks) };
    let mut req = client.put_object().bucket(bucket).key(full).content_length(size as i64).body(body);
    if let Some(class) = storage_class {
        req = req.storage_class(StorageClass::from(class));
    }
    req.customize().disable_payload_signing().send().await.map_err(s3_err("PutObject", full))?;
    Ok(size)
}

/// A part's body from the chunks that make it up. Copying them into one buffer cost a pass over
/// every byte on a CPU that the S3 server shares; the body is rebuilt from the same chunks when
/// the SDK retries.
fn part_body(chunks: Vec<Bytes>) -> AwsBody {
    if let [one] = &chunks[..] {
        return AwsBody::from(one.clone());
    }
    let chunks: Arc<[Bytes]> = chunks.into();
    AwsBody::new(SdkBody::retryable(move || SdkBody::from_body_1_x(Chunks { rest: chunks.to_vec().into() })))
}

/// An HTTP body yielding chunks in order, with its exact length known.
struct Chunks {
    rest: std::collections::VecDeque<Bytes>,
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::result::Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.rest.pop_front().map(|b| Ok(http_body::Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.rest.iter().map(|b| b.len() as u64).sum())
    }
}
