//! Agent events, as `tern event` prints them (virsh event's counterpart):
//! domain lifecycle changes, migration phases, pre-copy iterations and the
//! events a migration job records. They are read with [`Request::Events`]
//! (a long poll), each numbered so a client asks for what followed the
//! last one it saw.
//!
//! [`Request::Events`]: crate::Request::Events

use serde::{Deserialize, Serialize};

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// The domain's state changed (started, paused, shut off, ...), or it
    /// was defined or undefined.
    Lifecycle,
    /// A migration entered a phase (begin, prepare, perform, ...).
    MigrationPhase,
    /// A pre-copy iteration began (QEMU synced the dirty bitmap again).
    Iteration,
    /// A migration job recorded something (policy steps, tunnel summary, ...).
    Job,
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EventKind::Lifecycle => "lifecycle",
            EventKind::MigrationPhase => "migration-phase",
            EventKind::Iteration => "iteration",
            EventKind::Job => "job",
        })
    }
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentEvent {
    /// Its number on this agent (increasing, from 1 at the agent's start).
    pub seq: u64,
    /// When it happened, ms since the epoch.
    pub at_ms: u64,
    /// The domain it concerns.
    pub domain: String,
    /// What it is about.
    pub kind: EventKind,
    /// What happened, in words (`running (booted)`, `perform`, ...).
    pub detail: String,
}

/// The answer to [`Request::Events`](crate::Request::Events).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsReply {
    /// The events after the one asked for, oldest first.
    pub events: Vec<AgentEvent>,
    /// The `after` to ask with next.
    pub next: u64,
    /// Events that were dropped from the agent's buffer before this client
    /// asked for them (it fell behind).
    #[serde(default)]
    pub missed: u64,
}
