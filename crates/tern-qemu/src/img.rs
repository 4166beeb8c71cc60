//! `qemu-img`: create and inspect disk images.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use thiserror::Error;
use tokio::process::Command;

/// `qemu-img` failures.
#[derive(Debug, Error)]
pub enum ImgError {
    /// The binary could not be run.
    #[error("cannot run qemu-img (install qemu-utils): {0}")]
    Spawn(#[source] std::io::Error),
    /// qemu-img ran and refused.
    #[error("qemu-img {op} failed: {message}")]
    Failed {
        /// Operation, e.g. "create".
        op: &'static str,
        /// Last line of qemu-img's stderr.
        message: String,
    },
    /// `qemu-img info` printed something we could not read.
    #[error("cannot parse qemu-img info output: {0}")]
    Parse(#[from] serde_json::Error),
}

/// What `qemu-img info` says about an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// "qcow2", "raw", ...
    pub format: String,
    /// Guest-visible size in bytes.
    pub virtual_size: u64,
    /// Bytes allocated on the host.
    pub actual_size: u64,
    /// Backing file as recorded in the image.
    pub backing: Option<PathBuf>,
    /// Backing file format as recorded in the image.
    pub backing_format: Option<String>,
}

#[derive(Deserialize)]
struct RawInfo {
    format: String,
    #[serde(rename = "virtual-size")]
    virtual_size: u64,
    #[serde(rename = "actual-size", default)]
    actual_size: u64,
    #[serde(rename = "full-backing-filename", default)]
    full_backing: Option<String>,
    #[serde(rename = "backing-filename", default)]
    backing: Option<String>,
    #[serde(rename = "backing-filename-format", default)]
    backing_format: Option<String>,
}

async fn run(op: &'static str, args: &[&str]) -> Result<Vec<u8>, ImgError> {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .await
        .map_err(ImgError::Spawn)?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let message = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no error message")
            .trim_start_matches("qemu-img: ")
            .to_string();
        return Err(ImgError::Failed { op, message });
    }
    Ok(out.stdout)
}

/// Creates an image. `backing` is (path, format) for a copy-on-write overlay.
pub async fn create(
    path: &Path,
    format: &str,
    size: Option<u64>,
    backing: Option<(&Path, &str)>,
) -> Result<(), ImgError> {
    let p = path.display().to_string();
    let size_s = size.map(|s| s.to_string());
    let mut args: Vec<&str> = vec!["create", "-q", "-f", format];
    let bpath;
    if let Some((b, bf)) = backing {
        bpath = b.display().to_string();
        args.extend(["-b", &bpath, "-F", bf]);
    }
    if format == "qcow2" {
        args.extend(["-o", "lazy_refcounts=on"]);
    }
    args.push(&p);
    if let Some(s) = &size_s {
        args.push(s);
    }
    run("create", &args).await.map(|_| ())
}

/// Points an image at another backing file without touching data
/// (`qemu-img rebase -u`): the backing file moved, its contents did not.
pub async fn rebase_unsafe(
    path: &Path,
    backing: &Path,
    backing_format: &str,
) -> Result<(), ImgError> {
    let p = path.display().to_string();
    let b = backing.display().to_string();
    run(
        "rebase",
        &["rebase", "-u", "-b", &b, "-F", backing_format, &p],
    )
    .await
    .map(|_| ())
}

/// Reads image facts; `-U` lets it inspect an image a running guest holds.
pub async fn info(path: &Path) -> Result<ImageInfo, ImgError> {
    let p = path.display().to_string();
    let out = run("info", &["info", "-U", "--output=json", &p]).await?;
    let raw: RawInfo = serde_json::from_slice(&out)?;
    Ok(ImageInfo {
        format: raw.format,
        virtual_size: raw.virtual_size,
        actual_size: raw.actual_size,
        backing: raw.full_backing.or(raw.backing).map(PathBuf::from),
        backing_format: raw.backing_format,
    })
}

/// The block drivers this QEMU build has (`qemu-img --help`, "Supported
/// image formats"), including those loaded as modules (nfs, rbd, iscsi,
/// gluster come from Debian's qemu-block-extra).
pub async fn block_drivers() -> Result<Vec<String>, ImgError> {
    let out = run("--help", &["--help"]).await?;
    Ok(parse_block_drivers(&String::from_utf8_lossy(&out)))
}

/// The words after "Supported image formats:" up to the next paragraph
/// that is not indented.
pub fn parse_block_drivers(help: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in help.lines() {
        if line.trim_start().starts_with("Supported") && line.contains("formats:") {
            inside = true;
            continue;
        }
        if inside {
            if !line.is_empty() && !line.starts_with(' ') {
                break;
            }
            out.extend(line.split_whitespace().map(str::to_string));
        }
    }
    out
}

/// Parses a virsh-style size: a number with an optional unit suffix
/// (b, k/K/KiB, KB, M/MiB, MB, G/GiB, GB, T/TiB, TB); bare numbers are bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let mult: u64 = match unit.trim() {
        "" | "b" | "B" | "bytes" => 1,
        "k" | "K" | "KiB" => 1 << 10,
        "KB" => 1000,
        "m" | "M" | "MiB" => 1 << 20,
        "MB" => 1_000_000,
        "g" | "G" | "GiB" => 1 << 30,
        "GB" => 1_000_000_000,
        "t" | "T" | "TiB" => 1 << 40,
        "TB" => 1_000_000_000_000,
        _ => return None,
    };
    if num.contains('.') {
        let f: f64 = num.parse().ok()?;
        if !f.is_finite() || f < 0.0 {
            return None;
        }
        Some((f * mult as f64) as u64)
    } else {
        num.parse::<u64>().ok()?.checked_mul(mult)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_drivers_are_read_from_help() {
        let help = "Recognized commands:\n  info - Display\n\nSupported image formats:\n\n  blkdebug file gluster\n  nfs null-co qcow2 raw rbd\n\nSee <https://qemu.org>\n";
        assert_eq!(
            parse_block_drivers(help),
            ["blkdebug", "file", "gluster", "nfs", "null-co", "qcow2", "raw", "rbd"]
        );
    }

    #[test]
    fn sizes_parse_like_virsh() {
        assert_eq!(parse_size("10"), Some(10));
        assert_eq!(parse_size("1K"), Some(1024));
        assert_eq!(parse_size("64M"), Some(64 << 20));
        assert_eq!(parse_size("1.5G"), Some(3 << 29));
        assert_eq!(parse_size("2GB"), Some(2_000_000_000));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("5Q"), None);
    }

    #[tokio::test]
    async fn create_and_inspect_with_backing() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.qcow2");
        create(&base, "qcow2", Some(1 << 20), None).await.unwrap();
        let top = dir.path().join("top.qcow2");
        create(&top, "qcow2", None, Some((&base, "qcow2")))
            .await
            .unwrap();
        let i = info(&top).await.unwrap();
        assert_eq!(i.format, "qcow2");
        assert_eq!(i.virtual_size, 1 << 20);
        assert_eq!(i.backing.as_deref(), Some(base.as_path()));
        let err = create(&dir.path().join("x"), "nope", Some(1), None).await;
        assert!(matches!(err, Err(ImgError::Failed { .. })));
    }
}
