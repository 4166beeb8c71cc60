//! Man pages and shell completions generated from a program's own clap
//! definition, so they never drift from its arguments.
//!
//! Each program calls [`generate_if_asked`] first thing in `main`: with
//! `TERN_GENERATE_DOCS=DIR` in the environment it writes
//! `DIR/man/NAME.SECTION` and `DIR/completions/{NAME.bash,_NAME,NAME.fish}`
//! and exits, instead of running. `scripts/package.sh` does this for
//! `tern`, `ternd` and `tern-controller` before building the packages.

use clap::Command;
use clap_complete::Shell;
use std::io;
use std::path::{Path, PathBuf};

/// The environment variable that asks a program for its documentation.
pub const ENV: &str = "TERN_GENERATE_DOCS";

/// Writes the man page and completions of `cmd` under `out`; returns the
/// files written.
pub fn generate(cmd: Command, section: &str, out: &Path) -> io::Result<Vec<PathBuf>> {
    let mut cmd = cmd;
    cmd.build();
    let name = cmd.get_name().to_string();
    let man_dir = out.join("man");
    let comp_dir = out.join("completions");
    std::fs::create_dir_all(&man_dir)?;
    std::fs::create_dir_all(&comp_dir)?;
    let mut written = Vec::new();
    let page = man_dir.join(format!("{name}.{section}"));
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .section(section)
        .render(&mut buf)?;
    std::fs::write(&page, buf)?;
    written.push(page);
    // One page per subcommand, as git and cargo ship (`man tern-migrate`).
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let full = format!("{name}-{}", sub.get_name());
        let page = man_dir.join(format!("{full}.{section}"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(sub.clone().bin_name(full.clone()).display_name(full))
            .section(section)
            .render(&mut buf)?;
        std::fs::write(&page, buf)?;
        written.push(page);
    }
    for (shell, file) in [
        (Shell::Bash, format!("{name}.bash")),
        (Shell::Zsh, format!("_{name}")),
        (Shell::Fish, format!("{name}.fish")),
    ] {
        let path = comp_dir.join(file);
        let mut f = std::fs::File::create(&path)?;
        clap_complete::generate(shell, &mut cmd, name.clone(), &mut f);
        written.push(path);
    }
    Ok(written)
}

/// With [`ENV`] set, writes `cmd`'s documentation there and exits the
/// process (status 1 with a message if it could not); otherwise returns.
pub fn generate_if_asked(cmd: impl FnOnce() -> Command, section: &str) {
    let Some(dir) = std::env::var_os(ENV) else {
        return;
    };
    let cmd = cmd();
    let name = cmd.get_name().to_string();
    match generate(cmd, section, Path::new(&dir)) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!(
                "{name}: cannot write documentation under {}: {e}",
                Path::new(&dir).display()
            );
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction};

    #[test]
    fn writes_a_man_page_and_three_completions() {
        let cmd = Command::new("demo")
            .about("A demo.")
            .arg(
                Arg::new("verbose")
                    .long("verbose")
                    .action(ArgAction::SetTrue),
            )
            .subcommand(Command::new("run").about("Runs."));
        let d = tempfile::tempdir().unwrap();
        let files = generate(cmd, "8", d.path()).unwrap();
        assert_eq!(files.len(), 5);
        let sub = std::fs::read_to_string(d.path().join("man/demo-run.8")).unwrap();
        assert!(sub.contains("Runs."), "{sub}");
        let page = std::fs::read_to_string(d.path().join("man/demo.8")).unwrap();
        assert!(page.contains(".TH demo 8"), "{page}");
        assert!(page.contains("verbose"), "{page}");
        let bash = std::fs::read_to_string(d.path().join("completions/demo.bash")).unwrap();
        assert!(bash.contains("--verbose"), "{bash}");
        assert!(d.path().join("completions/_demo").exists());
        assert!(d.path().join("completions/demo.fish").exists());
    }
}
