//! A minimal writer for the "newc" cpio format the Linux kernel unpacks as
//! an initramfs (see the kernel's `Documentation/driver-api/early-userspace`).
//!
//! Entries get mtime 0 and uid/gid 0, so the same inputs give the same bytes.

use std::io::{self, Write};

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// Writes a newc cpio archive to `W`.
pub struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    /// Start an archive.
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            next_ino: 1,
            written: 0,
        }
    }

    fn pad(&mut self) -> io::Result<()> {
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..pad])
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) -> io::Result<()> {
        let name = name.trim_start_matches('/');
        let ino = self.next_ino;
        self.next_ino += 1;
        let nlink = if mode & 0o170_000 == S_IFDIR { 2 } else { 1 };
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cpio entry over 4 GiB"))?;
        let header = format!(
            "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}\
             {maj:08x}{min:08x}{rmaj:08x}{rmin:08x}{namesize:08x}{check:08x}",
            uid = 0,
            gid = 0,
            mtime = 0,
            maj = 0,
            min = 0,
            rmaj = rdev.0,
            rmin = rdev.1,
            namesize = name.len() + 1,
            check = 0,
        );
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    /// Add a directory (`mode` is the permission bits, e.g. 0o755).
    pub fn dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        self.entry(path, S_IFDIR | (mode & 0o7777), (0, 0), &[])
    }

    /// Add a regular file.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.entry(path, S_IFREG | (mode & 0o7777), (0, 0), data)
    }

    /// Add a symbolic link pointing at `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.entry(path, S_IFLNK | 0o777, (0, 0), target.as_bytes())
    }

    /// Add a character device node.
    pub fn char_dev(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(path, S_IFCHR | (mode & 0o7777), (major, minor), &[])
    }

    /// Write the trailer and return the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry("TRAILER!!!", 0, (0, 0), &[])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, mode, rdev major, data) of every entry, parsed back.
    fn parse(mut a: &[u8]) -> Vec<(String, u32, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let total = a.len();
        loop {
            assert_eq!((total - a.len()) % 4, 0, "entry not 4-aligned");
            assert_eq!(&a[..6], b"070701");
            let field = |i: usize| {
                let s = std::str::from_utf8(&a[6 + i * 8..14 + i * 8]).expect("ascii");
                u32::from_str_radix(s, 16).expect("hex")
            };
            let (mode, size, rmaj, namesize) =
                (field(1), field(6) as usize, field(9), field(11) as usize);
            let name = std::str::from_utf8(&a[110..110 + namesize - 1])
                .expect("name")
                .to_string();
            assert_eq!(a[110 + namesize - 1], 0);
            let data_at = (110 + namesize).div_ceil(4) * 4;
            let data = a[data_at..data_at + size].to_vec();
            a = &a[(data_at + size).div_ceil(4) * 4..];
            if name == "TRAILER!!!" {
                assert!(a.is_empty());
                return out;
            }
            out.push((name, mode, rmaj, data));
        }
    }

    #[test]
    fn archive_roundtrips() {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("/dev", 0o755).expect("dir");
        w.char_dev("/dev/console", 0o600, 5, 1).expect("dev");
        w.file("/init", 0o755, b"#!/bin/sh\n").expect("file");
        w.file("empty", 0o644, b"").expect("empty");
        w.symlink("/bin/sh", "busybox").expect("symlink");
        let bytes = w.finish().expect("finish");
        let entries = parse(&bytes);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["dev", "dev/console", "init", "empty", "bin/sh"]);
        assert_eq!(entries[0].1, 0o040755);
        assert_eq!((entries[1].1, entries[1].2), (0o020600, 5));
        assert_eq!(
            (entries[2].1, entries[2].3.as_slice()),
            (0o100755, &b"#!/bin/sh\n"[..])
        );
        assert_eq!(
            (entries[4].1, entries[4].3.as_slice()),
            (0o120777, &b"busybox"[..])
        );
    }

    #[test]
    fn same_input_same_bytes() {
        let build = || {
            let mut w = CpioWriter::new(Vec::new());
            w.file("a", 0o644, b"xyz").expect("file");
            w.finish().expect("finish")
        };
        assert_eq!(build(), build());
    }
}
