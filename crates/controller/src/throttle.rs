//! Byte-rate caps on what exports read from their sources: one per import, and one per source
//! object that all of its imports share. A chunk waits for every cap before it goes on to its
//! decoder, so a capped export reads no faster than allowed (the wait holds back the HTTP body,
//! and TCP's flow control passes it on to the sender).

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{Arc, Mutex, PoisonError},
};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// The smallest burst a cap allows: an HTTP chunk or two.
const MIN_BURST: u32 = 64 << 10;

/// One byte-rate cap.
pub(crate) struct Throttle {
    bytes_per_second: u64,
    limiter: DefaultDirectRateLimiter,
    /// The most bytes granted in one go (a tenth of a second's worth, at least [`MIN_BURST`]).
    burst: NonZeroU32,
}

impl Throttle {
    /// A cap of `bytes_per_second` (at most 4 GiB/s; 0: none).
    pub(crate) fn new(bytes_per_second: u64) -> Option<Arc<Self>> {
        let rate = NonZeroU32::new(u32::try_from(bytes_per_second).unwrap_or(u32::MAX))?;
        let burst = NonZeroU32::new((rate.get() / 10).max(MIN_BURST)).unwrap_or(rate);
        let limiter = RateLimiter::direct(Quota::per_second(rate).allow_burst(burst));
        Some(Arc::new(Self {
            bytes_per_second,
            limiter,
            burst,
        }))
    }

    /// The cap.
    pub(crate) fn bytes_per_second(&self) -> u64 {
        self.bytes_per_second
    }

    /// Waits until `bytes` more may pass.
    pub(crate) async fn take(&self, bytes: usize) {
        let mut left = u32::try_from(bytes).unwrap_or(u32::MAX);
        while let Some(n) = NonZeroU32::new(left.min(self.burst.get())) {
            // `n` never exceeds the burst, so the limiter can always grant it.
            let _ = self.limiter.until_n_ready(n).await;
            left -= n.get();
        }
    }
}

/// The per-source caps of one controller, by source object, so that every import from a source
/// shares one.
#[derive(Default)]
pub(crate) struct SourceThrottles(Mutex<HashMap<String, Arc<Throttle>>>);

impl SourceThrottles {
    /// The shared cap of the source `key` at `bytes_per_second` (a changed rate starts a new cap;
    /// imports already running keep the one they took).
    pub(crate) fn get(&self, key: &str, bytes_per_second: u64) -> Option<Arc<Throttle>> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match map.get(key) {
            Some(throttle) if throttle.bytes_per_second() == bytes_per_second => Some(throttle.clone()),
            _ => {
                let throttle = Throttle::new(bytes_per_second)?;
                map.insert(key.to_owned(), throttle.clone());
                Some(throttle)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[tokio::test]
    async fn a_cap_spaces_bytes_out_to_its_rate_after_one_burst() {
        // 1 MiB at 1 MiB/s in chunks larger than the 100 KiB burst: the first burst passes at
        // once, the rest at the rate (governor keeps its own clock, so this takes real time).
        let throttle = Throttle::new(1 << 20).unwrap();
        let started = Instant::now();
        for _ in 0..8 {
            throttle.take(128 << 10).await;
        }
        let waited = started.elapsed();
        let floor =
            Duration::from_secs_f64(f64::from((1 << 20) - (1 << 20) / 10) / f64::from(1 << 20) * 0.95);
        assert!(
            waited >= floor,
            "{waited:?} < {floor:?}: the cap let bytes through faster"
        );
    }

    #[test]
    fn no_cap_is_none_and_a_source_shares_one_until_its_rate_changes() {
        assert!(Throttle::new(0).is_none());
        let throttles = SourceThrottles::default();
        let a = throttles.get("VmwareSource/ns/vc", 1000).unwrap();
        let b = throttles.get("VmwareSource/ns/vc", 1000).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let c = throttles.get("VmwareSource/ns/vc", 2000).unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        assert!(throttles.get("VmwareSource/ns/other", 0).is_none());
    }
}
