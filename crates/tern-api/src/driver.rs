//! The migration driver: walks Begin, Prepare, Perform, Finish, Confirm
//! against a source and a destination agent. The CLI runs it for managed
//! direct migration; the source agent runs the very same code for `--p2p`
//! (talking to itself through its own socket), so both flows behave alike.
//!
//! The driver keeps the rule of safety: the destination is told to resume
//! only after the source's QEMU completed (the source is stopped), and the
//! source is told to resume only when the destination said it did not. If
//! the destination's answer is lost, nobody resumes and the error says so.

use crate::{Client, ClientError, MigrationRequest, Request};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tern_migrate::protocol::{
    BeginReply, ConfirmRequest, FinishReply, FinishRequest, IncomingTarget, PerformRequest,
    PrepareReply, PrepareRequest, PROTOCOL_VERSION,
};
use tern_migrate::{JobInfo, JobKind, MigrateOptions};
use thiserror::Error;
use uuid::Uuid;

/// Longest wait of one long poll of the source's job.
const POLL: Duration = Duration::from_millis(500);

/// A failed migration, with where it failed.
#[derive(Debug, Error)]
pub enum DriveError {
    /// The source refused to begin.
    #[error("{0}")]
    Begin(#[source] ClientError),
    /// The destination could not prepare.
    #[error("destination refused: {0}")]
    Prepare(#[source] ClientError),
    /// The source could not start or finish sending.
    #[error("{0}")]
    Perform(String),
    /// The destination could not take over; the guest runs on the source.
    #[error("destination could not resume the guest: {0}; the guest keeps running on the source")]
    Finish(String),
    /// The destination's answer was lost: the guest may be paused on both.
    #[error("lost contact with the destination after the memory was sent ({0}); the two agents settle it as soon as they reach each other: the destination keeps the guest if it ran it, otherwise the source resumes it (watch 'tern domjobinfo' on either host)")]
    Unknown(#[source] ClientError),
    /// The final cleanup on the source failed.
    #[error("the guest runs on the destination, but cleaning the source failed: {0}")]
    Confirm(#[source] ClientError),
}

/// What a successful migration reports.
#[derive(Debug, Clone)]
pub struct DriveOutcome {
    /// Final job figures from the source.
    pub info: JobInfo,
    /// Name on the destination.
    pub dest_name: String,
    /// What went wrong after the destination took the guest over (its
    /// definition could not be stored, say): the migration still succeeded.
    pub warning: Option<String>,
}

/// Runs a whole migration. `on_progress` sees each polled snapshot.
pub async fn drive(
    src: &Client,
    dst: &Client,
    id: Uuid,
    name: &str,
    options: &MigrateOptions,
    on_progress: impl FnMut(&JobInfo),
) -> Result<DriveOutcome, DriveError> {
    drive_with(
        src,
        dst,
        id,
        name,
        options,
        &AtomicBool::new(false),
        on_progress,
    )
    .await
}

/// [`drive`], stopping before Perform when `cancel` is set (Ctrl-C on
/// `tern migrate`: once Perform started, the caller aborts the source's
/// job instead, and the migration rolls back through the usual path).
pub async fn drive_with(
    src: &Client,
    dst: &Client,
    id: Uuid,
    name: &str,
    options: &MigrateOptions,
    cancel: &AtomicBool,
    on_progress: impl FnMut(&JobInfo),
) -> Result<DriveOutcome, DriveError> {
    let options = &with_dest_machines(dst, options).await;
    let begin: BeginReply = src
        .call(&Request::Migration(MigrationRequest::MigrateBegin {
            name: name.to_string(),
            options: options.clone(),
        }))
        .await
        .map_err(DriveError::Begin)?;
    check_reply_version(begin.version).map_err(DriveError::Perform)?;
    let dest_name = begin.domain.name.clone();
    // The source may have applied the policy's start plan.
    let options = begin.options.as_ref().unwrap_or(options);
    let prep: PrepareReply = dst
        .call(&Request::Migration(MigrationRequest::MigratePrepare {
            req: PrepareRequest {
                version: PROTOCOL_VERSION,
                id,
                domain: begin.domain.clone(),
                options: options.clone(),
                source_host: src.describe(),
                disks: begin.disks.clone(),
                files: begin.files.clone(),
                source_uri: begin
                    .source_uri
                    .clone()
                    .or_else(|| src.uri().map(str::to_string)),
                source_name: Some(name.to_string()),
                source_tls_identity: begin.tls_identity.clone(),
                source_nvram_dir: begin.nvram_dir.clone(),
                source_ceph_fsids: begin.ceph_fsids.clone(),
            },
        }))
        .await
        .map_err(DriveError::Prepare)?;
    check_reply_version(prep.version).map_err(DriveError::Perform)?;

    let finish = |success: bool| finish_call(dst, id, &dest_name, success, options);
    let confirm = |success: bool| confirm_call(src, id, name, success, options);

    let incoming = match (prep.incoming.clone(), options.cold) {
        (Some(t), _) => Some(t),
        // Cold: no QEMU listens; the files go to the receivers in `prep.cold`.
        (None, true) => Some(IncomingTarget {
            host: String::new(),
            port: 0,
            tunnel: false,
        }),
        (None, false) => None,
    };
    let Some(target) = incoming else {
        // Offline: the destination defines it in Finish; nothing else moves.
        let fin = finish(true)
            .await
            .map_err(|e| DriveError::Finish(e.to_string()))?;
        if !fin.resumed {
            let why = fin.error.unwrap_or_else(|| "unknown reason".into());
            let _ = confirm(false).await;
            return Err(DriveError::Finish(why));
        }
        confirm(true).await.map_err(DriveError::Confirm)?;
        return Ok(DriveOutcome {
            info: JobInfo::default(),
            dest_name,
            warning: fin.error,
        });
    };

    if cancel.load(Ordering::SeqCst) {
        let _ = finish(false).await;
        let _ = confirm(false).await;
        return Err(DriveError::Perform(
            "migration cancelled by the operator before memory moved; the guest keeps running on the source".into(),
        ));
    }
    let perform = src
        .call::<serde_json::Value>(&Request::Migration(MigrationRequest::MigratePerform {
            req: PerformRequest {
                version: PROTOCOL_VERSION,
                id,
                name: name.to_string(),
                target,
                nbd: prep.nbd.clone(),
                cold: prep.cold.clone(),
                files: begin.files.clone(),
                options: options.clone(),
                dest_uri: dst.uri().map(str::to_string),
                dest_name: Some(dest_name.clone()),
            },
        }))
        .await;
    if let Err(e) = perform {
        let _ = finish(false).await;
        let _ = confirm(false).await;
        return Err(DriveError::Perform(e.to_string()));
    }

    complete(src, dst, id, name, &dest_name, options, on_progress).await
}

/// `options` with the machine types the destination's QEMU offers, so
/// that Begin on the source can refuse a guest pinned to one it lacks. A
/// destination that does not answer `nodeinfo` leaves the check to Prepare.
async fn with_dest_machines(dst: &Client, options: &MigrateOptions) -> MigrateOptions {
    let mut o = options.clone();
    if o.dest_machines.is_none() {
        if let Ok(f) = dst.call::<tern_model::HostFacts>(&Request::NodeInfo).await {
            o.dest_machines = Some(f.machines).filter(|m| !m.is_empty());
        }
    }
    o
}

/// The second half of [`drive`], from a started Perform: polls the source
/// until QEMU is done, then Finish and Confirm. A controller that lost
/// track of a migration (restarted mid-job) resumes it here, knowing only
/// the migration id and the names.
pub async fn complete(
    src: &Client,
    dst: &Client,
    id: Uuid,
    name: &str,
    dest_name: &str,
    options: &MigrateOptions,
    mut on_progress: impl FnMut(&JobInfo),
) -> Result<DriveOutcome, DriveError> {
    let finish = |success: bool| finish_call(dst, id, dest_name, success, options);
    let confirm = |success: bool| confirm_call(src, id, name, success, options);
    // Poll the source until QEMU is done (or in post-copy, when the
    // destination must run at once to serve page faults).
    let mut finished: Option<FinishReply> = None;
    let mut in_postcopy = false;
    let info = loop {
        // A long poll: the source answers the moment QEMU's state changes,
        // so the destination resumes without a polling delay.
        let info: JobInfo = match src
            .call(&Request::Migration(MigrationRequest::JobInfo {
                name: name.to_string(),
                completed: false,
                wait_ms: POLL.as_millis() as u64,
            }))
            .await
        {
            Ok(i) => i,
            Err(e) if in_postcopy => {
                // The guest runs on the destination and pulls its missing
                // pages from the source QEMU: nothing may be rolled back.
                // The source agent, once back, serves the post-copy to its
                // end (or recovers it) by itself.
                return Err(DriveError::Perform(format!(
                    "lost contact with the source during post-copy ({e}); the guest runs on the destination, and the source agent finishes the post-copy when it is back"
                )));
            }
            Err(e) => {
                // The source agent is unreachable: we cannot know QEMU's
                // state, so the destination must not resume. A copy it
                // holds whole is kept, paused, for whoever settles the
                // migration (the source agent once back, or the cluster
                // once the source host is proven fenced); a partial one
                // is only in the way.
                if dest_holds_everything(dst, id).await {
                    return Err(DriveError::Perform(format!(
                        "lost contact with the source after the destination loaded the whole guest ({e}); the copy there stays paused until the migration is settled"
                    )));
                }
                let _ = finish(false).await;
                return Err(DriveError::Perform(format!(
                    "lost contact with the source: {e}"
                )));
            }
        };
        on_progress(&info);
        in_postcopy |= info.qemu_status.is_postcopy();
        if info.qemu_status.is_postcopy() && finished.is_none() {
            match finish(true).await {
                Ok(f) => finished = Some(f),
                Err(e) => return Err(DriveError::Unknown(e)),
            }
        }
        if matches!(
            info.kind,
            JobKind::Completed | JobKind::Failed | JobKind::Cancelled
        ) {
            break info;
        }
    };

    if info.kind != JobKind::Completed {
        let why = info
            .error
            .clone()
            .unwrap_or_else(|| format!("migration {}", info.qemu_status));
        if finished.is_none() {
            let _ = finish(false).await;
            let _ = confirm(false).await;
        }
        return Err(DriveError::Perform(why));
    }
    let fin = match finished {
        Some(f) => f,
        None => finish(true).await.map_err(DriveError::Unknown)?,
    };
    if !fin.resumed {
        let why = fin.error.unwrap_or_else(|| "unknown reason".into());
        let _ = confirm(false).await;
        return Err(DriveError::Finish(why));
    }
    confirm(true).await.map_err(DriveError::Confirm)?;
    Ok(DriveOutcome {
        info,
        dest_name: dest_name.to_string(),
        warning: fin.error,
    })
}

/// Whether the destination holds migration `id`'s whole guest, paused and
/// never run (its incoming QEMU completed): the one copy worth keeping
/// when the source can no longer be asked.
pub async fn dest_holds_everything(dst: &Client, id: Uuid) -> bool {
    let req = tern_migrate::protocol::QueryRequest {
        version: PROTOCOL_VERSION,
        id,
    };
    let r = dst
        .clone()
        .with_timeout(Duration::from_secs(5))
        .call::<tern_migrate::protocol::QueryReply>(&Request::Migration(
            MigrationRequest::MigrateQuery { req },
        ))
        .await;
    match r {
        Ok(r) => {
            check_reply_version(r.version).is_ok()
                && matches!(
                    r.view,
                    tern_migrate::recovery::PeerView::Prepared { complete: true }
                )
        }
        Err(_) => false,
    }
}

/// Refuses a reply from an agent whose protocol this build does not speak.
fn check_reply_version(v: u32) -> Result<(), String> {
    tern_migrate::protocol::check_version(v).map_err(|e| e.to_string())
}

async fn finish_call(
    dst: &Client,
    id: Uuid,
    dest_name: &str,
    success: bool,
    options: &MigrateOptions,
) -> Result<FinishReply, ClientError> {
    let req = FinishRequest {
        version: PROTOCOL_VERSION,
        id,
        name: dest_name.to_string(),
        success,
        options: options.clone(),
    };
    let reply = dst
        .call::<FinishReply>(&Request::Migration(MigrationRequest::MigrateFinish { req }))
        .await?;
    tern_migrate::protocol::check_version(reply.version).map_err(|e| ClientError::Decode {
        target: dst.describe(),
        message: e.to_string(),
    })?;
    Ok(reply)
}

async fn confirm_call(
    src: &Client,
    id: Uuid,
    name: &str,
    success: bool,
    options: &MigrateOptions,
) -> Result<serde_json::Value, ClientError> {
    let req = ConfirmRequest {
        version: PROTOCOL_VERSION,
        id,
        name: name.to_string(),
        success,
        options: options.clone(),
    };
    src.call::<serde_json::Value>(&Request::Migration(MigrationRequest::MigrateConfirm {
        req,
    }))
    .await
}

/// Abandons a migration whose Perform may never have started: the
/// destination discards what it prepared, the source resumes. Errors are
/// ignored: either side may never have heard of the migration.
pub async fn roll_back(
    src: &Client,
    dst: &Client,
    id: Uuid,
    name: &str,
    dest_name: &str,
    options: &MigrateOptions,
) {
    let _ = finish_call(dst, id, dest_name, false, options).await;
    let _ = confirm_call(src, id, name, false, options).await;
}
