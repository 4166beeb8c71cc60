use super::*;

const MIB: u64 = 1 << 20;

fn cfg(postcopy: bool) -> PolicyConfig {
    PolicyConfig {
        deadline_ms: 60_000,
        max_downtime_ms: 1000,
        knobs: Knobs {
            downtime: true,
            throttle: true,
            postcopy,
            pause: true,
        },
    }
}

/// Replays a trace: a guest of `mem` dirtying `dirty` (slowed by the
/// throttle) on a link of `bw`; returns the decisions and whether and
/// when it finished.
fn replay(c: &PolicyConfig, mem: u64, bw: u64, dirty: u64) -> (Vec<Action>, bool, u64) {
    let mut st = PolicyState::new(300);
    let mut acts = Vec::new();
    let mut remaining = mem;
    let mut t = 0u64;
    let mut throttle = 0u64;
    for iteration in 1..2000 {
        let eff = dirty * (100 - throttle) / 100;
        let obs = Observation {
            elapsed_ms: t,
            iteration,
            remaining,
            bandwidth: bw,
            dirty_rate: eff,
            throttle,
            ..Default::default()
        };
        let (s2, d) = decide(c, &st, &obs);
        st = s2;
        if let Some(d) = d {
            assert!(!d.reason.contains('\n'));
            acts.push(d.action);
        }
        if st.paused || st.postcopy || remaining * 1000 / bw <= st.downtime_ms {
            return (acts, true, t + remaining * 1000 / bw);
        }
        let pass_ms = (remaining * 1000 / bw).max(100);
        t += pass_ms;
        remaining = (eff * pass_ms / 1000).min(mem);
        // QEMU raises the throttle by 10 points per pass while it helps.
        if throttle < st.max_throttle && st.max_throttle > THROTTLE_OFF {
            throttle = (throttle + 10).min(st.max_throttle);
        }
    }
    (acts, false, t)
}

#[test]
fn forecast_with_policy_adds_setup_and_models_the_last_resorts() {
    // Easy: plain pre-copy plus the fixed set-up time.
    let easy = predict_with_policy(&cfg(false), 512 * MIB, 1024 * MIB, 0, 300, 0);
    assert_eq!(easy.total_ms, 500 + SETUP_MS);
    // 256 MiB over a 50 MiB/s link, dirtying 48 MiB/s: the first pass,
    // the two that stall, then post-copy sends the rest once over the
    // same link: about four times the memory.
    let pc = predict_with_policy(&cfg(true), 256 * MIB, 50 * MIB, 48 * MIB, 300, 50 * MIB);
    assert!(pc.converges);
    assert_eq!(pc.downtime_ms, POSTCOPY_SWITCH_MS);
    assert!((18_500..20_500).contains(&pc.total_ms), "{pc:?}");
    // A `--bandwidth` cap of 50 MiB/s on a fast link: post-copy is not
    // capped, and its tail is short.
    let fast = predict_with_policy(&cfg(true), 256 * MIB, 50 * MIB, 48 * MIB, 300, 1 << 30);
    assert!((14_500..15_500).contains(&fast.total_ms), "{fast:?}");
    // Without post-copy: paused at the deadline, a long pause.
    let pause = predict_with_policy(&cfg(false), 256 * MIB, 50 * MIB, 48 * MIB, 300, 0);
    assert!(
        pause.total_ms > 60_000 && pause.downtime_ms > 4_000,
        "{pause:?}"
    );
}

#[test]
fn postcopy_waits_for_passes_that_do_not_shrink() {
    let c = cfg(true);
    let obs = |iteration, remaining, elapsed_ms| Observation {
        elapsed_ms,
        iteration,
        remaining,
        bandwidth: 40 * MIB,
        dirty_rate: 45 * MIB,
        throttle: 0,
        ..Default::default()
    };
    let c = PolicyConfig {
        knobs: Knobs {
            throttle: false,
            ..c.knobs
        },
        ..c
    };
    let mut st = PolicyState::new(300);
    let mut acts = Vec::new();
    // One noisy pass that looks hopeless, then the remainder shrinks.
    for (i, rem, t) in [
        (1, 512 * MIB, 0),
        (2, 500 * MIB, 3000),
        (3, 200 * MIB, 9000),
    ] {
        let (s, d) = decide(&c, &st, &obs(i, rem, t));
        st = s;
        acts.extend(d.map(|d| d.action));
    }
    assert!(!acts.contains(&Action::StartPostcopy), "{acts:?}");
    // Two passes in a row that do not shrink: now post-copy.
    for (i, rem, t) in [(4, 190 * MIB, 14000), (5, 185 * MIB, 19000)] {
        let (s, d) = decide(&c, &st, &obs(i, rem, t));
        st = s;
        acts.extend(d.map(|d| d.action));
    }
    assert_eq!(acts.last(), Some(&Action::StartPostcopy), "{acts:?}");
}

#[test]
fn prediction_matches_the_geometric_series() {
    // 1 GiB at 1 GiB/s, dirtying 256 MiB/s: 1 s + 0.25 s + ... until < 300 ms of data.
    let p = predict(1 << 30, 1 << 30, 256 * MIB, 300, 30);
    assert!(p.converges);
    assert_eq!(p.iterations, 2);
    assert!((1250..1260).contains(&p.total_ms), "{p:?}");
    let never = predict(1 << 30, 100 * MIB, 200 * MIB, 300, 30);
    assert!(!never.converges);
    let idle = predict(512 * MIB, 1 << 30, 0, 300, 30);
    assert!(idle.converges && idle.total_ms <= 510);
}

#[test]
fn an_easy_guest_gets_no_steps() {
    let (acts, done, _) = replay(&cfg(false), 2 << 30, 1 << 30, 50 * MIB);
    assert!(done);
    assert!(acts.is_empty(), "{acts:?}");
}

#[test]
fn a_guest_near_the_link_speed_gets_a_longer_pause_first() {
    // 95% of the link: pre-copy converges, but too slowly for the
    // deadline at 300 ms; a 4 s pause lets it finish in a few passes.
    let mut c = cfg(false);
    c.max_downtime_ms = 4000;
    let (acts, done, t) = replay(&c, 512 * MIB, 100 * MIB, 95 * MIB);
    assert!(done && t <= c.deadline_ms, "{acts:?} {t}");
    assert!(matches!(acts[0], Action::SetDowntime { .. }), "{acts:?}");
    assert!(!acts.iter().any(|a| matches!(a, Action::PauseAndFinish)));
}

#[test]
fn a_guest_faster_than_the_link_is_throttled_and_finishes() {
    let c = cfg(false);
    let (acts, done, t) = replay(&c, 512 * MIB, 100 * MIB, 300 * MIB);
    assert!(done && t <= c.deadline_ms, "{acts:?} {t}");
    assert!(
        acts.iter()
            .any(|a| matches!(a, Action::SetMaxThrottle { .. })),
        "{acts:?}"
    );
    assert!(!acts.contains(&Action::StartPostcopy));
    assert!(!acts.contains(&Action::PauseAndFinish));
}

#[test]
fn when_throttling_is_not_enough_postcopy_if_allowed_else_pause() {
    let mut c = cfg(true);
    c.knobs.throttle = false;
    let (acts, done, _) = replay(&c, 512 * MIB, 50 * MIB, 500 * MIB);
    assert!(done);
    assert_eq!(acts.last(), Some(&Action::StartPostcopy), "{acts:?}");
    let mut c = cfg(false);
    c.knobs.throttle = false;
    let (acts, done, t) = replay(&c, 512 * MIB, 50 * MIB, 500 * MIB);
    assert!(done);
    assert_eq!(acts.last(), Some(&Action::PauseAndFinish), "{acts:?}");
    // Noticed within one pass of the deadline; the pause then sends at
    // most the whole memory once.
    assert!(t <= c.deadline_ms + 2 * (512 * 1000 / 50) + 1000, "{t}");
}

#[test]
fn operator_knobs_are_never_turned() {
    let c = PolicyConfig {
        deadline_ms: 10_000,
        max_downtime_ms: 300,
        knobs: Knobs {
            downtime: false,
            throttle: false,
            postcopy: false,
            pause: false,
        },
    };
    let (acts, _, _) = replay(&c, 2 << 30, 50 * MIB, 500 * MIB);
    assert!(acts.is_empty(), "{acts:?}");
}

#[test]
fn steps_are_spaced_out() {
    let c = cfg(false);
    let st = PolicyState::new(300);
    let obs = Observation {
        elapsed_ms: 5000,
        iteration: 3,
        remaining: 1 << 30,
        bandwidth: 10 * MIB,
        dirty_rate: 100 * MIB,
        throttle: 0,
        ..Default::default()
    };
    let (st, d) = decide(&c, &st, &obs);
    assert!(d.is_some());
    let (_, d2) = decide(
        &c,
        &st,
        &Observation {
            elapsed_ms: 5500,
            ..obs
        },
    );
    assert!(d2.is_none());
}
