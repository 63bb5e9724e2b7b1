//! The fuzzers' corpus (`fuzz/seeds/`, minimised after each fuzzing run), replayed on stable
//! Rust through the same entry points `cargo fuzz` drives: whatever once found new paths in the
//! PEM scanner, the intake, a node's configuration or hostname normalisation keeps passing.

use certdrop::fuzz_entry;

fn replay(target: &str, entry: fn(&[u8])) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut count = 0;
    for file in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = file.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| entry(&data));
        assert!(outcome.is_ok(), "{} panics on {}", target, path.display());
        count += 1;
    }
    assert!(count > 0, "no corpus for {target}");
}

#[test]
fn the_pem_scanner_corpus_replays() {
    replay("pem_scanner", fuzz_entry::pem_scanner);
}

#[test]
fn the_intake_corpus_replays() {
    replay("intake", fuzz_entry::intake);
}

#[test]
fn the_node_config_corpus_replays() {
    replay("node_config", fuzz_entry::node_config);
}

#[test]
fn the_hostname_corpus_replays() {
    replay("hostname", fuzz_entry::hostname);
}

#[test]
fn the_vault_share_corpus_replays() {
    replay("vault_share", fuzz_entry::vault_share);
}
