//! A token bucket shared by all streams of a sender.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Limits the aggregate byte rate; callers may go into debt and then wait it off.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// `rate` bytes per second with a burst of a quarter second (at least 64 KiB).
    pub fn new(rate: u64) -> Self {
        let rate = rate.max(1) as f64;
        let burst = (rate / 4.0).max(65536.0);
        TokenBucket {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes `n` tokens and returns how long to wait before using them.
    pub fn take(&self, n: u64) -> Duration {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(st.1).as_secs_f64() * self.rate;
        st.0 = (st.0 + refill).min(self.burst) - n as f64;
        st.1 = now;
        if st.0 >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-st.0 / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debt_turns_into_wait() {
        let b = TokenBucket::new(1_000_000);
        assert_eq!(b.take(100_000), Duration::ZERO); // within the 250 kB burst
        let w = b.take(1_150_000); // 1 MB in debt
        assert!(
            w > Duration::from_millis(950) && w < Duration::from_millis(1050),
            "{w:?}"
        );
    }

    #[test]
    fn aggregate_rate_holds() {
        let b = TokenBucket::new(4_000_000);
        let start = Instant::now();
        for _ in 0..20 {
            std::thread::sleep(b.take(100_000));
        }
        // 2 MB at 4 MB/s with a 1 MB burst: at least ~0.25 s.
        assert!(
            start.elapsed() >= Duration::from_millis(240),
            "{:?}",
            start.elapsed()
        );
    }
}
