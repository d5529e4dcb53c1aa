//! Replays the fuzz targets' committed seeds and every crash the fuzzer ever found
//! (tests/fuzz/{corpus,regressions}/<target>/) through the same harness the fuzzer runs
//! (quantkit_cli::fuzzing), on stable Rust, in CI. Each input must be handled without a panic; the
//! harness also checks that every error names its file. Fuzzing itself: `bash scripts/fuzz.sh`.

use std::path::Path;

#[test]
fn fuzz_seeds_and_regressions_replay_without_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz");
    let mut failures = vec![];
    let mut replayed = 0;
    for (name, _) in quantkit_cli::fuzzing::TARGETS {
        let mut seeds = 0;
        for kind in ["corpus", "regressions"] {
            let Ok(rd) = std::fs::read_dir(root.join(kind).join(name)) else { continue };
            let mut files: Vec<_> = rd.flatten().map(|e| e.path()).collect();
            files.sort();
            for f in files {
                let data = std::fs::read(&f).expect("read corpus file");
                let r = std::panic::catch_unwind(|| quantkit_cli::fuzzing::run(name, &data));
                if r.is_err() {
                    failures.push(f.display().to_string());
                }
                replayed += 1;
                seeds += usize::from(kind == "corpus");
            }
        }
        assert!(seeds > 0, "fuzz target {name} has no committed seed in tests/fuzz/corpus/{name}/");
    }
    eprintln!("replayed {replayed} fuzz inputs");
    assert!(failures.is_empty(), "inputs that panic: {failures:#?}");
}
