//! An asynchronous QMP client.
//!
//! QMP is line-delimited JSON over a unix socket: QEMU greets, the client
//! sends `qmp_capabilities`, then commands carry an `id` that QEMU echoes in
//! the `return`/`error` reply, while asynchronous `event`s arrive at any time.
//! One reader task owns the read half: it routes replies to the waiting
//! caller by id and broadcasts events. When the socket closes (QEMU exited or
//! was killed) every pending call fails with [`QmpError::Closed`] and
//! [`Qmp::closed`] resolves — this is how the agent learns a guest ended,
//! rather than polling its pid.

use crate::states::{BlockJob, MigrationStatus, RunState};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot, watch};

/// QMP failures.
#[derive(Debug, Error)]
pub enum QmpError {
    /// Could not connect to the monitor socket.
    #[error("cannot connect to QMP socket {path}: {source}")]
    Connect {
        /// Socket path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing the socket failed.
    #[error("QMP I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// QEMU closed the monitor (the process ended).
    #[error("QEMU closed its monitor connection (the process has ended)")]
    Closed,
    /// QEMU answered with an error.
    #[error("QEMU refused '{command}': {desc}")]
    Command {
        /// The command that failed.
        command: String,
        /// QEMU's error class, e.g. "GenericError".
        class: String,
        /// QEMU's description.
        desc: String,
    },
    /// QEMU sent something that is not QMP.
    #[error("QMP protocol error: {0}")]
    Protocol(String),
    /// No reply in time.
    #[error("QEMU did not answer '{0}' in time")]
    Timeout(String),
}

/// An asynchronous QMP event.
#[derive(Debug, Clone)]
pub struct QmpEvent {
    /// Event name, e.g. "SHUTDOWN", "STOP", "MIGRATION".
    pub name: String,
    /// Event payload (`data`), `Null` when absent.
    pub data: Value,
    /// QEMU's timestamp in microseconds since the epoch.
    pub timestamp_us: u64,
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, (String, String)>>>>>;

/// A connected QMP monitor. Cheap to clone; all clones share one socket.
#[derive(Clone)]
pub struct Qmp {
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    pending: Pending,
    next_id: Arc<AtomicU64>,
    events: broadcast::Sender<QmpEvent>,
    closed: watch::Receiver<bool>,
    /// QEMU's version as announced in the greeting, e.g. (7, 2, 22).
    pub version: (u64, u64, u64),
    /// Out-of-band execution was negotiated: [`Qmp::execute_oob`] runs
    /// commands even while QEMU's main loop is blocked.
    pub oob: bool,
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp")
            .field("version", &self.version)
            .finish()
    }
}

/// How long a single QMP command may take before we give up on it. QMP
/// commands are quick; migration and block jobs are asynchronous.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

impl Qmp {
    /// Connects to a QMP unix socket, reads the greeting and negotiates
    /// capabilities. Events emitted after this call are delivered to
    /// subscribers of [`Qmp::events`].
    pub async fn connect(path: &Path) -> Result<Qmp, QmpError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| QmpError::Connect {
                path: path.display().to_string(),
                source,
            })?;
        let (read, write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let mut line = String::new();
        let n = tokio::time::timeout(COMMAND_TIMEOUT, reader.read_line(&mut line))
            .await
            .map_err(|_| QmpError::Timeout("greeting".into()))??;
        if n == 0 {
            return Err(QmpError::Closed);
        }
        let greeting: Value = serde_json::from_str(&line)
            .map_err(|e| QmpError::Protocol(format!("bad greeting: {e}")))?;
        let v = &greeting["QMP"]["version"]["qemu"];
        let version = (
            v["major"].as_u64().unwrap_or(0),
            v["minor"].as_u64().unwrap_or(0),
            v["micro"].as_u64().unwrap_or(0),
        );
        let (events, _) = broadcast::channel(1024);
        let (closed_tx, closed) = watch::channel(false);
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let qmp = Qmp {
            writer: Arc::new(tokio::sync::Mutex::new(write)),
            pending: pending.clone(),
            next_id: Arc::new(AtomicU64::new(1)),
            events: events.clone(),
            closed,
            version,
            oob: false,
        };
        tokio::spawn(read_loop(reader, pending, events, closed_tx));
        // Out-of-band commands (`migrate-pause`, `migrate-recover`) are how a
        // post-copy is recovered while the destination's main loop waits,
        // forever, on a page the broken link will not bring.
        let oob = greeting["QMP"]["capabilities"]
            .as_array()
            .is_some_and(|c| c.iter().any(|x| x == "oob"));
        let args = oob.then(|| json!({"enable": ["oob"]}));
        qmp.execute("qmp_capabilities", args).await?;
        Ok(Qmp { oob, ..qmp })
    }

    /// Runs a command and returns its `return` value.
    pub async fn execute(&self, command: &str, args: Option<Value>) -> Result<Value, QmpError> {
        self.execute_timeout(command, args, COMMAND_TIMEOUT).await
    }

    /// Runs a command out of band when QEMU allows it (the command must be
    /// one QEMU marks `allow-oob`), else in band.
    pub async fn execute_oob(&self, command: &str, args: Option<Value>) -> Result<Value, QmpError> {
        self.send(command, args, COMMAND_TIMEOUT, self.oob).await
    }

    /// Runs a command that takes a file descriptor (`getfd`, `add-fd`):
    /// `fd` travels with the command's bytes (SCM_RIGHTS), and QEMU keeps
    /// its own copy; the caller may close `fd` afterwards.
    pub async fn execute_with_fd(
        &self,
        command: &str,
        args: Option<Value>,
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> Result<Value, QmpError> {
        self.send_inner(command, args, COMMAND_TIMEOUT, false, Some(fd))
            .await
    }

    /// Runs a command with an explicit reply timeout.
    pub async fn execute_timeout(
        &self,
        command: &str,
        args: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        self.send(command, args, timeout, false).await
    }

    async fn send(
        &self,
        command: &str,
        args: Option<Value>,
        timeout: Duration,
        oob: bool,
    ) -> Result<Value, QmpError> {
        self.send_inner(command, args, timeout, oob, None).await
    }

    async fn send_inner(
        &self,
        command: &str,
        args: Option<Value>,
        timeout: Duration,
        oob: bool,
        fd: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> Result<Value, QmpError> {
        if *self.closed.borrow() {
            return Err(QmpError::Closed);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = Map::new();
        let key = if oob { "exec-oob" } else { "execute" };
        msg.insert(key.into(), json!(command));
        if let Some(a) = args {
            msg.insert("arguments".into(), a);
        }
        msg.insert("id".into(), json!(id));
        let mut text = Value::Object(msg).to_string();
        text.push('\n');
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        {
            let mut w = self.writer.lock().await;
            let bytes = text.as_bytes();
            let first = match fd {
                Some(fd) => send_with_fd(w.as_ref(), bytes, fd).await,
                None => Ok(0),
            };
            let sent = match first {
                Ok(n) => w.write_all(&bytes[n..]).await,
                Err(e) => Err(e),
            };
            if let Err(e) = sent {
                lock(&self.pending).remove(&id);
                return Err(if e.kind() == std::io::ErrorKind::BrokenPipe {
                    QmpError::Closed
                } else {
                    QmpError::Io(e)
                });
            }
        }
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => {
                lock(&self.pending).remove(&id);
                Err(QmpError::Timeout(command.to_string()))
            }
            Ok(Err(_)) => Err(QmpError::Closed),
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err((class, desc)))) => Err(QmpError::Command {
                command: command.to_string(),
                class,
                desc,
            }),
        }
    }

    /// Subscribes to events from now on.
    pub fn events(&self) -> broadcast::Receiver<QmpEvent> {
        self.events.subscribe()
    }
}

/// The next `name` event on `events`, if it comes within `wait`. `None`
/// also when events were lost (the caller then asks QEMU) or the monitor
/// closed, so a caller that waits for a state change looks at QEMU again
/// either way rather than trusting the stream.
pub async fn next_event(
    events: &mut broadcast::Receiver<QmpEvent>,
    name: &str,
    wait: std::time::Duration,
) -> Option<QmpEvent> {
    tokio::time::timeout(wait, async {
        loop {
            match events.recv().await {
                Ok(e) if e.name == name => return Some(e),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    })
    .await
    .ok()
    .flatten()
}

impl Qmp {
    /// True once the socket has closed.
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Resolves when QEMU closes the monitor socket.
    pub async fn closed(&self) {
        let mut rx = self.closed.clone();
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// `query-status`: QEMU's run state.
    pub async fn run_state(&self) -> Result<RunState, QmpError> {
        let v = self.execute("query-status", None).await?;
        Ok(v["status"]
            .as_str()
            .map(RunState::parse)
            .unwrap_or(RunState::Unknown))
    }

    /// `query-migrate`: the migration status, with the whole reply for the
    /// figures.
    pub async fn migration(&self) -> Result<(MigrationStatus, Value), QmpError> {
        let v = self.execute("query-migrate", None).await?;
        Ok((MigrationStatus::of_reply(&v), v))
    }

    /// `query-block-jobs`, typed.
    pub async fn block_jobs(&self) -> Result<Vec<BlockJob>, QmpError> {
        let v = self.execute("query-block-jobs", None).await?;
        Ok(BlockJob::list(&v))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the map inconsistent
    // (single inserts/removes), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn read_loop(
    mut reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    pending: Pending,
    events: broadcast::Sender<QmpEvent>,
    closed: watch::Sender<bool>,
) {
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            tracing::warn!(line = line.trim(), "ignoring non-JSON QMP line");
            continue;
        };
        if let Some(name) = v.get("event").and_then(Value::as_str) {
            let ts = &v["timestamp"];
            let timestamp_us = ts["seconds"].as_u64().unwrap_or(0) * 1_000_000
                + ts["microseconds"].as_u64().unwrap_or(0);
            let _ = events.send(QmpEvent {
                name: name.to_string(),
                data: v.get("data").cloned().unwrap_or(Value::Null),
                timestamp_us,
            });
            continue;
        }
        let Some(id) = v.get("id").and_then(Value::as_u64) else {
            continue;
        };
        let Some(tx) = lock(&pending).remove(&id) else {
            continue;
        };
        let reply = if let Some(r) = v.get("return") {
            Ok(r.clone())
        } else {
            let e = &v["error"];
            Err((
                e["class"].as_str().unwrap_or("GenericError").to_string(),
                e["desc"].as_str().unwrap_or("unknown error").to_string(),
            ))
        };
        let _ = tx.send(reply);
    }
    lock(&pending).clear();
    let _ = closed.send(true);
}

/// Sends the first bytes of `bytes` with `fd` attached (SCM_RIGHTS), as
/// QEMU's monitor expects a descriptor: with the command that takes it.
/// Returns how many bytes went (at least one; the rest follow plainly).
async fn send_with_fd(
    stream: &UnixStream,
    bytes: &[u8],
    fd: std::os::fd::BorrowedFd<'_>,
) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    loop {
        stream.writable().await?;
        let sent = stream.try_io(tokio::io::Interest::WRITABLE, || {
            sendmsg_fd(stream.as_raw_fd(), bytes, fd.as_raw_fd())
        });
        match sent {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

/// One sendmsg(2) of `bytes` on `sock` carrying `fd`.
fn sendmsg_fd(sock: i32, bytes: &[u8], fd: i32) -> std::io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: a zeroed msghdr is a valid empty header; every pointer set
    // below points into `iov`, `bytes` or `control`, alive for the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space as _;
    // SAFETY: `control` is CMSG_SPACE(4) bytes, room for one header and
    // one descriptor; CMSG_FIRSTHDR of such a buffer is non-null.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<i32>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut i32, fd);
    }
    // SAFETY: `msg` is fully initialised above; MSG_NOSIGNAL turns a
    // closed peer into EPIPE rather than a signal.
    let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}
