//! Hedged reads: a ranged GET from object storage (a shuffle piece, a
//! Parquet footer or column chunk, a byte range of a CSV or JSON file) that
//! has not answered within the 95th percentile of this process's recent
//! GETs (at least 50 ms; 1 s until 16 have been seen) is sent a second time,
//! and the first answer wins. One slow request (or a slow server behind it)
//! then costs about the p95, not its own time; the second request costs one
//! more GET. Whole-object reads stream and are not hedged.
//!
//! The same store retries what object_store's client does not: a response
//! body cut off mid-way (a LIST page, a ranged GET), which the client
//! reports as a generic error after the request itself succeeded. A listing
//! cut off resumes after the last key it returned.
//!
//! Writes are not hedged: a multipart upload's next part cannot be sent
//! twice through object_store (each `put_part` is a new part), so a stalled
//! write fails at the client's request timeout and its task is retried.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, stream};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};

/// Recent GET times kept for the percentile.
const WINDOW: usize = 512;
/// The hedge never goes out sooner than this.
const FLOOR: Duration = Duration::from_millis(50);
/// Before [`SAMPLES`] GETs were timed.
const UNKNOWN: Duration = Duration::from_secs(1);
const SAMPLES: usize = 16;

#[derive(Default)]
struct Latencies {
    recent: Mutex<VecDeque<Duration>>,
}

impl Latencies {
    fn global() -> &'static Latencies {
        static LATENCIES: OnceLock<Latencies> = OnceLock::new();
        LATENCIES.get_or_init(Latencies::default)
    }

    fn record(&self, took: Duration) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == WINDOW {
            recent.pop_front();
        }
        recent.push_back(took);
    }

    fn hedge_after(&self) -> Duration {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() < SAMPLES {
            return UNKNOWN;
        }
        let mut sorted: Vec<Duration> = recent.iter().copied().collect();
        sorted.sort_unstable();
        sorted[sorted.len() * 95 / 100].max(FLOOR)
    }
}

/// Run `read`; if it has not answered by the hedge delay, run it again and
/// take whichever answers first. `hedges` counts second requests, `wins`
/// those that answered first.
pub async fn hedged<T, F, Fut>(read: F, hedges: &AtomicU64, wins: &AtomicU64) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = T>,
{
    let latencies = Latencies::global();
    hedged_after(read, latencies.hedge_after(), hedges, wins, |took| latencies.record(took)).await
}

async fn hedged_after<T, F, Fut>(
    read: F,
    delay: Duration,
    hedges: &AtomicU64,
    wins: &AtomicU64,
    record: impl Fn(Duration),
) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = T>,
{
    let start = Instant::now();
    let first = read();
    tokio::pin!(first);
    tokio::select! {
        answer = &mut first => {
            record(start.elapsed());
            return answer;
        }
        () = tokio::time::sleep(delay) => {}
    }
    hedges.fetch_add(1, Ordering::Relaxed);
    let second = read();
    tokio::pin!(second);
    tokio::select! {
        answer = &mut first => {
            record(start.elapsed());
            answer
        }
        answer = &mut second => {
            wins.fetch_add(1, Ordering::Relaxed);
            answer
        }
    }
}

/// Hedged GETs of one task (or job), and those that answered first.
#[derive(Debug, Default)]
pub struct HedgeCounts {
    pub hedged: AtomicU64,
    pub wins: AtomicU64,
}

impl HedgeCounts {
    pub fn snapshot(&self) -> (u64, u64) {
        (self.hedged.load(Ordering::Relaxed), self.wins.load(Ordering::Relaxed))
    }
}

/// A store whose ranged reads are hedged; everything else goes straight through.
#[derive(Debug)]
pub struct HedgingStore {
    inner: Arc<dyn ObjectStore>,
    counts: Arc<HedgeCounts>,
}

impl HedgingStore {
    pub fn new(inner: Arc<dyn ObjectStore>, counts: Arc<HedgeCounts>) -> Self {
        Self { inner, counts }
    }

    async fn range(&self, location: &Path, range: Range<u64>) -> object_store::Result<Bytes> {
        let read = || self.inner.get_range(location, range.clone());
        retried(|| hedged(read, &self.counts.hedged, &self.counts.wins)).await
    }
}

impl fmt::Display for HedgingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hedging({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for HedgingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    /// A plain ranged GET (what `get_range` sends) is hedged and answered
    /// from memory; conditional, HEAD, suffix and whole-object GETs are not.
    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        let plain = !options.head
            && options.if_match.is_none()
            && options.if_none_match.is_none()
            && options.if_modified_since.is_none()
            && options.if_unmodified_since.is_none()
            && options.version.is_none();
        let Some(object_store::GetRange::Bounded(range)) = options.range.clone().filter(|_| plain) else {
            return self.inner.get_opts(location, options).await;
        };
        let read = || async {
            let got = self.inner.get_opts(location, options.clone()).await?;
            let (meta, range, attributes) = (got.meta.clone(), got.range.clone(), got.attributes.clone());
            Ok::<_, object_store::Error>((got.bytes().await?, meta, range, attributes))
        };
        let (bytes, meta, range_read, attributes) =
            retried(|| hedged(read, &self.counts.hedged, &self.counts.wins)).await?;
        debug_assert_eq!(range_read.end - range_read.start, range.end - range.start);
        Ok(GetResult {
            payload: GetResultPayload::Stream(stream::once(async move { Ok(bytes) }).boxed()),
            meta,
            range: range_read,
            attributes,
        })
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        object_store::coalesce_ranges(
            ranges,
            |range| self.range(location, range),
            object_store::OBJECT_STORE_COALESCE_DEFAULT,
        )
        .await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        resumable_list(self.inner.clone(), prefix.cloned(), None)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        resumable_list(self.inner.clone(), prefix.cloned(), Some(offset.clone()))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        retried(|| self.inner.list_with_delimiter(prefix)).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

/// Tries of a read whose failure may be transient, in all.
const READ_TRIES: u32 = 3;
/// Before the second try; four times as long before each later one.
const FIRST_RETRY: Duration = Duration::from_millis(100);

/// What object_store reports as a generic error (a body cut off, a server
/// error left after its own retries) may pass; a missing object, a refused
/// permission or a bad path will not.
fn transient(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::Generic { .. } | object_store::Error::JoinError { .. })
}

async fn retried<T, F, Fut>(read: F) -> object_store::Result<T>
where
    F: Fn() -> Fut,
    Fut: Future<Output = object_store::Result<T>>,
{
    let mut delay = FIRST_RETRY;
    for _ in 1..READ_TRIES {
        match read().await {
            Err(e) if transient(&e) => {
                tracing::debug!(error = %e, "object-store read failed; trying again");
                tokio::time::sleep(delay).await;
                delay *= 4;
            }
            done => return done,
        }
    }
    read().await
}

/// A listing that, cut off by a transient error, goes on after the last key
/// it returned (S3 lists keys in order), up to [`READ_TRIES`] times in all.
fn resumable_list(
    inner: Arc<dyn ObjectStore>,
    prefix: Option<Path>,
    offset: Option<Path>,
) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
    struct Listing {
        inner: Arc<dyn ObjectStore>,
        prefix: Option<Path>,
        /// The last key returned (or the offset asked for).
        after: Option<Path>,
        pages: BoxStream<'static, object_store::Result<ObjectMeta>>,
        retries: u32,
        delay: Duration,
        ended: bool,
    }
    fn open(
        inner: &Arc<dyn ObjectStore>,
        prefix: &Option<Path>,
        after: &Option<Path>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        match after {
            Some(after) => inner.list_with_offset(prefix.as_ref(), after),
            None => inner.list(prefix.as_ref()),
        }
    }
    let pages = open(&inner, &prefix, &offset);
    let listing =
        Listing { inner, prefix, after: offset, pages, retries: READ_TRIES - 1, delay: FIRST_RETRY, ended: false };
    stream::unfold(listing, |mut l| async move {
        if l.ended {
            return None;
        }
        loop {
            match l.pages.next().await {
                Some(Ok(meta)) => {
                    l.after = Some(meta.location.clone());
                    return Some((Ok(meta), l));
                }
                Some(Err(e)) if transient(&e) && l.retries > 0 => {
                    tracing::debug!(error = %e, "listing cut off; resuming after the last key");
                    l.retries -= 1;
                    tokio::time::sleep(l.delay).await;
                    l.delay *= 4;
                    l.pages = open(&l.inner, &l.prefix, &l.after);
                }
                Some(Err(e)) => {
                    l.ended = true;
                    return Some((Err(e), l));
                }
                None => return None,
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[tokio::test]
    async fn a_request_that_does_not_answer_is_sent_again_and_the_second_answers() {
        let calls = AtomicUsize::new(0);
        let (hedges, wins) = (AtomicU64::new(0), AtomicU64::new(0));
        // The first request never answers; without the hedge this would hang.
        let read = || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    std::future::pending::<()>().await;
                }
                n
            }
        };
        let answer = tokio::time::timeout(
            Duration::from_secs(30),
            hedged_after(read, Duration::from_millis(50), &hedges, &wins, |_| {}),
        )
        .await
        .expect("the hedge should have answered");
        let counts = |h: &AtomicU64, w: &AtomicU64| (h.load(Ordering::SeqCst), w.load(Ordering::SeqCst));
        assert_eq!((answer, counts(&hedges, &wins)), (1, (1, 1)));

        // A request that answers in time is not repeated.
        let (hedges, wins) = (AtomicU64::new(0), AtomicU64::new(0));
        let answer = hedged_after(|| async { 7 }, Duration::from_secs(5), &hedges, &wins, |_| {}).await;
        assert_eq!((answer, counts(&hedges, &wins)), (7, (0, 0)));
    }

    /// InMemory, except that its first listing breaks off after two keys and
    /// its first ranged GET fails, both as a cut-off response body does.
    #[derive(Debug)]
    struct Flaky {
        inner: object_store::memory::InMemory,
        lists: AtomicUsize,
        gets: AtomicUsize,
    }

    impl fmt::Display for Flaky {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Flaky")
        }
    }

    fn cut_off() -> object_store::Error {
        object_store::Error::Generic { store: "Flaky", source: "request or response body error".into() }
    }

    #[async_trait]
    impl ObjectStore for Flaky {
        async fn put_opts(&self, l: &Path, p: PutPayload, o: PutOptions) -> object_store::Result<PutResult> {
            self.inner.put_opts(l, p, o).await
        }

        async fn put_multipart_opts(
            &self,
            l: &Path,
            o: PutMultipartOptions,
        ) -> object_store::Result<Box<dyn MultipartUpload>> {
            self.inner.put_multipart_opts(l, o).await
        }

        async fn get_opts(&self, l: &Path, o: GetOptions) -> object_store::Result<GetResult> {
            if self.gets.fetch_add(1, Ordering::SeqCst) == 0 {
                return Err(cut_off());
            }
            self.inner.get_opts(l, o).await
        }

        fn delete_stream(
            &self,
            l: BoxStream<'static, object_store::Result<Path>>,
        ) -> BoxStream<'static, object_store::Result<Path>> {
            self.inner.delete_stream(l)
        }

        fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
            let listing = self.inner.list(prefix);
            if self.lists.fetch_add(1, Ordering::SeqCst) > 0 {
                return listing;
            }
            listing.take(2).chain(stream::once(async { Err(cut_off()) })).boxed()
        }

        fn list_with_offset(
            &self,
            prefix: Option<&Path>,
            offset: &Path,
        ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
            self.inner.list_with_offset(prefix, offset)
        }

        async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }

        async fn copy_opts(&self, from: &Path, to: &Path, o: CopyOptions) -> object_store::Result<()> {
            self.inner.copy_opts(from, to, o).await
        }
    }

    #[tokio::test]
    async fn a_listing_or_a_range_cut_off_is_read_again_from_where_it_broke() {
        let flaky = Flaky { inner: object_store::memory::InMemory::new(), lists: 0.into(), gets: 0.into() };
        for i in 0..5 {
            flaky.put(&Path::from(format!("t/part-{i}")), PutPayload::from(format!("file {i}"))).await.unwrap();
        }
        let store = HedgingStore::new(Arc::new(flaky), Arc::default());
        let mut keys: Vec<String> =
            store.list(Some(&Path::from("t"))).map(|m| m.unwrap().location.to_string()).collect().await;
        keys.sort();
        let expected: Vec<String> = (0..5).map(|i| format!("t/part-{i}")).collect();
        assert_eq!(keys, expected, "every key once, the listing resumed after the second");
        let bytes = store.get_range(&Path::from("t/part-3"), 0..6).await.unwrap();
        assert_eq!(&bytes[..], b"file 3");
    }

    #[test]
    fn the_delay_is_the_p95_of_recent_reads_with_a_floor() {
        let l = Latencies::default();
        assert_eq!(l.hedge_after(), UNKNOWN);
        for ms in 1..=100 {
            l.record(Duration::from_millis(ms * 10));
        }
        assert_eq!(l.hedge_after(), Duration::from_millis(960));
        let fast = Latencies::default();
        for _ in 0..100 {
            fast.record(Duration::from_millis(2));
        }
        assert_eq!(fast.hedge_after(), FLOOR);
    }
}
