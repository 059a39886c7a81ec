//! The repository as a new user meets it: a clone that stands alone (no reference to anything
//! beside it), the one install step, and the build script `make demo` uses. Needs git, bash,
//! cargo; the install-step test runs the script as an unprivileged user where `setpriv` exists.

use std::os::unix::fs::PermissionsExt;
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

/// The developers keep reference material in a directory named `shared` beside the clone; a
/// user's clone has none, so no code, test, script or build file may reach for it. (The path
/// is put together here, so that this file does not name it.)
#[test]
fn nothing_reads_a_directory_beside_the_clone() {
    let sibling = ["..", "shared"].join("/");
    let offenders: Vec<String> = tracked_texts()
        .into_iter()
        .filter(|(path, _)| !path.ends_with(".md"))
        .filter(|(_, text)| text.contains(&sibling))
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

/// A user without root gets the list of missing packages and the command to install them.
#[test]
fn the_install_step_names_missing_packages_when_it_cannot_install_them() {
    if !nix::unistd::geteuid().is_root() || Command::new("setpriv").arg("--help").output().is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root with setpriv (util-linux)"
        );
        eprintln!("skipped: needs root and setpriv to run the script as another user");
        return;
    }
    // A dpkg-query that knows no package, first on PATH.
    let bin = tempfile::tempdir().unwrap();
    let stub = bin.path().join("dpkg-query");
    std::fs::write(&stub, "#!/bin/sh\nexit 1\n").unwrap();
    std::fs::set_permissions(bin.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "bash"])
        .arg(Path::new(REPO).join("scripts/deps.sh"))
        .arg("test")
        .env(
            "PATH",
            format!("{}:/usr/bin:/bin", bin.path().to_str().unwrap()),
        )
        .output()
        .expect("run deps.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    for package in [
        "containerd",
        "python3-jsonschema",
        "debootstrap",
        "docker-registry",
    ] {
        assert!(stderr.contains(package), "{package} not named: {stderr}");
    }
    assert!(
        stderr.contains("apt-get install"),
        "no install command: {stderr}"
    );
}

/// `make demo` runs the binary where cargo put it, also under CARGO_TARGET_DIR (a link to this
/// build's target directory here, so nothing is built twice).
#[test]
fn the_demo_build_finds_the_binary_under_cargo_target_dir() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("elsewhere");
    let built = Path::new(env!("CARGO_BIN_EXE_envbox"))
        .parent()
        .and_then(Path::parent)
        .expect("target dir of this build");
    std::os::unix::fs::symlink(built, &target).unwrap();
    let out = Command::new("bash")
        .arg(Path::new(REPO).join("scripts/build.sh"))
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("run build.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "build.sh failed: {stderr}");
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        Path::new(printed.trim()),
        target.join("debug/envbox"),
        "build.sh must print the binary cargo built"
    );
}
