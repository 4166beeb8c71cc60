//! How the controller has a migration job's data moved: the source agent
//! runs the migration (`tern-agent`'s `migration::run`); the controller
//! starts it and follows the source's job to its end, or, restarted
//! mid-job, settles what a run that never started left.

use tern_api::cluster::JobRecord;
use tern_api::settle;
use tern_api::{Client, DomainInfo, MigrationRequest, Request};
use tern_migrate::{JobInfo, MigrateOptions};
use uuid::Uuid;

/// A migration's outcome as the runner reports it.
pub type Outcome = std::result::Result<(), String>;

/// Starts or resumes one migration job: the source agent runs it (its
/// `migration::run`), and the controller follows the source's job. A
/// controller restarted mid-job follows the run it finds there, or, when
/// the source has none, settles what the run left.
pub async fn drive(
    src: &Client,
    dst: &Client,
    job: &JobRecord,
    options: &MigrateOptions,
    recovering: bool,
) -> Outcome {
    let id = Uuid::parse_str(&job.migration_id).map_err(|e| e.to_string())?;
    let name = job.server.as_str();
    if !recovering {
        let dest_uri = dst
            .uri()
            .ok_or_else(|| format!("the destination {} has no connection URI", dst.describe()))?;
        src.call::<serde_json::Value>(&Request::Migration(MigrationRequest::MigrateP2p {
            name: name.to_string(),
            dest_uri: dest_uri.to_string(),
            options: options.clone(),
            id: Some(id),
        }))
        .await
        .map_err(|e| e.to_string())?;
        return follow(src, dst, id, name, options).await;
    }
    let info: JobInfo = match src
        .call(&Request::Migration(MigrationRequest::JobInfo {
            name: name.to_string(),
            completed: false,
            wait_ms: 0,
        }))
        .await
    {
        Ok(i) => i,
        // The source cannot say where QEMU stands: a whole copy on the
        // destination stays paused for whoever settles the migration (the
        // source agent, or the evacuation once its host is fenced).
        Err(e) if settle::dest_holds_everything(dst, id).await => {
            return Err(format!(
                "the source cannot be reached ({e}) and the destination holds the whole guest, paused; it stays so until the migration is settled"
            ))
        }
        Err(_) => JobInfo::default(),
    };
    if info.kind != tern_migrate::JobKind::None {
        return follow(src, dst, id, name, options).await;
    }
    let active = |c: &Client| {
        let c = c.clone();
        async move {
            c.call::<DomainInfo>(&Request::DomInfo {
                name: name.to_string(),
            })
            .await
            .map(|i| i.summary.id.is_some())
            .unwrap_or(false)
        }
    };
    let dest_has_it = dst
        .call::<DomainInfo>(&Request::DomInfo {
            name: name.to_string(),
        })
        .await
        .is_ok();
    if info.phase == "completed"
        || (dest_has_it && !active(src).await && options.live == active(dst).await)
    {
        return Ok(());
    }
    settle::roll_back(src, dst, id, name, name, options).await;
    Err("the controller restarted before the migration's data moved; rolled back".into())
}

/// How the controller watches a source's job: long polls, and 3 failed
/// looks (about a second apart) tolerated before it stops following.
const FOLLOW: settle::Follow = settle::Follow {
    wait: std::time::Duration::from_millis(500),
    pause: std::time::Duration::ZERO,
    retries: 2,
};

/// Follows the source's run of migration `id` to its end. Losing the
/// source, it asks the destination: a guest that arrived there is a
/// success (a source host shutting down stops answering once its guests
/// moved away); a copy that holds the whole guest stays paused, for
/// whoever settles the migration; a partial one, which could never run
/// and would block a rescue, is discarded.
async fn follow(
    src: &Client,
    dst: &Client,
    id: Uuid,
    name: &str,
    options: &MigrateOptions,
) -> Outcome {
    let e = match settle::follow_job(src, name, FOLLOW, |_| {}).await {
        Ok(fin) if fin.phase == "completed" => return Ok(()),
        Ok(fin) => {
            return Err(fin
                .error
                .unwrap_or_else(|| format!("migration ended in phase {}", fin.phase)))
        }
        Err(e) => e,
    };
    if settle::dest_took_over(dst, id, name).await {
        return Ok(());
    }
    if settle::dest_holds_everything(dst, id).await {
        return Err(format!(
            "lost contact with the source after the destination loaded the whole guest ({e}); the copy there stays paused until the migration is settled"
        ));
    }
    settle::discard_partial(dst, id, name, options).await;
    Err(format!(
        "lost contact with the source ({e}); the destination's partial copy was discarded, and the source agent settles its side when it is back"
    ))
}
