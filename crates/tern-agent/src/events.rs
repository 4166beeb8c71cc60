//! The agent's event stream behind `tern event`: lifecycle changes of
//! domains, migration phases, pre-copy iterations and job events, kept in
//! a bounded buffer and numbered so watchers long-poll for what followed
//! the last event they saw. One agent runs per process, so the log is
//! process-wide: the domain registry and the job table emit into it
//! without a handle threaded through them.

use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tern_api::event::{AgentEvent, EventKind, EventsReply};
use tokio::sync::watch;

/// Events kept for watchers that fall behind; older ones are dropped (and
/// counted as missed by the watcher that asks for them).
pub const CAPACITY: usize = 4096;

/// The longest a watcher's long poll waits.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// A numbered, bounded event buffer.
#[derive(Debug)]
pub struct EventLog {
    ring: Mutex<VecDeque<AgentEvent>>,
    /// The number of the last event.
    last: watch::Sender<u64>,
}

/// The process-wide event log.
pub fn log() -> &'static EventLog {
    static L: OnceLock<EventLog> = OnceLock::new();
    L.get_or_init(EventLog::new)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog::new()
    }
}

impl EventLog {
    /// An empty log.
    pub fn new() -> EventLog {
        EventLog {
            ring: Mutex::new(VecDeque::new()),
            last: watch::channel(0).0,
        }
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, VecDeque<AgentEvent>> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an event and wakes the watchers.
    pub fn emit(&self, domain: &str, kind: EventKind, detail: impl Into<String>) {
        let mut ring = self.ring();
        let seq = ring.back().map_or(*self.last.borrow(), |e| e.seq) + 1;
        ring.push_back(AgentEvent {
            seq,
            at_ms: now_ms(),
            domain: domain.to_string(),
            kind,
            detail: detail.into(),
        });
        if ring.len() > CAPACITY {
            ring.pop_front();
        }
        drop(ring);
        self.last.send_replace(seq);
    }

    /// The number of the last event (0: none yet).
    pub fn last(&self) -> u64 {
        *self.last.borrow()
    }

    /// The events after `after`, of `domain` only if given.
    pub fn since(&self, after: u64, domain: Option<&str>) -> EventsReply {
        let ring = self.ring();
        let events = ring
            .iter()
            .filter(|e| e.seq > after && domain.is_none_or(|d| e.domain == d))
            .cloned()
            .collect();
        EventsReply {
            events,
            next: ring.back().map_or(after, |e| e.seq.max(after)),
            missed: match ring.front() {
                Some(f) if f.seq > after + 1 => f.seq - after - 1,
                _ => 0,
            },
        }
    }

    /// Waits up to `wait` (at most [`MAX_WAIT`]) for events after `after`
    /// (none: after the last one now) and answers with them.
    pub async fn wait(
        &self,
        after: Option<u64>,
        domain: Option<&str>,
        wait: Duration,
    ) -> EventsReply {
        let after = after.unwrap_or_else(|| self.last());
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        let mut rx = self.last.subscribe();
        loop {
            rx.borrow_and_update();
            let r = self.since(after, domain);
            if !r.events.is_empty() || r.missed > 0 {
                return r;
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return r;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_events_and_filters_by_domain() {
        let l = EventLog::new();
        l.emit("a", EventKind::Lifecycle, "running (booted)");
        l.emit("b", EventKind::MigrationPhase, "begin");
        l.emit("a", EventKind::Iteration, "iteration 2");
        let all = l.since(0, None);
        assert_eq!(all.events.len(), 3);
        assert_eq!(all.next, 3);
        assert_eq!(all.missed, 0);
        let a = l.since(1, Some("a"));
        assert_eq!(a.events.len(), 1);
        assert_eq!(a.events[0].detail, "iteration 2");
        assert_eq!(a.next, 3);
        assert!(l.since(3, None).events.is_empty());
    }

    #[test]
    fn a_watcher_that_fell_behind_is_told_how_much_it_missed() {
        let l = EventLog::new();
        for i in 0..CAPACITY + 10 {
            l.emit("a", EventKind::Job, format!("e{i}"));
        }
        let r = l.since(0, None);
        assert_eq!(r.missed, 10);
        assert_eq!(r.events.len(), CAPACITY);
        assert_eq!(l.since(10, None).missed, 0);
    }

    #[tokio::test]
    async fn a_long_poll_returns_when_an_event_comes() {
        let l = std::sync::Arc::new(EventLog::new());
        let l2 = l.clone();
        let w = tokio::spawn(async move { l2.wait(Some(0), None, MAX_WAIT).await });
        tokio::task::yield_now().await;
        l.emit("a", EventKind::Job, "x");
        let r = w.await.unwrap();
        assert_eq!(r.events[0].detail, "x");
    }
}
