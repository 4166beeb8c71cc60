//! What a follower of a migration may still do itself. Every migration is
//! run by its source agent (`tern-agent`'s `migration::run`); the CLI and
//! the controller only start it and follow the source's job. When a
//! controller restarts and finds a job whose run never started, or loses
//! the source, these are the only steps it takes on its own.

use crate::{Client, ClientError, MigrationRequest, Request};
use std::time::Duration;
use tern_migrate::protocol::{ConfirmRequest, FinishReply, FinishRequest, PROTOCOL_VERSION};
use tern_migrate::MigrateOptions;
use uuid::Uuid;

/// How a follower watches the source's job.
#[derive(Debug, Clone, Copy)]
pub struct Follow {
    /// Each look waits up to this long for the job to change (a long poll).
    pub wait: Duration,
    /// Pause between looks.
    pub pause: Duration,
    /// Failed looks in a row that are retried (a second apart) before the
    /// last error is returned.
    pub retries: u32,
}

/// Follows the source's job of `name` until it ends, showing each look to
/// `progress`, and returns the completed job as the source reports it.
/// The CLI and the controller both follow a migration this way; what each
/// does when the source is lost differs, so the error is theirs to handle.
pub async fn follow_job(
    src: &Client,
    name: &str,
    how: Follow,
    mut progress: impl FnMut(&tern_migrate::JobInfo),
) -> Result<tern_migrate::JobInfo, ClientError> {
    let look = |completed, wait_ms| {
        Request::Migration(MigrationRequest::JobInfo {
            name: name.to_string(),
            completed,
            wait_ms,
        })
    };
    let wait_ms = how.wait.as_millis() as u64;
    let mut failures = 0;
    loop {
        tokio::time::sleep(how.pause).await;
        match src
            .call::<tern_migrate::JobInfo>(&look(false, wait_ms))
            .await
        {
            Ok(i) if i.kind == tern_migrate::JobKind::None => break,
            Ok(i) => {
                failures = 0;
                progress(&i);
            }
            Err(_) if failures < how.retries => {
                failures += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
    src.call(&look(true, 0)).await
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

/// Whether the destination took migration `id` over and its run there is
/// over: the guest runs on the destination and the migration succeeded,
/// whatever the source can still say. A follower asks this when the source
/// stops answering right after a run ends, as a host that shuts down does
/// once its guests moved away.
pub async fn dest_took_over(dst: &Client, id: Uuid, dest_name: &str) -> bool {
    let req = tern_migrate::protocol::QueryRequest {
        version: PROTOCOL_VERSION,
        id,
    };
    let dst = dst.clone().with_timeout(Duration::from_secs(5));
    let owns = matches!(
        dst.call::<tern_migrate::protocol::QueryReply>(&Request::Migration(
            MigrationRequest::MigrateQuery { req },
        ))
        .await,
        Ok(r) if check_reply_version(r.version).is_ok()
            && r.view == tern_migrate::recovery::PeerView::Owns
    );
    if !owns {
        return false;
    }
    // Owning while its job still runs is post-copy: not over yet.
    matches!(
        dst.call::<tern_migrate::JobInfo>(&Request::Migration(MigrationRequest::JobInfo {
            name: dest_name.to_string(),
            completed: false,
            wait_ms: 0,
        }))
        .await,
        Ok(i) if i.kind == tern_migrate::JobKind::None
    )
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

/// Discards the destination's partial copy of migration `id` (its
/// incoming QEMU never loaded the whole guest, so it never ran it): what a
/// follower that lost the source does, so that a rescue of the guest is
/// not blocked by a copy that can never run. Errors are ignored: the
/// destination's orphan timer does the same later.
pub async fn discard_partial(dst: &Client, id: Uuid, dest_name: &str, options: &MigrateOptions) {
    let _ = finish_call(dst, id, dest_name, false, options).await;
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
