//! The compiled-policy disk cache across processes of the `locus` binary.

/// A second process loads the policy the first one compiled from the disk cache, and a
/// corrupt cache file is compiled again rather than loaded.
#[test]
fn a_new_process_loads_a_compiled_policy_from_the_disk_cache() {
    let dir = std::env::temp_dir().join(format!("locus-policy-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let inspect = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_locus"))
            .args(["--policy-cache-dir", dir.to_str().unwrap(), "policy", "inspect", "hash"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        text.lines().find(|l| l.starts_with("code:")).unwrap().to_string()
    };
    assert!(inspect().contains("compiled in"));
    assert!(inspect().contains("from the disk cache"));
    let file = std::fs::read_dir(&dir).unwrap().next().unwrap().unwrap().path();
    let mut data = std::fs::read(&file).unwrap();
    let last = data.len() - 1;
    data[last] ^= 1;
    std::fs::write(&file, &data).unwrap();
    assert!(inspect().contains("compiled in"), "a corrupt file was loaded");
    assert!(inspect().contains("from the disk cache"), "the file was not rewritten");
    std::fs::remove_dir_all(&dir).ok();
}
