//! The command line as users meet it: flags, environment fallbacks, errors, help, secrets.
//! Runs the real binary with a controlled environment; needs no privileges.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

const ENVBOX: &str = env!("CARGO_BIN_EXE_envbox");

/// The binary with an empty environment (plus PATH), so the developer's variables never leak in.
fn envbox(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(ENVBOX)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .envs(env.iter().copied())
        .output()
        .expect("run envbox")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A tiny rootfs: just what the spec reads.
fn rootfs(dir: &Path) -> String {
    fs::create_dir_all(dir.join("etc")).unwrap();
    fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0::/root:/bin/sh\ncoder:x:1000:1000::/home/coder:/bin/sh\n",
    )
    .unwrap();
    dir.to_str().unwrap().to_owned()
}

fn spec(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let root = rootfs(dir);
    let mut all = vec!["spec", "--rootfs", &root];
    all.extend_from_slice(args);
    let out = envbox(&all, env);
    assert!(out.status.success(), "envbox spec failed: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("spec is JSON")
}

#[test]
fn environment_fallbacks_apply_and_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(
        dir.path(),
        &["--hostname", "from-flag"],
        &[
            ("CODER_INNER_USERNAME", "coder"),
            ("CODER_INNER_HOSTNAME", "from-env"),
            ("CODER_CPUS", "2"),
        ],
    );
    assert_eq!(s["hostname"], "from-flag");
    assert_eq!(s["linux"]["resources"]["cpu"]["quota"], 200_000);
}

#[test]
fn an_empty_variable_counts_as_unset() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(
        dir.path(),
        &[],
        &[
            ("CODER_INNER_USERNAME", "coder"),
            ("CODER_INNER_HOSTNAME", ""),
            ("CODER_MEMORY", ""),
            ("CODER_ADD_FUSE", ""),
        ],
    );
    assert_eq!(s["hostname"], "workspace-cvm");
    assert!(s["linux"]["resources"].get("memory").is_none());
}

#[test]
fn boolean_flags_take_a_value_or_none() {
    let dir = tempfile::tempdir().unwrap();
    let dests = |s: &serde_json::Value| -> Vec<String> {
        s["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap().to_owned())
            .collect()
    };
    let on = spec(dir.path(), &["--username", "coder", "--add-fuse"], &[]);
    assert!(dests(&on).contains(&"/dev/fuse".to_owned()));
    let off = spec(
        dir.path(),
        &["--username", "coder", "--add-fuse=false"],
        &[("CODER_ADD_FUSE", "true")],
    );
    assert!(!dests(&off).contains(&"/dev/fuse".to_owned()));
}

#[test]
fn bad_values_name_the_variable_and_the_expected_form() {
    let dir = tempfile::tempdir().unwrap();
    let root = rootfs(dir.path());
    let cases = [
        (
            ("CODER_ADD_TUN", "yes"),
            "CODER_ADD_TUN (--add-tun)",
            "expected a boolean",
        ),
        (
            ("CODER_MOUNTS", "/a:/b:rx"),
            "CODER_MOUNTS (--mounts)",
            "unknown option \"rx\"",
        ),
        (
            ("CODER_DOCKER_BRIDGE_CIDR", "172.19.0.1"),
            "CODER_DOCKER_BRIDGE_CIDR",
            "IPv4 CIDR",
        ),
        (("CODER_CPUS", "many"), "CODER_CPUS (--cpus)", "1500m"),
        (("CODER_MEMORY", "4GB"), "CODER_MEMORY (--memory)", "4Gi"),
        (
            ("CODER_ADD_GPU", "true"),
            "CODER_USR_LIB_DIR",
            "GPU passthrough",
        ),
    ];
    for ((var, value), name, expected) in cases {
        let out = envbox(
            &["spec", "--rootfs", &root, "--username", "coder"],
            &[(var, value)],
        );
        assert!(!out.status.success(), "{var}={value} was accepted");
        let err = stderr(&out);
        assert!(
            err.contains(name) && err.contains(expected),
            "{var}={value}: {err}"
        );
    }
}

#[test]
fn docker_requires_image_and_user() {
    let out = envbox(&["docker"], &[("CODER_INNER_USERNAME", "coder")]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("\"type\":\"error\"")
            && err.contains("CODER_INNER_IMAGE (--image) is required"),
        "{err}"
    );
    let out = envbox(&["run", "--image", "ubuntu"], &[]);
    assert!(
        stderr(&out).contains("CODER_INNER_USERNAME (--username) is required"),
        "run is an alias: {}",
        stderr(&out)
    );
}

#[test]
fn the_misspelt_bootstrap_flag_of_the_go_envbox_is_accepted() {
    let out = envbox(
        &[
            "docker",
            "--boostrap-script",
            "echo hi",
            "--username",
            "coder",
        ],
        &[],
    );
    assert!(
        !stderr(&out).contains("unexpected argument"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn help_lists_variables_but_never_secret_values() {
    let out = envbox(
        &["docker", "--help"],
        &[
            ("CODER_AGENT_TOKEN", "super-secret-token"),
            (
                "CODER_IMAGE_PULL_SECRET",
                "{\"auths\":{\"x\":{\"auth\":\"c2VjcmV0\"}}}",
            ),
            ("CODER_BOOTSTRAP_SCRIPT", "curl secret"),
        ],
    );
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "CODER_INNER_IMAGE",
        "CODER_MOUNTS",
        "CODER_ADD_GPU",
        "CODER_USR_LIB_DIR",
        "ENVBOX_RUNTIME",
        "ENVBOX_STATE_DIR",
    ] {
        assert!(help.contains(var), "--help lacks {var}");
    }
    for secret in ["super-secret-token", "c2VjcmV0", "curl secret"] {
        assert!(!help.contains(secret), "--help shows {secret}");
    }
}

#[test]
fn secrets_are_redacted_in_spec_output_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("CODER_INNER_USERNAME", "coder"),
        ("CODER_AGENT_TOKEN", "tok-123"),
    ];
    let redacted = spec(dir.path(), &[], &env);
    let text = redacted.to_string();
    assert!(
        !text.contains("tok-123") && text.contains("CODER_AGENT_TOKEN=<redacted>"),
        "{text}"
    );
    let shown = spec(dir.path(), &["--show-secrets"], &env);
    assert!(shown.to_string().contains("CODER_AGENT_TOKEN=tok-123"));
}

#[test]
fn a_user_missing_from_the_image_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let root = rootfs(dir.path());
    let out = envbox(&["spec", "--rootfs", &root, "--username", "alice"], &[]);
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains("\"alice\"") && err.contains("/etc/passwd"),
        "{err}"
    );
}

#[test]
fn image_config_drives_env_and_working_dir() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    fs::write(
        &config,
        r#"{"os":"linux","config":{"Env":["LANG=C.UTF-8","SYSBOX_X=1"],"WorkingDir":"/src"}}"#,
    )
    .unwrap();
    let rootdir = dir.path().join("rootfs");
    let s = spec(
        &rootdir,
        &[
            "--username",
            "coder",
            "--image-config",
            config.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(s["process"]["cwd"], "/src");
    let env = s["process"]["env"].to_string();
    assert!(
        env.contains("LANG=C.UTF-8") && !env.contains("SYSBOX_X"),
        "{env}"
    );
}
