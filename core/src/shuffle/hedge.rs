//! Hedged reads: a shuffle piece GET that has not answered within the 95th
//! percentile of this process's recent GETs (at least 50 ms; 1 s until 16
//! have been seen) is sent a second time, and the first answer wins. One
//! slow request (or a slow server behind it) then costs about the p95, not
//! its own time; the second request costs one more GET.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use datafusion::physical_plan::metrics::Count;

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
pub async fn hedged<T, F, Fut>(read: F, hedges: &Count, wins: &Count) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = T>,
{
    let latencies = Latencies::global();
    hedged_after(read, latencies.hedge_after(), hedges, wins, |took| latencies.record(took)).await
}

async fn hedged_after<T, F, Fut>(read: F, delay: Duration, hedges: &Count, wins: &Count, record: impl Fn(Duration)) -> T
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
    hedges.add(1);
    let second = read();
    tokio::pin!(second);
    tokio::select! {
        answer = &mut first => {
            record(start.elapsed());
            answer
        }
        answer = &mut second => {
            wins.add(1);
            answer
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_request_that_does_not_answer_is_sent_again_and_the_second_answers() {
        let calls = AtomicUsize::new(0);
        let (hedges, wins) = (Count::new(), Count::new());
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
        assert_eq!((answer, hedges.value(), wins.value()), (1, 1, 1));

        // A request that answers in time is not repeated.
        let (hedges, wins) = (Count::new(), Count::new());
        let answer = hedged_after(|| async { 7 }, Duration::from_secs(5), &hedges, &wins, |_| {}).await;
        assert_eq!((answer, hedges.value(), wins.value()), (7, 0, 0));
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
