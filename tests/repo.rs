//! The repository as a new user meets it: a clone that stands alone (no reference to anything
//! beside it), the one install step, and the build script `make demo` uses. Needs git, bash,
//! cargo; the install-step test runs the script as an unprivileged user where `setpriv` exists.

use std::path::Path;
use std::process::Command;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// Every file git tracks, as (path, text); binary files left out.
fn tracked_texts() -> Vec<(String, String)> {
    let out = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(REPO)
        .output()
        .expect("run git ls-files");
    assert!(out.status.success(), "git ls-files failed");
    out.stdout
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8(p.to_vec()).expect("UTF-8 path"))
        .filter_map(|path| {
            let text = std::fs::read_to_string(Path::new(REPO).join(&path)).ok()?;
            Some((path, text))
        })
        .collect()
}

/// `../shared` is reference material for the developers; a clone of this repository has no such
/// thing beside it, so no code, test, script or build file may reach for it.
#[test]
fn nothing_reads_a_directory_beside_the_clone() {
    let offenders: Vec<String> = tracked_texts()
        .into_iter()
        .filter(|(path, _)| !path.ends_with(".md") && path != "tests/repo.rs")
        .filter(|(_, text)| text.contains("../shared") || text.contains("/work/shared"))
        .map(|(path, _)| path)
        .collect();
    assert!(
        offenders.is_empty(),
        "these files reach outside the clone: {offenders:?}"
    );
    assert!(
        Path::new(REPO)
            .join("tests/fixtures/gpu-h100/mountinfo.txt")
            .is_file(),
        "the H100 capture lives in the repository"
    );
}
