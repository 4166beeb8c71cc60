//! The fence process's decisions, as pure functions.

use super::config::FenceSettings;
use std::time::Duration;

/// What the fence does on one turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Write the leases again.
    Renew,
    /// The promise falls due: kill every guest now.
    Kill,
    /// Guests were killed: leave the leases to expire until the agent,
    /// back in the cluster, clears the fenced state.
    Stay,
}

/// The turn for a fence that is `armed` (or not), has `fenced` (or not),
/// and last counted a renewal `since_ok` ago.
pub fn turn(armed: bool, fenced: bool, since_ok: Duration, s: &FenceSettings) -> Turn {
    if fenced {
        return Turn::Stay;
    }
    let due = Duration::from_millis(s.fence_after_ms.saturating_sub(s.kill_budget_ms));
    if armed && since_ok >= due {
        Turn::Kill
    } else {
        Turn::Renew
    }
}

/// Whether a renewal that took `took` counts: a slower one may have
/// landed after a reader decided the lease was gone.
pub fn renewal_counts(took: Duration, s: &FenceSettings) -> bool {
    took <= Duration::from_millis(s.io_timeout_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kills_before_the_promise_falls_due_and_only_when_armed() {
        let s = FenceSettings::default();
        let ms = Duration::from_millis;
        assert_eq!(turn(true, false, ms(0), &s), Turn::Renew);
        assert_eq!(turn(true, false, ms(3999), &s), Turn::Renew);
        // 5000 ms promised, 1000 ms kept for the kill.
        assert_eq!(turn(true, false, ms(4000), &s), Turn::Kill);
        assert_eq!(turn(false, false, ms(60_000), &s), Turn::Renew);
        assert_eq!(turn(true, true, ms(0), &s), Turn::Stay);
    }

    #[test]
    fn slow_renewals_do_not_count() {
        let s = FenceSettings::default();
        assert!(renewal_counts(Duration::from_millis(1000), &s));
        assert!(!renewal_counts(Duration::from_millis(1001), &s));
    }
}
