//! The deployment files (deploy/kubernetes/, deploy/coder/) as envbox needs them: validated
//! against the Kubernetes OpenAPI schemas and checked against the variables the built binary
//! reads, by tests/deploy/check.py; then that script's own tests (bad files fail it). Runs the
//! venv `scripts/deps.sh test` makes (kubernetes-validate, python-hcl2); without it the test is
//! skipped, except in CI (`CI` set), where it fails.

use std::path::{Path, PathBuf};
use std::process::Command;

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const ENVBOX: &str = env!("CARGO_BIN_EXE_envbox");

/// The venv's Python, or `None` to skip (never in CI).
fn python() -> Option<PathBuf> {
    let venv = std::env::var_os("ENVBOX_DEPLOY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(REPO).join("target/deploy-venv"));
    let python = venv.join("bin/python");
    if python.exists() {
        return Some(python);
    }
    let message = format!(
        "the deployment checks need {} (kubernetes-validate, python-hcl2): run scripts/deps.sh test",
        python.display()
    );
    if std::env::var_os("CI").is_some() {
        panic!("{message}");
    }
    eprintln!("SKIPPED: {message}");
    None
}

fn run(python: &Path, args: &[&str]) -> String {
    let out = Command::new(python)
        .args(args)
        .current_dir(REPO)
        .env("ENVBOX", ENVBOX)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run the venv's python");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "python {args:?} failed:\n{text}");
    text
}

#[test]
fn the_manifests_and_the_coder_template_are_as_envbox_needs_them() {
    let Some(python) = python() else { return };
    let out = run(&python, &["tests/deploy/check.py", "--envbox", ENVBOX]);
    assert!(out.contains("are as envbox needs them"), "{out}");
}

#[test]
fn the_checks_fail_on_bad_files() {
    let Some(python) = python() else { return };
    let out = run(
        &python,
        &["-m", "unittest", "-q", "tests/deploy/test_check.py"],
    );
    assert!(out.contains("OK"), "{out}");
}
