//! The source QEMU's events during the perform phase: the wake-ups of
//! the look loop, and the guest's STOP, the first moment of its pause.

use super::super::Job;
use super::POLL;
use tern_qemu::QmpEvent;
use tokio::sync::broadcast::{error::RecvError, error::TryRecvError, Receiver};

/// Waits for QEMU's MIGRATION events (completion above all) or the tick;
/// true on a disk I/O error. Notes the guest's STOP on the way: the start
/// of its pause at the switch-over.
pub(super) async fn wake(events: &mut Receiver<QmpEvent>, job: &Job) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(POLL) => false,
        io = async {
            loop {
                match events.recv().await {
                    Ok(ev) if ev.name == "MIGRATION" => return false,
                    Ok(ev) if ev.name == "BLOCK_IO_ERROR" => return true,
                    Ok(ev) if ev.name == "STOP" => job.note_stopped(ev.timestamp_us),
                    Ok(_) => continue,
                    Err(RecvError::Lagged(_)) => return false,
                    Err(_) => return std::future::pending::<bool>().await,
                }
            }
        } => io,
    }
}

/// Reads the events already queued, noting the guest's STOP among them.
pub(super) fn note_queued_stop(events: &mut Receiver<QmpEvent>, job: &Job) {
    loop {
        match events.try_recv() {
            Ok(ev) if ev.name == "STOP" => job.note_stopped(ev.timestamp_us),
            Ok(_) | Err(TryRecvError::Lagged(_)) => continue,
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_migrate::MigrateOptions;
    use tern_migrate::Role;

    fn event(name: &str, us: u64) -> QmpEvent {
        QmpEvent {
            name: name.into(),
            data: serde_json::Value::Null,
            timestamp_us: us,
        }
    }

    /// The look loop may see "completed" on its tick with STOP and the
    /// MIGRATION events still queued: the STOP must not be lost.
    #[test]
    fn a_stop_still_queued_at_completion_is_noted() {
        let job = Job::new(
            uuid::Uuid::new_v4(),
            Role::Source,
            "g",
            MigrateOptions::default(),
        );
        let (tx, mut rx) = tokio::sync::broadcast::channel(16);
        tx.send(event("MIGRATION", 1)).unwrap();
        tx.send(event("STOP", 42)).unwrap();
        tx.send(event("MIGRATION", 43)).unwrap();
        assert_eq!(job.stopped_at(), None);
        note_queued_stop(&mut rx, &job);
        assert_eq!(job.stopped_at(), Some(42));
    }
}
