//! The error type of the guest image builder.

use std::path::PathBuf;

/// Why the test guest could not be built. Every message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// No `/boot/vmlinuz-*` kernel.
    #[error("no kernel found as {searched}; install one with `apt-get install linux-image-amd64` or pass --kernel")]
    KernelNotFound {
        /// The pattern that was searched.
        searched: String,
    },
    /// The kernel's module directory is missing.
    #[error("kernel modules directory {} is missing; install the modules of that kernel (`apt-get install linux-image-amd64`) or pass --modules-dir", path.display())]
    ModulesDirMissing {
        /// The directory that was expected.
        path: PathBuf,
    },
    /// The kernel version could not be derived from the kernel file name.
    #[error("cannot tell the kernel version from {} (expected a name like vmlinuz-6.1.0-28-amd64); pass --modules-dir", path.display())]
    UnknownKernelVersion {
        /// The kernel file.
        path: PathBuf,
    },
    /// A module the guest needs is neither a module nor built in.
    #[error("kernel module {name} is neither in {}/modules.dep nor built in; use a kernel that has it (Debian's linux-image-amd64 does)", dir.display())]
    ModuleMissing {
        /// Module name.
        name: String,
        /// Module directory searched.
        dir: PathBuf,
    },
    /// A module file is compressed in a format the builder cannot read.
    #[error("kernel module {} is compressed in a format this builder cannot read (only .ko, .ko.xz, .ko.gz); use a kernel with uncompressed or xz modules", path.display())]
    ModuleFormat {
        /// Module file.
        path: PathBuf,
    },
    /// No static busybox.
    #[error("no busybox at {}; install it with `apt-get install busybox-static` or pass --busybox", path.display())]
    BusyboxMissing {
        /// Where busybox was looked for.
        path: PathBuf,
    },
    /// The busybox found is dynamically linked.
    #[error("{} is not statically linked; install the static one with `apt-get install busybox-static`", path.display())]
    BusyboxNotStatic {
        /// The busybox binary.
        path: PathBuf,
    },
    /// Cargo could not be started.
    #[error("cannot run cargo ({source}); make sure cargo is on PATH or set CARGO")]
    CargoSpawn {
        /// The spawn error.
        source: std::io::Error,
    },
    /// Cargo failed to build the workload.
    #[error("building tern-workload failed ({status}); run `cargo build -p tern-workload` to see the errors. Last output:\n{tail}")]
    CargoFailed {
        /// Cargo's exit status.
        status: std::process::ExitStatus,
        /// The end of cargo's stderr.
        tail: String,
    },
    /// The workload binary came out dynamically linked.
    #[error("{} is not statically linked; build it with RUSTFLAGS='-C target-feature=+crt-static' for x86_64-unknown-linux-gnu", path.display())]
    WorkloadNotStatic {
        /// The binary.
        path: PathBuf,
    },
    /// The kernel's xz payload could not be decoded.
    #[error("cannot extract vmlinux from {}: {reason}; pass a different kernel with --kernel", path.display())]
    Vmlinux {
        /// The kernel file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("I/O error on {}: {source}; check that the path exists, is readable and the disk is not full", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl BuildError {
    /// Wrap an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> BuildError {
        let path = path.into();
        move |source| BuildError::Io { path, source }
    }
}
