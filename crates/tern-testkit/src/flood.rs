//! Silent connections: a flood of TCP connections that never say a word
//! (the cheapest attack on a listener), and a wait for a server to close
//! one.

use std::collections::VecDeque;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Opens silent connections to one address, about 100 a second, holding
/// the newest `hold` of them, until dropped.
pub struct Flood {
    stop: Arc<AtomicBool>,
    opened: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Flood {
    /// Starts flooding `addr`.
    pub fn start(addr: SocketAddr, hold: usize) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicUsize::new(0));
        let (s, o) = (stop.clone(), opened.clone());
        let thread = std::thread::spawn(move || {
            let mut held = VecDeque::new();
            while !s.load(Ordering::Relaxed) {
                if let Ok(c) = TcpStream::connect(addr) {
                    o.fetch_add(1, Ordering::Relaxed);
                    held.push_back(c);
                    if held.len() > hold {
                        held.pop_front();
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Flood {
            stop,
            opened,
            thread: Some(thread),
        }
    }

    /// Connections opened so far.
    pub fn opened(&self) -> usize {
        self.opened.load(Ordering::Relaxed)
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads from `s` until the server closes it (FIN or reset); panics if it
/// stays open for `patience`, which only bounds a broken server.
pub fn wait_closed_by_server(mut s: TcpStream, patience: Duration) {
    s.set_read_timeout(Some(patience)).expect("read timeout");
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("the server kept a silent connection open: {e}"),
        }
    }
}
