//! Per-caller limits, applied by the auth layer once it knows the caller (a token's or
//! certificate rule's name; a refused caller's client address): a token bucket of calls per second
//! (governor) and a cap on calls in progress (a semaphore per caller, tried, never waited on). Over
//! either, the call is answered RESOURCE_EXHAUSTED at once with `google.rpc.RetryInfo` saying when
//! to try again: nothing queues, so a caller over its limit costs the server almost nothing.

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    state::keyed::DefaultKeyedStateStore,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

/// Callers remembered before the idle ones are forgotten.
const KEYS_MAX: usize = 10_000;
/// The retry delay given to a caller over its concurrency cap.
const BUSY_RETRY: Duration = Duration::from_millis(200);

type Keyed = RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock>;

/// The limits of one server.
pub(super) struct Limits {
    rate: Option<Keyed>,
    concurrent: usize,
    in_flight: Mutex<HashMap<String, Arc<Semaphore>>>,
    checks: AtomicU64,
}

/// A call's place among its caller's calls in progress: held until the call's response ends.
pub(super) struct Permit(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl Limits {
    /// `rate` calls per second per caller with bursts of `burst` (0: no rate limit), and at most
    /// `concurrent` calls in progress per caller (0: no cap).
    pub(super) fn new(rate: u32, burst: u32, concurrent: u32) -> Self {
        let rate = NonZeroU32::new(rate).map(|r| {
            let burst = NonZeroU32::new(burst).unwrap_or(r);
            RateLimiter::keyed(Quota::per_second(r).allow_burst(burst))
        });
        Self { rate, concurrent: concurrent as usize, in_flight: Default::default(), checks: AtomicU64::new(0) }
    }

    /// Admits one call of `key` now, or answers why not.
    pub(super) fn admit(&self, key: &str) -> Result<Permit, Status> {
        self.check_rate(key)?;
        if self.concurrent == 0 {
            return Ok(Permit(None));
        }
        let sem = {
            let mut map = self.in_flight.lock().expect("limits");
            if map.len() >= KEYS_MAX {
                // Forget callers with nothing in progress.
                let all = self.concurrent;
                map.retain(|_, s| s.available_permits() < all);
            }
            match map.get(key) {
                Some(s) => s.clone(),
                // A caller's first call: the only one that allocates its key.
                None => map.entry(key.to_owned()).or_insert_with(|| Arc::new(Semaphore::new(self.concurrent))).clone(),
            }
        };
        match sem.try_acquire_owned() {
            Ok(p) => Ok(Permit(Some(p))),
            Err(_) => Err(exhausted(
                format!("{key} has {} calls in progress, the most allowed (max_calls_per_caller)", self.concurrent),
                BUSY_RETRY,
            )),
        }
    }

    /// Takes one call of `key` from its token bucket, or answers when the next one is due.
    pub(super) fn check_rate(&self, key: &str) -> Result<(), Status> {
        let Some(rate) = &self.rate else { return Ok(()) };
        if self.checks.fetch_add(1, Ordering::Relaxed).is_multiple_of(4096) && rate.len() >= KEYS_MAX {
            rate.retain_recent();
        }
        rate.check_key(&key.to_owned()).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            exhausted(
                format!("{key} is over its rate limit (rate_limit); retry in {} ms", wait.as_millis().max(1)),
                wait,
            )
        })
    }
}

/// RESOURCE_EXHAUSTED with a `google.rpc.RetryInfo` of `after`.
fn exhausted(message: String, after: Duration) -> Status {
    let details = ErrorDetails::with_retry_info(Some(after.max(Duration::from_millis(1))));
    Status::with_error_details(Code::ResourceExhausted, message, details)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_over_the_rate_is_refused_with_a_delay_and_others_are_not() {
        let limits = Limits::new(10, 5, 0);
        for _ in 0..5 {
            limits.admit("a").unwrap();
        }
        let refused = limits.admit("a").err().expect("over the burst");
        assert_eq!(refused.code(), Code::ResourceExhausted);
        let delay = refused.get_details_retry_info().and_then(|r| r.retry_delay).expect("RetryInfo");
        assert!(delay > Duration::ZERO && delay <= Duration::from_millis(100), "{delay:?}");
        limits.admit("b").unwrap();
    }

    #[test]
    fn calls_in_progress_are_capped_per_caller_and_freed_when_done() {
        let limits = Limits::new(0, 0, 2);
        let (p1, _p2) = (limits.admit("a").unwrap(), limits.admit("a").unwrap());
        let refused = limits.admit("a").err().expect("over the cap");
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert!(refused.get_details_retry_info().is_some());
        limits.admit("b").unwrap();
        drop(p1);
        limits.admit("a").unwrap();
    }
}
