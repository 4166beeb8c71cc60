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

/// Whether the fence feeds its watchdog after a renewal that started
/// `since_start` ago: only when armed (an unarmed fence promises nothing),
/// never once fenced (the guests are dead; a device then resets the host,
/// the backstop should a SIGKILL not have worked), and only if the renewal
/// still counts at the moment of feeding (a fence frozen in the middle of
/// a renewal must not feed when it thaws).
pub fn may_feed(armed: bool, fenced: bool, since_start: Duration, s: &FenceSettings) -> bool {
    armed && !fenced && renewal_counts(since_start, s)
}

/// The watchdog timeout for these timings (see `docs/FENCING.md`, "The
/// watchdog"): the longest whole number of seconds `T` (a device's
/// granularity) with
///
/// ```text
/// io_timeout_ms + T + kill_budget_ms <= fence_after_ms
/// ```
///
/// The fence feeds the watchdog only right after a renewal that counted,
/// which completed at most `io_timeout_ms` after its start; the watchdog
/// acts `T` after the last feed; its action (a reset, or the stand-in's
/// SIGKILL of every guest) takes at most the kill budget. So the guests
/// are dead by the lease's promise even when the fence froze or died right
/// after that feed. `T` must also outlast two renewal attempts, so that a
/// healthy fence with one slow write keeps it fed. A one-line reason if
/// the timings leave no such `T`.
pub fn watchdog_timeout(s: &FenceSettings) -> Result<Duration, String> {
    let room = s
        .fence_after_ms
        .saturating_sub(s.io_timeout_ms)
        .saturating_sub(s.kill_budget_ms);
    let t = room / 1000 * 1000;
    let fed_every = 2 * s.renew_ms.max(s.io_timeout_ms);
    if t == 0 || t < fed_every {
        return Err(format!(
            "--fence-watchdog needs a timeout of whole seconds of at least {fed_every} ms (two renewals) that fits in --fence-after-ms {} minus --fence-io-timeout-ms {} minus the {} ms kill budget ({room} ms); raise --fence-after-ms",
            s.fence_after_ms, s.io_timeout_ms, s.kill_budget_ms
        ));
    }
    Ok(Duration::from_millis(t))
}

/// The latest moment, after the start of the last counted renewal, at
/// which a watchdog of `timeout` has stopped the guests: the feed came at
/// most `io_timeout_ms` after that start, the watchdog acts `timeout`
/// later, and its action takes at most the kill budget.
pub fn watchdog_stops_guests_by(s: &FenceSettings, timeout: Duration) -> Duration {
    Duration::from_millis(s.io_timeout_ms + s.kill_budget_ms) + timeout
}

/// The state of a watchdog timer (the stand-in `tern-watchdog` keeps one;
/// the kernel's watchdog core behaves the same way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dog {
    /// Never fed, or closed with the magic `V`: no promise to keep.
    Disarmed,
    /// Fed; acts when `deadline` passes without another feed.
    Armed {
        /// The last feed plus the timeout.
        deadline: std::time::Instant,
    },
    /// It acted: the guests were killed, and any guest QEMU that appears
    /// is killed too, until a fence feeds it again (alive, back in the
    /// cluster, renewing again).
    Fired,
}

/// What woke the watchdog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DogEvent {
    /// A feed: any byte other than `V`.
    Feed,
    /// The magic close character `V`: the fence disarms it on purpose.
    MagicClose,
    /// Time passed.
    Tick,
}

/// What the watchdog does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DogAct {
    /// Nothing.
    Wait,
    /// The timeout passed: kill every guest now (the reset).
    Fire,
    /// Fired before: kill any guest QEMU that lives.
    Sweep,
}

impl Dog {
    /// The next state after `ev` at `now`, with the feed timeout `timeout`.
    pub fn step(self, ev: DogEvent, now: std::time::Instant, timeout: Duration) -> (Dog, DogAct) {
        match (self, ev) {
            (_, DogEvent::Feed) => (
                Dog::Armed {
                    deadline: now + timeout,
                },
                DogAct::Wait,
            ),
            (Dog::Fired, DogEvent::MagicClose) | (Dog::Disarmed, _) => {
                (Dog::Disarmed, DogAct::Wait)
            }
            (Dog::Armed { .. }, DogEvent::MagicClose) => (Dog::Disarmed, DogAct::Wait),
            (Dog::Armed { deadline }, DogEvent::Tick) if now >= deadline => {
                (Dog::Fired, DogAct::Fire)
            }
            (armed @ Dog::Armed { .. }, DogEvent::Tick) => (armed, DogAct::Wait),
            (Dog::Fired, DogEvent::Tick) => (Dog::Fired, DogAct::Sweep),
        }
    }
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

    #[test]
    fn feeds_only_armed_unfenced_and_in_time() {
        let s = FenceSettings::default();
        let ms = Duration::from_millis;
        assert!(may_feed(true, false, ms(999), &s));
        assert!(!may_feed(true, false, ms(1001), &s));
        assert!(!may_feed(false, false, ms(10), &s));
        assert!(!may_feed(true, true, ms(10), &s));
    }

    #[test]
    fn the_watchdog_acts_inside_the_lease_promise() {
        let s = FenceSettings::default();
        let t = watchdog_timeout(&s).unwrap();
        // 5000 ms promised: 1000 ms for the write, 1000 ms for the kill.
        assert_eq!(t, Duration::from_secs(3));
        assert_eq!(watchdog_stops_guests_by(&s, t), Duration::from_millis(5000));
        // Whole seconds, rounded down.
        let s2 = FenceSettings {
            fence_after_ms: 5999,
            ..s
        };
        assert_eq!(watchdog_timeout(&s2).unwrap(), Duration::from_secs(3));
        // Too tight to feed it twice: refused, naming the flag.
        let tight = FenceSettings {
            fence_after_ms: 3500,
            ..s
        };
        assert!(watchdog_timeout(&tight)
            .unwrap_err()
            .contains("--fence-after-ms 3500"));
        // Every accepted timing keeps the promise and outlasts two renewals.
        for fence_after_ms in (1000..30_000).step_by(250) {
            for io_timeout_ms in [100, 500, 1000, 2500] {
                for renew_ms in [100, 500, 1000] {
                    let s = FenceSettings {
                        renew_ms,
                        fence_after_ms,
                        io_timeout_ms,
                        kill_budget_ms: 1000,
                    };
                    if let Ok(t) = watchdog_timeout(&s) {
                        let by = watchdog_stops_guests_by(&s, t);
                        assert!(by <= Duration::from_millis(fence_after_ms), "{s:?}");
                        assert!(t >= Duration::from_millis(2 * renew_ms.max(io_timeout_ms)));
                        // (and the fence's own timings are valid too)
                        assert!(s.validate().is_ok(), "{s:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_watchdog_fires_once_unfed_and_sweeps_until_fed_again() {
        let t = Duration::from_secs(3);
        let t0 = std::time::Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        // Unfed, it never acts.
        assert_eq!(
            Dog::Disarmed.step(DogEvent::Tick, ms(60_000), t),
            (Dog::Disarmed, DogAct::Wait)
        );
        let (d, _) = Dog::Disarmed.step(DogEvent::Feed, ms(0), t);
        assert_eq!(d.step(DogEvent::Tick, ms(2999), t), (d, DogAct::Wait));
        let (d, _) = d.step(DogEvent::Feed, ms(2000), t);
        assert_eq!(d.step(DogEvent::Tick, ms(4999), t).1, DogAct::Wait);
        let (fired, act) = d.step(DogEvent::Tick, ms(5000), t);
        assert_eq!((fired, act), (Dog::Fired, DogAct::Fire));
        assert_eq!(
            fired.step(DogEvent::Tick, ms(9000), t),
            (Dog::Fired, DogAct::Sweep)
        );
        // Fed again (the fence lives and renews again): armed anew.
        assert!(matches!(
            fired.step(DogEvent::Feed, ms(9000), t).0,
            Dog::Armed { .. }
        ));
        // The magic close disarms it.
        assert_eq!(d.step(DogEvent::MagicClose, ms(2500), t).0, Dog::Disarmed);
    }
}
