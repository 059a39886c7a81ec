//! [`Supervised`] with small `sh` children: clean environment, log capture, readiness timeout,
//! exit detection, orderly stop and its SIGKILL escalation, kill on drop (no root needed); and
//! [`DaemonConfig::from_settings`].

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

use super::*;

/// A `sh -c script` child logging to `<dir>/<name>.log`.
pub(super) fn sh_spec(dir: &Path, name: &str, script: &str) -> ChildSpec {
    ChildSpec {
        name: name.into(),
        program: PathBuf::from("/bin/sh"),
        args: vec!["-c".into(), script.into()],
        env: vec![("EXTRA".into(), "1".into())],
        log: dir.join(format!("{name}.log")),
        stale_files: Vec::new(),
        hint: None,
    }
}

/// True once `pid` is gone (reaped, or never existed).
pub(super) fn gone(pid: u32) -> bool {
    kill(Pid::from_raw(pid as i32), None) == Err(Errno::ESRCH)
}

/// Waits up to 10 s for `pid` to be gone.
pub(super) async fn wait_gone(pid: u32) -> bool {
    for _ in 0..1000 {
        if gone(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[derive(Debug, thiserror::Error)]
#[error("{0} not in the log yet")]
struct NotYet(&'static str);

/// Ready once the child's log contains `marker` (which must not be in its command line: the
/// log's first line quotes it).
async fn logged(child: &Supervised, marker: &'static str) {
    child
        .wait_ready(
            Duration::from_secs(10),
            Duration::from_millis(10),
            || async {
                let text = std::fs::read_to_string(child.log()).unwrap_or_default();
                text.contains(marker).then_some(()).ok_or(NotYet(marker))
            },
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn child_gets_a_clean_environment_and_its_output_goes_to_the_log() {
    assert!(
        std::env::var_os("HOME").is_some(),
        "the test needs HOME set in its own env"
    );
    let dir = tempfile::tempdir().unwrap();
    let child = Supervised::start(sh_spec(
        dir.path(),
        "envdump",
        "echo out; echo err >&2; env",
    ))
    .await
    .unwrap();
    let death = tokio::time::timeout(Duration::from_secs(10), child.died())
        .await
        .unwrap();
    assert_eq!(death.status.map(|s| s.code()), Some(Some(0)));
    let log = std::fs::read_to_string(child.log()).unwrap();
    let mut lines = log.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("envbox: starting /bin/sh [\"-c\""),
        "{log}"
    );
    assert_eq!(lines.next(), Some("out"));
    assert_eq!(lines.next(), Some("err"));
    let env: Vec<&str> = lines.collect();
    assert!(env.contains(&"EXTRA=1"), "{env:?}");
    assert!(env.iter().any(|l| l.starts_with("PATH=")), "{env:?}");
    assert!(
        !env.iter().any(|l| l.starts_with("HOME=")),
        "envbox's env leaked: {env:?}"
    );
}

#[tokio::test]
async fn readiness_timeout_reports_the_last_probe_error_and_the_log_tail() {
    let dir = tempfile::tempdir().unwrap();
    let child = Supervised::start(sh_spec(
        dir.path(),
        "slow",
        "echo warming up; exec sleep 30",
    ))
    .await
    .unwrap();
    let err = child
        .wait_ready(
            Duration::from_millis(300),
            Duration::from_millis(20),
            || async { Err::<(), _>(std::io::Error::other("socket refused")) },
        )
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, SuperviseError::NotReady { .. }), "{text}");
    assert!(
        text.starts_with("slow was not ready after 300ms (last attempt: socket refused)"),
        "{text}"
    );
    assert!(text.ends_with("\n  warming up"), "{text}");
    let pid = child.pid();
    drop(child);
    assert!(wait_gone(pid).await, "dropping the handle kills the child");
}

#[tokio::test]
async fn exit_while_waiting_for_readiness_is_a_death_with_status_and_tail() {
    let dir = tempfile::tempdir().unwrap();
    let child = Supervised::start(sh_spec(dir.path(), "crashy", "echo cannot bind; exit 7"))
        .await
        .unwrap();
    let err = child
        .wait_ready(
            Duration::from_secs(10),
            Duration::from_millis(10),
            || async { Err::<(), _>(std::io::Error::other("not yet")) },
        )
        .await
        .unwrap_err();
    let SuperviseError::Died(death) = &err else {
        panic!("{err}")
    };
    assert_eq!(death.phase, Phase::Starting);
    assert_eq!(death.status.and_then(|s| s.code()), Some(7));
    assert_eq!(
        death.log_tail.last().map(String::as_str),
        Some("cannot bind")
    );
    assert!(
        err.to_string()
            .starts_with("crashy exited while starting (exit status: 7)"),
        "{err}"
    );
}

#[tokio::test]
async fn stop_sends_sigterm_and_reaps() {
    let dir = tempfile::tempdir().unwrap();
    let child = Supervised::start(sh_spec(dir.path(), "polite", "exec sleep 30"))
        .await
        .unwrap();
    let pid = child.pid();
    let status = child.stop(Duration::from_secs(10)).await.unwrap();
    assert_eq!(status.signal(), Some(libc::SIGTERM));
    assert!(gone(pid));
}

#[tokio::test]
async fn stop_kills_a_child_that_ignores_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    // The shell itself ignores SIGTERM (dash resets ignored signals on exec: no exec here).
    // (`""` keeps the marker out of the log's header line, which quotes the script.)
    let script = "trap '' TERM; echo TRAP-\"\"SET; while :; do sleep 0.2; done";
    let child = Supervised::start(sh_spec(dir.path(), "stubborn", script))
        .await
        .unwrap();
    logged(&child, "TRAP-SET").await;
    let pid = child.pid();
    let problem = child.stop(Duration::from_millis(300)).await.unwrap_err();
    assert!(matches!(problem, StopProblem::Killed { .. }), "{problem}");
    assert!(gone(pid));
}

#[tokio::test]
async fn died_reports_a_kill_after_readiness_and_stop_says_it_was_already_dead() {
    let dir = tempfile::tempdir().unwrap();
    let child = Supervised::start(sh_spec(
        dir.path(),
        "victim",
        "echo IS-\"\"UP; exec sleep 30",
    ))
    .await
    .unwrap();
    logged(&child, "IS-UP").await;
    kill(Pid::from_raw(child.pid() as i32), nix::sys::signal::SIGKILL).unwrap();
    let death = tokio::time::timeout(Duration::from_secs(10), child.died())
        .await
        .unwrap();
    assert_eq!(death.phase, Phase::Running);
    assert_eq!(death.status.and_then(|s| s.signal()), Some(libc::SIGKILL));
    assert!(
        death
            .to_string()
            .starts_with("victim exited unexpectedly (signal: 9 (SIGKILL))"),
        "{death}"
    );
    let problem = child.stop(Duration::from_secs(1)).await.unwrap_err();
    assert!(
        matches!(problem, StopProblem::AlreadyDead { .. }),
        "{problem}"
    );
}

#[tokio::test]
async fn start_refuses_a_directory_where_a_stale_file_belongs_and_names_a_missing_program() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = sh_spec(dir.path(), "blocked", "true");
    spec.stale_files = vec![dir.path().to_path_buf()];
    let err = Supervised::start(spec).await.unwrap_err();
    assert!(
        matches!(err, SuperviseError::StaleIsDirectory { .. }),
        "{err}"
    );

    let mut spec = sh_spec(dir.path(), "ghost", "true");
    spec.program = dir.path().join("no-such-daemon");
    let err = Supervised::start(spec).await.unwrap_err().to_string();
    assert!(err.starts_with("starting ghost ("), "{err}");
    assert!(err.contains("no-such-daemon): No such file"), "{err}");
}

#[test]
fn a_missing_sysbox_daemon_names_the_image_build_argument_and_the_runc_fallback() {
    let err = SuperviseError::Spawn {
        name: "sysbox-mgr".into(),
        program: "sysbox-mgr".into(),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    }
    .to_string();
    assert!(
        err.contains("sysbox is not installed in this image"),
        "{err}"
    );
    assert!(err.contains("SYSBOX_DEB build argument"), "{err}");
    assert!(err.contains("ENVBOX_RUNTIME=runc"), "{err}");
}

#[test]
fn daemon_config_from_settings_follows_the_runtime_dirs_and_idmapped_flag() {
    use crate::config::{Purpose, RawSettings, Runtime, Settings};
    let raw = RawSettings {
        username: Some("coder".into()),
        runtime: Some("runc".into()),
        state_dir: Some("/data/envbox".into()),
        run_dir: Some("/run/eb".into()),
        disable_idmapped_mount: Some("true".into()),
        ..Default::default()
    };
    let settings = Settings::from_raw(&raw, None, Purpose::Spec).unwrap();
    let config = DaemonConfig::from_settings(&settings);
    assert_eq!(config.runtime, Runtime::Runc);
    assert_eq!(config.state_dir, Path::new("/data/envbox"));
    assert_eq!(config.log_dir(), Path::new("/run/eb/log"));
    assert!(config.sysbox.disable_idmapped_mount);
    assert_eq!(config.sysbox.run_dir, Path::new("/run/sysbox"));
    assert_eq!(config.cgroups, CgroupSetup::Skip, "a test is not PID 1");
    assert_eq!(config.containerd.binary, Path::new("containerd"));
    assert_eq!(CgroupSetup::for_pid(1), CgroupSetup::Prepare);
    assert_eq!(CgroupSetup::for_pid(4242), CgroupSetup::Skip);
}
