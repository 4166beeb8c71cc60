//! QEMU's own states, typed: the migration status of `query-migrate`, the
//! run state of `query-status`, and the status of a block job from
//! `query-block-jobs`.
//!
//! Every decision Tern takes about a migration (switch over, resume, roll
//! back, recover after a restart) reads one of these. Comparing QEMU's
//! strings in many places invites a typo that compiles; an enum makes the
//! compiler list every state a `match` forgot. Unknown strings from a newer
//! QEMU map to an `Unknown` variant, which every decision treats as "not
//! safe to act on".

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

/// QEMU's `MigrationStatus` (qapi/migration.json), as `query-migrate`
/// reports it on either side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationStatus {
    /// No migration has run (or `query-migrate` returned no status).
    #[default]
    None,
    /// Connecting and setting up.
    Setup,
    /// `migrate_cancel` was asked; not yet cancelled.
    Cancelling,
    /// Cancelled; the source runs as before.
    Cancelled,
    /// Pre-copy: memory is being sent while the guest runs.
    Active,
    /// Post-copy: the destination runs the guest and pulls missing pages.
    PostcopyActive,
    /// Post-copy interrupted (link cut): both sides wait for a recovery.
    PostcopyPaused,
    /// Post-copy recovery is connecting.
    PostcopyRecoverSetup,
    /// Post-copy recovery is re-synchronising.
    PostcopyRecover,
    /// Every byte arrived; the source is paused for good.
    Completed,
    /// Failed; the source runs as before (unless it was paused).
    Failed,
    /// COLO fault tolerance (not used by Tern).
    Colo,
    /// Source paused before the device state, waiting for
    /// `migrate-continue` (Tern completes disk mirrors here).
    PreSwitchover,
    /// Source sending the final device state.
    Device,
    /// Waiting for a failover device to be unplugged.
    WaitUnplug,
    /// A state this build does not know (a newer QEMU).
    #[serde(other)]
    Unknown,
}

impl MigrationStatus {
    /// Parses QEMU's string; anything unknown becomes [`Self::Unknown`].
    pub fn parse(s: &str) -> Self {
        serde_json::from_value(Value::String(s.to_string())).unwrap_or(Self::Unknown)
    }

    /// The status in a `query-migrate` reply (`None` when absent).
    pub fn of_reply(q: &Value) -> Self {
        q.get("status")
            .and_then(Value::as_str)
            .map(Self::parse)
            .unwrap_or(Self::None)
    }

    /// QEMU's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Setup => "setup",
            Self::Cancelling => "cancelling",
            Self::Cancelled => "cancelled",
            Self::Active => "active",
            Self::PostcopyActive => "postcopy-active",
            Self::PostcopyPaused => "postcopy-paused",
            Self::PostcopyRecoverSetup => "postcopy-recover-setup",
            Self::PostcopyRecover => "postcopy-recover",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Colo => "colo",
            Self::PreSwitchover => "pre-switchover",
            Self::Device => "device",
            Self::WaitUnplug => "wait-unplug",
            Self::Unknown => "unknown",
        }
    }

    /// The destination runs the guest: post-copy started and has not
    /// ended. From here on the source must never resume.
    pub fn is_postcopy(self) -> bool {
        matches!(
            self,
            Self::PostcopyActive
                | Self::PostcopyPaused
                | Self::PostcopyRecoverSetup
                | Self::PostcopyRecover
        )
    }

    /// A pre-copy that is still under way: the destination has not got the
    /// full state, so cancelling leaves the guest whole on the source.
    pub fn is_precopy_in_flight(self) -> bool {
        matches!(
            self,
            Self::Setup | Self::Active | Self::PreSwitchover | Self::Device | Self::WaitUnplug
        )
    }

    /// The migration ended one way or the other.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

impl fmt::Display for MigrationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// QEMU's `RunState` (qapi/run-state.json), from `query-status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    /// Stopped by a debugger.
    Debug,
    /// Waiting for an incoming migration (`-incoming`).
    Inmigrate,
    /// An internal error stopped the guest.
    InternalError,
    /// A disk error stopped the guest (`werror=stop`).
    IoError,
    /// Paused (`stop`, or loaded and waiting for `cont`).
    Paused,
    /// The source after a completed migration: paused for good.
    Postmigrate,
    /// Started with `-S`, never ran.
    Prelaunch,
    /// Sending the final state of a migration.
    FinishMigrate,
    /// Loading a snapshot.
    RestoreVm,
    /// The guest runs.
    Running,
    /// Saving a snapshot.
    SaveVm,
    /// The guest shut down (`-no-shutdown`).
    Shutdown,
    /// ACPI suspend.
    Suspended,
    /// A watchdog fired with action pause.
    Watchdog,
    /// The guest panicked.
    GuestPanicked,
    /// COLO.
    Colo,
    /// A state this build does not know.
    #[serde(other)]
    Unknown,
}

impl RunState {
    /// Parses QEMU's string.
    pub fn parse(s: &str) -> Self {
        serde_json::from_value(Value::String(s.to_string())).unwrap_or(Self::Unknown)
    }

    /// Whether vCPUs execute.
    pub fn is_running(self) -> bool {
        self == Self::Running
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = serde_json::to_value(self).unwrap_or(Value::Null);
        f.write_str(v.as_str().unwrap_or("unknown"))
    }
}

/// QEMU's `JobStatus` of a block job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BlockJobStatus {
    /// Not yet set.
    Undefined,
    /// Created, not started.
    Created,
    /// Copying.
    Running,
    /// Paused by the user.
    Paused,
    /// A mirror in sync: writes now go to both sides.
    Ready,
    /// Paused while ready.
    Standby,
    /// Waiting for other jobs of a transaction.
    Waiting,
    /// Waiting for finalisation.
    Pending,
    /// Being cancelled or failed.
    Aborting,
    /// Finished (successfully or not); waits for `job-dismiss` when
    /// `auto-dismiss` is off, so its error can be read.
    Concluded,
    /// Gone.
    Null,
    /// A state this build does not know.
    #[serde(other)]
    Unknown,
}

/// One entry of `query-block-jobs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockJob {
    /// The job id (`device`).
    pub id: String,
    /// Its status.
    pub status: BlockJobStatus,
    /// A mirror in sync.
    pub ready: bool,
    /// Bytes done.
    pub offset: u64,
    /// Bytes in all.
    pub len: u64,
    /// Why it failed, once concluded with an error.
    pub error: Option<String>,
}

impl BlockJob {
    /// Reads every job of a `query-block-jobs` reply.
    pub fn list(reply: &Value) -> Vec<BlockJob> {
        reply
            .as_array()
            .into_iter()
            .flatten()
            .map(|j| BlockJob {
                id: j["device"].as_str().unwrap_or_default().to_string(),
                status: serde_json::from_value(j["status"].clone())
                    .unwrap_or(BlockJobStatus::Unknown),
                ready: j["ready"].as_bool().unwrap_or(false),
                offset: j["offset"].as_u64().unwrap_or(0),
                len: j["len"].as_u64().unwrap_or(0),
                error: j["error"].as_str().map(str::to_string),
            })
            .collect()
    }
}

/// How a mirror ended, read from its concluded entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MirrorEnd {
    /// Still going.
    Busy,
    /// Concluded without an error: every write reached the destination.
    Done,
    /// Concluded with an error, or vanished without a concluded entry.
    Failed(String),
}

/// Judges a mirror that Tern asked to complete. A mirror that is not in the
/// list at all is a failure: with `auto-dismiss` off a finished mirror
/// stays listed as `concluded` until Tern dismisses it, so only a failure
/// elsewhere (QEMU restarted, someone dismissed it) makes it vanish.
pub fn mirror_end(job: Option<&BlockJob>) -> MirrorEnd {
    match job {
        None => MirrorEnd::Failed("the mirror vanished before it concluded".into()),
        Some(j) => match (j.status, &j.error) {
            (BlockJobStatus::Concluded | BlockJobStatus::Null, Some(e)) => {
                MirrorEnd::Failed(e.clone())
            }
            (BlockJobStatus::Concluded | BlockJobStatus::Null, None) => MirrorEnd::Done,
            (_, Some(e)) => MirrorEnd::Failed(e.clone()),
            _ => MirrorEnd::Busy,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn migration_status_round_trips_qemu_spelling() {
        for s in [
            "none",
            "setup",
            "active",
            "postcopy-active",
            "postcopy-paused",
            "postcopy-recover-setup",
            "pre-switchover",
            "completed",
            "wait-unplug",
        ] {
            assert_eq!(MigrationStatus::parse(s).as_str(), s);
        }
        assert_eq!(
            MigrationStatus::parse("some-future-state"),
            MigrationStatus::Unknown
        );
        assert_eq!(MigrationStatus::of_reply(&json!({})), MigrationStatus::None);
    }

    #[test]
    fn postcopy_and_precopy_are_disjoint() {
        use MigrationStatus::*;
        for s in [
            None,
            Setup,
            Cancelling,
            Cancelled,
            Active,
            PostcopyActive,
            PostcopyPaused,
            PostcopyRecoverSetup,
            PostcopyRecover,
            Completed,
            Failed,
            Colo,
            PreSwitchover,
            Device,
            WaitUnplug,
            Unknown,
        ] {
            assert!(!(s.is_postcopy() && s.is_precopy_in_flight()), "{s}");
            assert!(!(s.is_postcopy() && s.is_finished()), "{s}");
        }
    }

    #[test]
    fn run_state_parses() {
        assert_eq!(RunState::parse("postmigrate"), RunState::Postmigrate);
        assert_eq!(RunState::parse("inmigrate"), RunState::Inmigrate);
        assert_eq!(RunState::parse("finish-migrate"), RunState::FinishMigrate);
        assert_eq!(RunState::parse("???"), RunState::Unknown);
        assert_eq!(RunState::GuestPanicked.to_string(), "guest-panicked");
    }

    #[test]
    fn a_failed_or_vanished_mirror_is_never_done() {
        let reply = json!([
            {"device": "m-vda", "status": "concluded", "ready": true, "offset": 5, "len": 5},
            {"device": "m-vdb", "status": "concluded", "ready": true, "offset": 2, "len": 5,
             "error": "No space left on device"},
            {"device": "m-vdc", "status": "ready", "ready": true, "offset": 5, "len": 5}
        ]);
        let jobs = BlockJob::list(&reply);
        let find = |id: &str| jobs.iter().find(|j| j.id == id);
        assert_eq!(mirror_end(find("m-vda")), MirrorEnd::Done);
        assert_eq!(
            mirror_end(find("m-vdb")),
            MirrorEnd::Failed("No space left on device".into())
        );
        assert_eq!(mirror_end(find("m-vdc")), MirrorEnd::Busy);
        assert!(matches!(mirror_end(None), MirrorEnd::Failed(_)));
    }
}
