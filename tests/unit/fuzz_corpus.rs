//! The fuzz targets' checks (fuzz/checks.rs) over every input kept in fuzz/corpus/TARGET and
//! fuzz/regressions/TARGET: the seeds and the inputs that once failed stay passing without the
//! nightly toolchain that coverage-guided fuzzing needs (tools/fuzz.sh).

use std::path::Path;

#[path = "../../fuzz/checks.rs"]
mod checks;

/// Runs `check` over the kept inputs of `target` and returns how many there were.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for kind in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(kind).join(target)) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if !path.is_file() || path.file_name().is_some_and(|f| f == ".gitkeep") {
                continue;
            }
            let data = std::fs::read(&path).expect("a kept input reads");
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{} fails its check", path.display());
            n += 1;
        }
    }
    n
}

#[test]
fn the_decode_status_corpus_passes() {
    // The seeds: the GET and LIST fixtures and samples.
    assert!(replay("decode_status", checks::decode_status) >= 5);
}

#[test]
fn the_retry_after_corpus_passes() {
    assert!(replay("retry_after", checks::retry_after) >= 1);
}

#[test]
fn the_duration_corpus_passes() {
    assert!(replay("duration", checks::duration) >= 2);
}
