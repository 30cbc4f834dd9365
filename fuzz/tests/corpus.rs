//! Replays the committed corpus (`corpus/<target>/*`) through every fuzz target: the targets'
//! invariants hold for every seed and for every crash found so far (kept as seeds), on stable and
//! without libFuzzer. `make fuzz` explores further.

use std::path::Path;

fn corpus_dir(target: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

#[test]
fn every_target_replays_its_corpus() {
    for (name, target) in portcullis_fuzz::TARGETS {
        let dir = corpus_dir(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("corpus entry").path())
            .collect();
        files.sort();
        assert!(
            files.len() >= 3,
            "{name}: fewer than 3 seeds in {}",
            dir.display()
        );
        for file in files {
            let data = std::fs::read(&file).expect("read seed");
            eprintln!("{name}: {}", file.display());
            target(&data);
        }
    }
}

#[test]
fn every_target_has_a_binary_and_every_binary_a_target() {
    let bins: Vec<String> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz_targets"))
            .expect("fuzz_targets")
            .map(|e| {
                let p = e.expect("entry").path();
                p.file_stem().expect("stem").to_string_lossy().into_owned()
            })
            .collect();
    for (name, _) in portcullis_fuzz::TARGETS {
        assert!(bins.iter().any(|b| b == name), "no fuzz_targets/{name}.rs");
    }
    for bin in &bins {
        assert!(
            portcullis_fuzz::TARGETS.iter().any(|(n, _)| n == bin),
            "fuzz_targets/{bin}.rs is not in TARGETS"
        );
    }
}
