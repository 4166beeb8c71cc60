//! `tern-testguest`: build (or reuse) Tern's test guest and print its paths.
//!
//! Progress goes to stderr; stdout ends with exactly two lines:
//! `kernel <PATH>` and `initrd <PATH>`.

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
usage: tern-testguest [--cache-dir DIR] [--kernel BZIMAGE] [--modules-dir DIR] [--busybox PATH] [--quiet]

Builds the test guest (kernel + initramfs running tern-workload), reusing the
cached files when no input changed. The cache directory defaults to
$TERN_TESTGUEST_DIR, else <workspace>/target/testguest.";

fn main() -> ExitCode {
    let mut opts = tern_testkit::BuildOptions {
        progress: true,
        ..Default::default()
    };
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        let arg = arg.to_string_lossy().into_owned();
        let mut value = |name: &str| {
            args.next()
                .map(PathBuf::from)
                .ok_or_else(|| format!("{name} needs a value"))
        };
        let result = match arg.as_str() {
            "--cache-dir" => value(&arg).map(|v| opts.cache_dir = v),
            "--kernel" => value(&arg).map(|v| opts.kernel = Some(v)),
            "--modules-dir" => value(&arg).map(|v| opts.modules_dir = Some(v)),
            "--busybox" => value(&arg).map(|v| opts.busybox = v),
            "--quiet" | "-q" => {
                opts.progress = false;
                Ok(())
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => Err(format!("unknown argument {other:?}")),
        };
        if let Err(e) = result {
            eprintln!("tern-testguest: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    match tern_testkit::build_or_reuse(&opts) {
        Ok(image) => {
            println!("kernel {}", image.kernel.display());
            println!("initrd {}", image.initrd.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tern-testguest: error: {e}");
            ExitCode::FAILURE
        }
    }
}
