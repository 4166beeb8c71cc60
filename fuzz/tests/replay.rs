//! Replays every corpus file of every target against the current code, on
//! a stable toolchain: `cargo test --manifest-path fuzz/Cargo.toml`. A
//! failure names the target and the file (reproduce it with
//! `scripts/fuzz.sh`'s cargo-fuzz run on that file).

use std::path::Path;

#[test]
fn every_corpus_file_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut failures = Vec::new();
    let mut total = 0;
    for (name, body) in tern_fuzz::TARGETS {
        let dir = root.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus of {name} ({}): {e}", dir.display()))
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{name} has an empty corpus");
        for f in files {
            let data = std::fs::read(&f).unwrap();
            total += 1;
            if std::panic::catch_unwind(|| body(&data)).is_err() {
                failures.push(format!("{name}: {}", f.display()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} inputs fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
    println!("{total} corpus inputs replayed");
}

#[test]
fn every_target_has_a_binary_and_a_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    for (name, _) in tern_fuzz::TARGETS {
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "{name} has no [[bin]]"
        );
        assert!(root
            .join("fuzz_targets")
            .join(format!("{name}.rs"))
            .is_file());
        assert!(root.join("corpus").join(name).is_dir());
    }
}
