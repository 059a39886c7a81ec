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
fn the_go_envbox_debug_and_no_startup_log_flags_are_accepted_and_listed() {
    let out = envbox(&["docker", "--help"], &[]);
    let help = String::from_utf8_lossy(&out.stdout);
    // The variables without a flag are listed too (tests/deploy/check.py reads them there).
    let env_only = help
        .split_once("Read from the environment only:")
        .map(|(_, list)| list)
        .unwrap_or_default();
    assert!(
        env_only.contains("  CODER_AGENT_SUBSYSTEM ") && env_only.contains("  ENVBOX_LOG "),
        "{help}"
    );
    let listed = options(&help);
    assert!(
        listed["debug"].contains("[env: CODER_DEBUG=]"),
        "{}",
        listed["debug"]
    );
    // As in the Go envbox, --no-startup-log has no variable.
    assert!(
        !listed["no-startup-log"].contains("[env:"),
        "{}",
        listed["no-startup-log"]
    );
    // Both parse (the run then fails on the image, after the settings are read).
    for args in [
        &["--debug", "--no-startup-log"][..],
        &["--debug=false", "--no-startup-log=true"],
    ] {
        let mut all = vec!["docker", "--image", "oci:", "--username", "coder"];
        all.extend_from_slice(args);
        let err = stderr(&envbox(&all, &[]));
        assert!(err.contains("the path is empty"), "{args:?}: {err}");
    }
}

/// The debug line `envbox docker` writes once its settings are read, the first thing it logs.
const SETTINGS_DEBUG_LINE: &str = "debug: envbox docker: settings read";

#[test]
fn debug_raises_the_log_level_like_envbox_log_debug() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut all = vec!["docker", "--image", "oci:", "--username", "coder"];
        all.extend_from_slice(args);
        let out = envbox(&all, env);
        assert!(!out.status.success());
        stderr(&out)
    };
    let quiet = run(&[], &[]);
    assert!(!quiet.contains(SETTINGS_DEBUG_LINE), "{quiet}");
    for (args, env) in [
        (&["--debug"][..], &[][..]),
        (&[], &[("CODER_DEBUG", "true")]),
        (&[], &[("ENVBOX_LOG", "debug")]),
        // --debug raises the level, never lowers it.
        (&["--debug"], &[("ENVBOX_LOG", "trace")]),
    ] {
        let err = run(args, env);
        assert!(err.contains(SETTINGS_DEBUG_LINE), "{args:?} {env:?}: {err}");
    }
    // A flag wins over its variable.
    let off = run(&["--debug=false"], &[("CODER_DEBUG", "1")]);
    assert!(!off.contains(SETTINGS_DEBUG_LINE), "{off}");
    let bad = run(&[], &[("CODER_DEBUG", "loud")]);
    assert!(
        bad.contains("invalid CODER_DEBUG (--debug)") && bad.contains("expected a boolean"),
        "{bad}"
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

/// The settings' flags, by the group of settings that reads them.
const IMAGE_FLAGS: [&str; 5] = [
    "image",
    "image-secret",
    "docker-config",
    "extra-certs-path",
    "insecure-registries",
];
const WORKSPACE_FLAGS: [&str; 15] = [
    "username",
    "agent-token",
    "envs",
    "hostname",
    "work-dir",
    "bridge-cidr",
    "mounts",
    "add-tun",
    "add-fuse",
    "add-gpu",
    "usr-lib-dir",
    "inner-usr-lib-dir",
    "cpus",
    "memory",
    "run-dir",
];
const STATE_FLAGS: [&str; 2] = ["state-dir", "node-cache"];
/// The flags of `KeepSettings`: the commands that may clean up the cache.
const KEEP_FLAGS: [&str; 3] = ["keep-images", "node-cache-ttl", "node-cache-size"];
const ENTRYPOINT_FLAGS: [&str; 9] = [
    "coder-url",
    "bootstrap-script",
    "disable-idmapped-mount",
    "ethlink",
    "runtime",
    "stop-timeout",
    "cni-path",
    "debug",
    "no-startup-log",
];

/// What each command's `--help` must list: the command, its own flags, the settings' flags it
/// reads, and the note of each setting it requires.
struct HelpCase {
    command: &'static [&'static str],
    own: &'static [&'static str],
    settings: Vec<&'static str>,
    required: &'static [(&'static str, &'static str)],
}

fn help_cases() -> Vec<HelpCase> {
    let groups = |groups: &[&[&'static str]]| groups.concat();
    // `run` is `docker`'s alias: the same settings, the same requirements.
    let entrypoint = |command: &'static [&'static str]| HelpCase {
        command,
        own: &[],
        settings: groups(&[
            &IMAGE_FLAGS,
            &WORKSPACE_FLAGS,
            &STATE_FLAGS,
            &KEEP_FLAGS,
            &ENTRYPOINT_FLAGS,
        ]),
        required: &[("image", "Required"), ("username", "Required")],
    };
    vec![
        entrypoint(&["docker"]),
        entrypoint(&["run"]),
        HelpCase {
            command: &["spec"],
            own: &["rootfs", "image-config", "show-secrets", "show-actions"],
            settings: groups(&[&WORKSPACE_FLAGS]),
            required: &[("username", "Required")],
        },
        HelpCase {
            command: &["pull"],
            own: &[],
            settings: groups(&[&IMAGE_FLAGS, &STATE_FLAGS, &KEEP_FLAGS]),
            required: &[],
        },
        HelpCase {
            command: &["prepare"],
            own: &["as", "output", "no-sync"],
            settings: groups(&[&IMAGE_FLAGS, &STATE_FLAGS, &KEEP_FLAGS, &WORKSPACE_FLAGS]),
            required: &[
                ("image", "Required"),
                ("username", "Required with --output"),
            ],
        },
        HelpCase {
            command: &["cache", "ls"],
            own: &[],
            settings: groups(&[&STATE_FLAGS]),
            required: &[],
        },
        HelpCase {
            command: &["cache", "prune"],
            own: &[],
            settings: groups(&[&IMAGE_FLAGS, &STATE_FLAGS, &KEEP_FLAGS]),
            required: &[],
        },
    ]
}

/// The options `--help` lists: each long flag with its whole entry, whitespace collapsed. An
/// entry starts on a line indented by 2 (`-h, --help`) or 6 (`--flag`) spaces; help text, and
/// a flag named in it, is indented further.
fn options(help: &str) -> std::collections::BTreeMap<String, String> {
    let mut options = std::collections::BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in help.lines() {
        let start = if line.starts_with("  -") && !line.starts_with("  --") {
            line.find(", --").map(|at| at + 2)
        } else if line.starts_with("      --") {
            Some(6)
        } else {
            None
        };
        match start {
            Some(at) => {
                options.extend(current.take());
                let flag = line[at + 2..]
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                    .next()
                    .unwrap()
                    .to_owned();
                current = Some((flag, line.split_whitespace().collect::<Vec<_>>().join(" ")));
            }
            None if line.starts_with("   ") => {
                if let Some((_, entry)) = &mut current {
                    for word in line.split_whitespace() {
                        entry.push(' ');
                        entry.push_str(word);
                    }
                }
            }
            None => options.extend(current.take()),
        }
    }
    options.extend(current);
    options
}

#[test]
fn each_command_lists_the_settings_it_reads_and_says_which_it_requires() {
    // Every variable set, as in a pod: --help lists options whatever the environment holds.
    let all: Vec<(String, String)> = [
        "CODER_INNER_IMAGE",
        "CODER_INNER_USERNAME",
        "ENVBOX_STOP_TIMEOUT",
        "ENVBOX_CNI_PATH",
        "CODER_BOOTSTRAP_SCRIPT",
    ]
    .iter()
    .map(|v| (v.to_string(), "x".to_owned()))
    .collect();
    let env: Vec<(&str, &str)> = all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    for case in help_cases() {
        let mut args = case.command.to_vec();
        args.push("--help");
        let out = envbox(&args, &env);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let help = String::from_utf8_lossy(&out.stdout);
        let listed = options(&help);
        let mut settings: Vec<&str> = listed
            .keys()
            .map(String::as_str)
            .filter(|flag| !["help", "version"].contains(flag) && !case.own.contains(flag))
            .collect();
        settings.sort_unstable();
        let mut expected = case.settings.clone();
        expected.sort_unstable();
        assert_eq!(settings, expected, "{args:?} lists other settings:\n{help}");
        for own in case.own {
            assert!(listed.contains_key(*own), "{args:?} lacks --{own}:\n{help}");
        }
        for (flag, entry) in &listed {
            match case.required.iter().find(|(f, _)| f == flag) {
                Some((_, note)) => assert!(
                    entry.contains(&format!(". {note} [env:")),
                    "{args:?}: --{flag} does not say {note:?}: {entry}"
                ),
                None => assert!(
                    !entry.contains("Required"),
                    "{args:?}: --{flag} is not required: {entry}"
                ),
            }
        }
    }
}

#[test]
fn a_flag_a_command_does_not_read_is_refused_but_its_variable_is_ignored() {
    let refused: [(&[&str], &str); 8] = [
        (&["spec", "--rootfs", "/"], "--stop-timeout=1s"),
        (&["spec", "--rootfs", "/"], "--image=ubuntu"),
        (&["spec", "--rootfs", "/"], "--boostrap-script=true"),
        (&["pull"], "--cni-path=/usr/lib/cni"),
        (&["pull"], "--username=coder"),
        (&["prepare"], "--runtime=runc"),
        (&["cache", "ls"], "--image=ubuntu"),
        (&["cache", "prune"], "--bootstrap-script=true"),
    ];
    for (command, flag) in refused {
        let mut args = command.to_vec();
        args.push(flag);
        let out = envbox(&args, &[]);
        let err = stderr(&out);
        let name = flag.split('=').next().unwrap();
        assert!(
            out.status.code() == Some(2) && err.contains(&format!("unexpected argument '{name}'")),
            "{args:?}: {err}"
        );
    }

    // Invalid values of settings these commands do not read, as a pod sets them for all.
    let unread = [
        ("CODER_INNER_IMAGE", "not an image"),
        ("CODER_AGENT_URL", "coder.example.com"),
        ("ENVBOX_RUNTIME", "crun"),
        ("ENVBOX_STOP_TIMEOUT", "soon"),
        ("ENVBOX_CNI_PATH", "relative/cni"),
        ("CODER_DOCKER_CONFIG", "relative/config.json"),
        ("CODER_BOOTSTRAP_SCRIPT", "echo hi"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut env = vec![("CODER_INNER_USERNAME", "coder")];
    env.extend(unread);
    let s = spec(dir.path(), &["--hostname", "h"], &env);
    assert_eq!(s["hostname"], "h");

    let state = dir.path().join("state");
    let mut env = vec![
        ("ENVBOX_STATE_DIR", state.to_str().unwrap()),
        ("CODER_CPUS", "lots"),
        ("CODER_INNER_USERNAME", "coder"),
    ];
    env.extend(unread);
    let out = envbox(&["cache", "ls"], &env);
    assert!(out.status.success(), "cache ls: {}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("0 blob(s)"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The entrypoint still reads every setting.
    let out = envbox(
        &["docker"],
        &[
            ("CODER_INNER_IMAGE", "ubuntu"),
            ("CODER_INNER_USERNAME", "coder"),
            ("ENVBOX_STOP_TIMEOUT", "soon"),
        ],
    );
    assert!(
        !out.status.success() && stderr(&out).contains("ENVBOX_STOP_TIMEOUT"),
        "{}",
        stderr(&out)
    );
}
