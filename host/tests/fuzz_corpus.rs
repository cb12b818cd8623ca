//! The fuzz targets' kept corpus (`fuzz/corpus/<target>/`: seeds, and inputs the fuzzer
//! found worth keeping) replayed through the same entry points on stable Rust, so that
//! every input that once crashed a target stays fixed.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let ran = std::panic::catch_unwind(|| run(&data));
        assert!(ran.is_ok(), "{target}: {} fails", path.display());
        n += 1;
    }
    assert!(n > 0, "{target}: no corpus in {}", dir.display());
}

#[test]
fn request_corpus() {
    replay("request", locus::fuzz::request);
}

#[test]
fn tokenizer_corpus() {
    replay("tokenizer", locus::fuzz::tokenizer);
}

#[test]
fn kv_events_corpus() {
    replay("kv_events", locus::fuzz::kv_events);
}

#[test]
fn compiled_cache_file_corpus() {
    replay("compiled_cache_file", locus::fuzz::compiled_cache_file);
}
