//! `tern event`: the host's events as they happen, as `virsh event` prints
//! them, read with the agent's long-polled `events` request.

use crate::Result;
use std::time::{Duration, Instant};
use tern_api::event::{AgentEvent, EventsReply};
use tern_api::{Client, Request};

/// How long one long poll waits on the agent.
const POLL: Duration = Duration::from_secs(20);

/// What `tern event` was asked.
#[derive(Debug, Clone, Default)]
pub struct EventArgs {
    /// Only this domain's events.
    pub domain: Option<String>,
    /// Keep printing (otherwise stop after the first event).
    pub keep_looping: bool,
    /// Prefix each line with the event's time.
    pub timestamp: bool,
    /// One JSON object per line.
    pub json: bool,
    /// Give up after this long.
    pub timeout: Option<Duration>,
}

/// Prints events until the first one (or forever with `--loop`), or until
/// the timeout.
pub async fn run(c: &Client, a: EventArgs) -> Result<()> {
    let started = Instant::now();
    let mut after = None;
    let mut printed = 0u64;
    loop {
        let wait = match a.timeout {
            Some(t) => match t.checked_sub(started.elapsed()) {
                Some(left) if !left.is_zero() => left.min(POLL),
                _ => break,
            },
            None => POLL,
        };
        let r: EventsReply = c
            .call(&Request::Events {
                after,
                domain: a.domain.clone(),
                wait_ms: wait.as_millis() as u64,
            })
            .await?;
        after = Some(r.next);
        if r.missed > 0 {
            eprintln!(
                "tern: {} events were dropped before they could be read",
                r.missed
            );
        }
        for e in &r.events {
            println!("{}", line(e, &a));
            printed += 1;
            if !a.keep_looping {
                return Ok(());
            }
        }
    }
    if !a.json {
        println!("events received: {printed}");
    }
    Ok(())
}

/// One event as `virsh event` words it, or as JSON.
pub fn line(e: &AgentEvent, a: &EventArgs) -> String {
    if a.json {
        return serde_json::to_string(e).unwrap_or_default();
    }
    let text = format!("event '{}' for domain '{}': {}", e.kind, e.domain, e.detail);
    if a.timestamp {
        format!("{}: {text}", timestamp(e.at_ms))
    } else {
        text
    }
}

/// `YYYY-MM-DD HH:MM:SS.mmm+0000`, virsh's `--timestamp` form, in UTC.
pub fn timestamp(ms: u64) -> String {
    let secs = ms / 1000;
    let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
    let t = secs % 86_400;
    format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02}.{:03}+0000",
        t / 3600,
        t / 60 % 60,
        t % 60,
        ms % 1000
    )
}

/// The calendar date of a day count since 1970-01-01 (Howard Hinnant's
/// algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_api::event::EventKind;

    #[test]
    fn timestamps_are_utc_calendar_times() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00.000+0000");
        assert_eq!(timestamp(951_782_400_123), "2000-02-29 00:00:00.123+0000");
        assert_eq!(timestamp(1_796_562_245_001), "2026-12-06 13:04:05.001+0000");
    }

    #[test]
    fn lines_read_like_virsh_event() {
        let e = AgentEvent {
            seq: 1,
            at_ms: 0,
            domain: "vm1".into(),
            kind: EventKind::MigrationPhase,
            detail: "perform".into(),
        };
        let mut a = EventArgs::default();
        assert_eq!(
            line(&e, &a),
            "event 'migration-phase' for domain 'vm1': perform"
        );
        a.timestamp = true;
        assert!(line(&e, &a).starts_with("1970-01-01 00:00:00.000+0000: event"));
        a.json = true;
        assert!(line(&e, &a).contains("\"kind\":\"migration-phase\""));
    }
}
