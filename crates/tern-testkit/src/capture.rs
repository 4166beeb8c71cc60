//! What an eavesdropper on a lab link sees: every frame crossing one
//! interface of a [`Lab`] namespace, read with a packet socket (root), and
//! searched for a byte string (a disk's contents, say). Frames are kept
//! (up to 512 MiB) and searched one by one once asked, so the reader
//! keeps up with a copy at full speed; a needle shorter than a frame's
//! payload and repeated through the data is found in the clear however
//! TCP cuts it.

use crate::netns::{Lab, Side};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// A running capture; stops when dropped.
pub struct Capture {
    stop: Arc<AtomicBool>,
    bytes: Arc<AtomicU64>,
    frames: Arc<Mutex<Vec<Vec<u8>>>>,
    needle: Vec<u8>,
    thread: Option<JoinHandle<()>>,
}

/// Frames kept for searching, in bytes.
const KEEP: u64 = 512 << 20;

fn packet_socket(ifname: &str) -> std::io::Result<OwnedFd> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, libc::c_int::from(proto)) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a new socket this function owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(ifname).map_err(std::io::Error::other)?;
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: sockaddr_ll is plain data; zero is a valid start.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = index as i32;
    // SAFETY: binds our socket to a sockaddr_ll of the size passed.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // A large buffer (root may force it): the capture must keep up with a
    // copy at full speed, or it would miss the very frames it looks for.
    let size: libc::c_int = 64 << 20;
    // SAFETY: SO_RCVBUFFORCE with a c_int of the size passed.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &size as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 200_000,
    };
    // SAFETY: SO_RCVTIMEO with a timeval of the size passed, so the reader
    // thread wakes up to see `stop`.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    Ok(fd)
}

impl Capture {
    /// Captures frames on `ifname` in `side`'s namespace, counting bytes
    /// and the frames that contain `needle`.
    pub fn start(lab: &Lab, side: Side, ifname: &str, needle: &[u8]) -> Capture {
        let fd = lab
            .in_ns(side, || packet_socket(ifname))
            .expect("enter the namespace")
            .unwrap_or_else(|e| panic!("cannot capture on {ifname}: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let bytes = Arc::new(AtomicU64::new(0));
        let frames = Arc::new(Mutex::new(Vec::new()));
        let (s, b, f) = (stop.clone(), bytes.clone(), frames.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 17];
            while !s.load(Ordering::Relaxed) {
                // SAFETY: reads into our buffer, at most its length;
                // MSG_TRUNC returns the frame's whole length.
                let n = unsafe {
                    libc::recv(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr() as *mut libc::c_void,
                        buf.len(),
                        libc::MSG_TRUNC,
                    )
                };
                if n <= 0 {
                    continue;
                }
                let before = b.fetch_add(n as u64, Ordering::Relaxed);
                if before < KEEP {
                    let frame = buf[..(n as usize).min(buf.len())].to_vec();
                    f.lock().unwrap_or_else(|p| p.into_inner()).push(frame);
                }
            }
        });
        Capture {
            stop,
            bytes,
            frames,
            needle: needle.to_vec(),
            thread: Some(thread),
        }
    }

    /// Bytes of every frame seen so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Frames seen so far that hold the needle.
    pub fn hits(&self) -> u64 {
        let n = &self.needle;
        let frames = self.frames.lock().unwrap_or_else(|p| p.into_inner());
        frames
            .iter()
            .filter(|f| {
                f.iter().enumerate().any(|(i, &b)| {
                    b == n[0] && f.len() - i >= n.len() && &f[i..i + n.len()] == n.as_slice()
                })
            })
            .count() as u64
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
