//! A migration's record on disk: what one side must know to finish or roll
//! back the migration after `kill -9` of its agent.
//!
//! Each side writes its record before it acts on a new phase (a temporary
//! file, fsynced, renamed, the directory fsynced: `config::write_atomic`),
//! so a record never claims less than what was done. If the write fails (a
//! full state directory) the phase does not change and nothing is done.
//!
//! Layout under `--state-dir`: `jobs/<domain>.json` while the migration is
//! under way, `jobs/<domain>.done.json` for the last finished one (what
//! `domjobinfo --completed` shows after a restart, and what the other side
//! is told when it asks about a migration that ended here).

use crate::config::write_atomic;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tern_migrate::{JobEvent, JobInfo, MigrateOptions, Phase, Role};
use uuid::Uuid;

/// The record format this build writes; a record of another format is
/// logged and left alone, never guessed at.
pub const RECORD_FORMAT: u32 = 1;

/// At most this many events are kept in a record (the newest).
const MAX_EVENTS: usize = 400;

/// What one side knows of the other, and what it did to the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Links {
    /// The other agent's URI, to ask it where the migration stands.
    pub peer_uri: Option<String>,
    /// The domain's name on the other side.
    pub peer_name: Option<String>,
    /// Destination: the guest ran here (`cont` succeeded, or post-copy
    /// started): this side is the copy from now on.
    pub owns: bool,
    /// Source: the guest ran before the migration (a paused guest is not
    /// resumed by a rollback).
    pub was_running: bool,
}

/// One migration as one side persisted it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// [`RECORD_FORMAT`].
    pub format: u32,
    /// Migration id shared by both sides.
    pub id: Uuid,
    /// This side's role.
    pub role: Role,
    /// Domain name on this host.
    pub domain: String,
    /// The phase this side entered last.
    pub phase: Phase,
    /// The migration's options.
    pub options: MigrateOptions,
    /// The other side, and what this side did.
    #[serde(default)]
    pub links: Links,
    /// Volumes the destination created (removed on rollback).
    #[serde(default)]
    pub created: Vec<PathBuf>,
    /// Latest figures.
    #[serde(default)]
    pub info: JobInfo,
    /// What happened, in order (the newest [`MAX_EVENTS`]).
    #[serde(default)]
    pub events: Vec<JobEvent>,
}

impl JobRecord {
    /// Keeps only the newest events, so a record stays small.
    pub fn trim(mut self) -> Self {
        if self.events.len() > MAX_EVENTS {
            let drop = self.events.len() - MAX_EVENTS;
            self.events.drain(..drop);
        }
        self
    }
}

/// Where a running migration's record lives.
pub fn current_path(dir: &Path, domain: &str) -> PathBuf {
    dir.join(format!("{domain}.json"))
}

/// Where the last finished migration's record lives.
pub fn done_path(dir: &Path, domain: &str) -> PathBuf {
    dir.join(format!("{domain}.done.json"))
}

/// Writes a running migration's record durably.
pub fn save(dir: &Path, rec: &JobRecord) -> std::io::Result<()> {
    write_json(&current_path(dir, &rec.domain), rec)
}

/// Moves a migration's record to the finished slot: the finished record is
/// written first, so a crash in between leaves both, and loading prefers
/// the finished one.
pub fn finish(dir: &Path, rec: &JobRecord) -> std::io::Result<()> {
    write_json(&done_path(dir, &rec.domain), rec)?;
    match std::fs::remove_file(current_path(dir, &rec.domain)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn write_json(path: &Path, rec: &JobRecord) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(rec).map_err(std::io::Error::other)?;
    let r = write_atomic(path, &text);
    if r.is_err() {
        let _ = std::fs::remove_file(path.with_extension("tmp"));
    }
    r
}

/// Every record in `dir`: (running ones, finished ones). A running record
/// whose finished twin has the same id was finished already (a crash
/// between the two writes) and is dropped.
pub fn load(dir: &Path) -> (Vec<JobRecord>, Vec<JobRecord>) {
    let (mut current, mut done) = (Vec::new(), Vec::new());
    let Ok(rd) = std::fs::read_dir(dir) else {
        return (current, done);
    };
    for e in rd.flatten() {
        let p = e.path();
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !name.ends_with(".json") {
            continue;
        }
        let rec = std::fs::read(&p)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<JobRecord>(&b).map_err(|e| e.to_string()));
        match rec {
            Ok(r) if r.format == RECORD_FORMAT => {
                if name.ends_with(".done.json") {
                    done.push(r);
                } else {
                    current.push(r);
                }
            }
            Ok(r) => tracing::warn!(path = %p.display(), format = r.format,
                "migration record of an unknown format; leaving it alone"),
            Err(e) => tracing::warn!(path = %p.display(), error = %e,
                "unreadable migration record; leaving it alone"),
        }
    }
    current.retain(|c| {
        let finished = done.iter().any(|d| d.id == c.id);
        if finished {
            let _ = std::fs::remove_file(current_path(dir, &c.domain));
        }
        !finished
    });
    (current, done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(domain: &str, phase: Phase) -> JobRecord {
        JobRecord {
            format: RECORD_FORMAT,
            id: Uuid::new_v4(),
            role: Role::Source,
            domain: domain.into(),
            phase,
            options: MigrateOptions::default(),
            links: Links {
                peer_uri: Some("tern+tcp://b/system".into()),
                ..Default::default()
            },
            created: vec![],
            info: JobInfo::default(),
            events: vec![],
        }
    }

    #[test]
    fn records_survive_and_finish_moves_them() {
        let dir = tempfile::tempdir().unwrap();
        let a = rec("a", Phase::Perform);
        let b = rec("b", Phase::Prepare);
        save(dir.path(), &a).unwrap();
        save(dir.path(), &b).unwrap();
        let mut done_b = b.clone();
        done_b.phase = Phase::Completed;
        finish(dir.path(), &done_b).unwrap();
        let (cur, done) = load(dir.path());
        assert_eq!(cur, vec![a]);
        assert_eq!(done, vec![done_b]);
    }

    #[test]
    fn a_crash_between_the_two_writes_counts_as_finished() {
        let dir = tempfile::tempdir().unwrap();
        let a = rec("a", Phase::Confirm);
        save(dir.path(), &a).unwrap();
        let mut d = a.clone();
        d.phase = Phase::Completed;
        write_json(&done_path(dir.path(), "a"), &d).unwrap();
        let (cur, done) = load(dir.path());
        assert!(cur.is_empty());
        assert_eq!(done.len(), 1);
        assert!(!current_path(dir.path(), "a").exists());
    }

    #[test]
    fn unknown_formats_and_garbage_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = rec("a", Phase::Perform);
        a.format = 99;
        write_json(&current_path(dir.path(), "a"), &a).unwrap();
        std::fs::write(dir.path().join("b.json"), b"{not json").unwrap();
        let (cur, done) = load(dir.path());
        assert!(cur.is_empty() && done.is_empty());
        assert!(dir.path().join("b.json").exists());
    }

    #[test]
    fn records_keep_the_newest_events() {
        let mut r = rec("a", Phase::Perform);
        r.events = (0..1000)
            .map(|i| JobEvent {
                at_ms: i,
                phase: "perform".into(),
                message: format!("{i}"),
            })
            .collect();
        let r = r.trim();
        assert_eq!(r.events.len(), MAX_EVENTS);
        assert_eq!(r.events.last().unwrap().at_ms, 999);
    }
}
