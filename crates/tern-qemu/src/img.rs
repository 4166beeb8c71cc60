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
    /// A format other than raw or qcow2 was asked for or recorded.
    #[error("image {path}: format '{format}' is not supported; use raw or qcow2")]
    Format {
        /// The image.
        path: PathBuf,
        /// The format named.
        format: String,
    },
    /// A qcow2 image names a backing file but not its format, so QEMU would
    /// guess it from the backing file's contents.
    #[error("image {image} names backing file {backing} without its format; record it with 'qemu-img rebase -u -f qcow2 -F raw|qcow2 -b {backing} {image}'")]
    BackingWithoutFormat {
        /// The image.
        image: PathBuf,
        /// Its backing file.
        backing: PathBuf,
    },
    /// A backing chain longer than [`MAX_CHAIN_DEPTH`].
    #[error("the backing chain of {top} is deeper than {MAX_CHAIN_DEPTH} images; flatten it with 'qemu-img convert'")]
    ChainTooDeep {
        /// The top image.
        top: PathBuf,
    },
    /// A backing chain that comes back to an image it already passed.
    #[error("the backing chain of {top} loops back to {again}; fix the backing file names")]
    ChainLoop {
        /// The top image.
        top: PathBuf,
        /// The image met twice.
        again: PathBuf,
    },
}

/// Deepest backing chain Tern follows (libvirt refuses beyond 200; real
/// chains are a handful of snapshots deep).
pub const MAX_CHAIN_DEPTH: usize = 32;

/// The two formats Tern opens images with.
fn checked_format(path: &Path, format: &str) -> Result<&'static str, ImgError> {
    match format {
        "raw" => Ok("raw"),
        "qcow2" => Ok("qcow2"),
        other => Err(ImgError::Format {
            path: path.to_path_buf(),
            format: other.to_string(),
        }),
    }
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

/// Points a qcow2 image at another backing file without touching data
/// (`qemu-img rebase -u`): the backing file moved, its contents did not.
pub async fn rebase_unsafe(
    path: &Path,
    backing: &Path,
    backing_format: &str,
) -> Result<(), ImgError> {
    let p = path.display().to_string();
    let b = backing.display().to_string();
    let bf = checked_format(backing, backing_format)?;
    run(
        "rebase",
        &["rebase", "-u", "-f", "qcow2", "-b", &b, "-F", bf, &p],
    )
    .await
    .map(|_| ())
}

/// Copies a file byte for byte (both sides opened as raw, whatever they
/// hold: a qcow2 file's header, backing name included, moves as bytes),
/// between a local path and a URL QEMU's block layer reaches (`nfs://`).
/// Zero runs are not written, so a sparse file stays sparse; `to` must
/// not exist.
pub async fn copy_bytes(from: &Path, to: &Path) -> Result<(), ImgError> {
    let f = from.display().to_string();
    let t = to.display().to_string();
    run(
        "convert",
        &["convert", "-f", "raw", "-O", "raw", "-S", "4k", &f, &t],
    )
    .await
    .map(|_| ())
}

/// Whether two files have the same length and bytes (both read as raw; a
/// hole reads as zeros): the check after [`copy_bytes`].
pub async fn same_bytes(a: &Path, b: &Path) -> Result<bool, ImgError> {
    if info(a, "raw").await?.virtual_size != info(b, "raw").await?.virtual_size {
        return Ok(false);
    }
    let (x, y) = (a.display().to_string(), b.display().to_string());
    let out = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw", &x, &y])
        .output()
        .await
        .map_err(ImgError::Spawn)?;
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(ImgError::Failed {
            op: "compare",
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }),
    }
}

/// Reads the facts of an image of a known format (`-f`, so a raw image is
/// never probed: a guest can write a qcow2 header into its raw disk); `-U`
/// lets it inspect an image a running guest holds.
pub async fn info(path: &Path, format: &str) -> Result<ImageInfo, ImgError> {
    let f = checked_format(path, format)?;
    let p = path.display().to_string();
    let out = run("info", &["info", "-U", "-f", f, "--output=json", &p]).await?;
    parse_info(&out)
}

/// What `qemu-img` guesses an image of unknown format to be. Only for
/// reports (`vol-info`); nothing may open an image with the guessed format
/// unless the image's bytes cannot come from a guest.
pub async fn probe(path: &Path) -> Result<ImageInfo, ImgError> {
    let p = path.display().to_string();
    let out = run("info", &["info", "-U", "--output=json", &p]).await?;
    parse_info(&out)
}

/// Parses `qemu-img info --output=json`.
pub fn parse_info(out: &[u8]) -> Result<ImageInfo, ImgError> {
    let raw: RawInfo = serde_json::from_slice(out)?;
    Ok(ImageInfo {
        format: raw.format,
        virtual_size: raw.virtual_size,
        actual_size: raw.actual_size,
        backing: raw.full_backing.or(raw.backing).map(PathBuf::from),
        backing_format: raw.backing_format,
    })
}

/// One image of a backing chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainLink {
    /// Where it is (as the image above names it; the top as given).
    pub path: PathBuf,
    /// Its format: the top's as the caller knows it, the others' as the
    /// image above records it (never guessed).
    pub format: String,
    /// What qemu-img says about it, read with that format.
    pub info: ImageInfo,
}

/// The backing chain of `top` (a `format` image), top first: each backing
/// file read with the format its overlay records, at most
/// [`MAX_CHAIN_DEPTH`] images, refusing loops.
pub async fn backing_chain(top: &Path, format: &str) -> Result<Vec<ChainLink>, ImgError> {
    let mut out: Vec<ChainLink> = Vec::new();
    let mut seen: Vec<PathBuf> = Vec::new();
    let mut next = Some((top.to_path_buf(), format.to_string()));
    while let Some((path, fmt)) = next.take() {
        if out.len() >= MAX_CHAIN_DEPTH {
            return Err(ImgError::ChainTooDeep {
                top: top.to_path_buf(),
            });
        }
        let key = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        if seen.contains(&key) {
            return Err(ImgError::ChainLoop {
                top: top.to_path_buf(),
                again: path,
            });
        }
        seen.push(key);
        let info = info(&path, &fmt).await?;
        if let Some(b) = &info.backing {
            let bf = info
                .backing_format
                .clone()
                .ok_or_else(|| ImgError::BackingWithoutFormat {
                    image: path.clone(),
                    backing: b.clone(),
                })?;
            let b = match path.parent() {
                Some(dir) if b.is_relative() => dir.join(b),
                _ => b.clone(),
            };
            next = Some((b, bf));
        }
        out.push(ChainLink {
            path,
            format: fmt,
            info,
        });
    }
    Ok(out)
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
        let i = info(&top, "qcow2").await.unwrap();
        assert_eq!(i.format, "qcow2");
        assert_eq!(i.virtual_size, 1 << 20);
        assert_eq!(i.backing.as_deref(), Some(base.as_path()));
        let err = create(&dir.path().join("x"), "nope", Some(1), None).await;
        assert!(matches!(err, Err(ImgError::Failed { .. })));
    }

    /// The format-probing hole: a raw image whose first sector is a qcow2
    /// header naming a host file as backing.
    #[tokio::test]
    async fn a_raw_image_is_never_probed() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"not for guests").unwrap();
        let hdr = dir.path().join("hdr.qcow2");
        let st = std::process::Command::new("qemu-img")
            .args([
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "compat=0.10",
                "-F",
                "raw",
                "-b",
            ])
            .arg(&secret)
            .arg(&hdr)
            .arg("64M")
            .status()
            .unwrap();
        assert!(st.success());
        let mut disk = std::fs::read(&hdr).unwrap()[..512].to_vec();
        disk.resize(1 << 20, 0);
        let raw = dir.path().join("disk.raw");
        std::fs::write(&raw, &disk).unwrap();
        // qemu-img's guess would follow the header to the secret.
        assert_eq!(
            probe(&raw).await.unwrap().backing.as_deref(),
            Some(secret.as_path())
        );
        let i = info(&raw, "raw").await.unwrap();
        assert_eq!(
            (i.format.as_str(), i.virtual_size, i.backing),
            ("raw", 1 << 20, None)
        );
        let chain = backing_chain(&raw, "raw").await.unwrap();
        assert_eq!(chain.len(), 1);
        assert!(matches!(
            info(&raw, "vmdk").await,
            Err(ImgError::Format { .. })
        ));
    }

    #[tokio::test]
    async fn backing_chains_stop_at_loops_depth_and_missing_formats() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        create(&p("base.raw"), "raw", Some(1 << 20), None)
            .await
            .unwrap();
        create(
            &p("mid.qcow2"),
            "qcow2",
            None,
            Some((&p("base.raw"), "raw")),
        )
        .await
        .unwrap();
        create(
            &p("top.qcow2"),
            "qcow2",
            None,
            Some((&p("mid.qcow2"), "qcow2")),
        )
        .await
        .unwrap();
        let chain = backing_chain(&p("top.qcow2"), "qcow2").await.unwrap();
        let formats: Vec<_> = chain.iter().map(|l| l.format.as_str()).collect();
        assert_eq!(formats, ["qcow2", "qcow2", "raw"]);
        assert_eq!(chain[2].path, p("base.raw"));
        // a -> b -> a
        create(&p("a.qcow2"), "qcow2", Some(1 << 20), None)
            .await
            .unwrap();
        create(&p("b.qcow2"), "qcow2", None, Some((&p("a.qcow2"), "qcow2")))
            .await
            .unwrap();
        rebase_unsafe(&p("a.qcow2"), &p("b.qcow2"), "qcow2")
            .await
            .unwrap();
        let e = backing_chain(&p("a.qcow2"), "qcow2").await.unwrap_err();
        assert!(matches!(e, ImgError::ChainLoop { .. }), "{e}");
        // Deeper than the limit.
        create(&p("l0.qcow2"), "qcow2", Some(1 << 20), None)
            .await
            .unwrap();
        for n in 1..=MAX_CHAIN_DEPTH {
            let below = p(&format!("l{}.qcow2", n - 1));
            create(
                &p(&format!("l{n}.qcow2")),
                "qcow2",
                None,
                Some((&below, "qcow2")),
            )
            .await
            .unwrap();
        }
        let top = p(&format!("l{MAX_CHAIN_DEPTH}.qcow2"));
        let e = backing_chain(&top, "qcow2").await.unwrap_err();
        assert!(matches!(e, ImgError::ChainTooDeep { .. }), "{e}");
        // (qemu-img 10 no longer writes a backing file without its format,
        // so BackingWithoutFormat is only met in images from older tools.)
    }
}
