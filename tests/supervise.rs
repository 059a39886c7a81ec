//! Integration test (root): the real containerd started, restarted and stopped through
//! `supervise::Daemons`, on temporary state and run dirs; sysbox-mgr and sysbox-fs as
//! stand-ins (sysbox cannot run here).
//!
//! Needs root, `containerd` and `/usr/bin/python3`. Without them it fails when `CI` is set and
//! says it skipped otherwise.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use containerd_client::services::v1::version_client::VersionClient;
use envbox::config::Runtime;
use envbox::supervise::{
    CgroupSetup, ContainerdOptions, DaemonConfig, Daemons, Phase, StopProblem, SysboxOptions,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::host::containerd_requirements_met;

/// Env of the helper that holds daemons until it is killed.
const HOLD_RUN_DIR: &str = "ENVBOX_TEST_HOLD_RUN_DIR";
const HOLD_STATE_DIR: &str = "ENVBOX_TEST_HOLD_STATE_DIR";

fn config(state: &Path, run: &Path, runtime: Runtime) -> DaemonConfig {
    DaemonConfig {
        runtime,
        state_dir: state.into(),
        run_dir: run.into(),
        cgroups: CgroupSetup::Skip,
        containerd: ContainerdOptions::default(),
        sysbox: SysboxOptions::default(),
        stop_grace: Duration::from_secs(10),
    }
}

/// Gone, or a zombie nobody reaped yet: either way no longer running.
fn not_running(pid: u32) -> bool {
    if kill(Pid::from_raw(pid as i32), None).is_err() {
        return true;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // `pid (comm) S ...`: the state follows the last ')'.
    stat.rsplit_once(')')
        .is_none_or(|(_, rest)| rest.trim_start().starts_with('Z'))
}

async fn wait_not_running(pid: u32) -> bool {
    for _ in 0..1000 {
        if not_running(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Running processes whose command line mentions `needle`.
fn running_mentioning(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) && !not_running(pid) {
            pids.push(pid);
        }
    }
    pids
}

async fn version(daemons: &Daemons) -> String {
    VersionClient::new(daemons.channel())
        .version(())
        .await
        .expect("Version answers")
        .into_inner()
        .version
}

fn containerd_pid(daemons: &Daemons) -> u32 {
    daemons
        .daemons()
        .into_iter()
        .find(|d| d.name() == "containerd")
        .expect("containerd supervised")
        .pid()
}

#[tokio::test(flavor = "multi_thread")]
async fn containerd_answers_logs_to_its_file_and_stops_leaving_no_process() {
    if !containerd_requirements_met("containerd supervision test") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (state, run) = (dir.path().join("state"), dir.path().join("run"));
    let daemons = Daemons::start(&config(&state, &run, Runtime::Runc))
        .await
        .unwrap();
    assert_eq!(
        daemons.containerd_socket(),
        run.join("containerd/containerd.sock")
    );
    assert_eq!(version(&daemons).await, daemons.containerd_version());
    // Its metadata (the container specs: the agent token) under the run dir, root's alone.
    let meta = run.join("containerd/root/io.containerd.metadata.v1.bolt/meta.db");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&meta), 0o600);
    assert_eq!(mode(&run.join("containerd")), 0o700);
    assert!(
        !state.join("containerd").exists(),
        "nothing of it on the volume"
    );
    assert_eq!(daemons.daemons().len(), 1, "runc needs no sysbox daemons");
    let log = std::fs::read_to_string(run.join("log/containerd.log")).unwrap();
    assert!(
        log.starts_with("envbox: starting containerd [\"--config\""),
        "{log}"
    );
    assert!(
        log.contains("serving...") && log.contains("containerd.sock"),
        "{log}"
    );

    let pid = containerd_pid(&daemons);
    let problems = daemons.stop().await;
    assert!(problems.is_empty(), "{problems:?}");
    assert!(not_running(pid));
    let config_path = run.join("containerd/config.toml").display().to_string();
    assert!(running_mentioning(&config_path).is_empty());
}

/// Not a test: the helper `containerd_restarts_after_envbox_is_killed_with_sigkill` runs in a
/// child process, holding daemons until it is killed.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "helper process for the kill -9 test"]
async fn hold_daemons_until_killed() {
    let run = PathBuf::from(std::env::var_os(HOLD_RUN_DIR).expect("run by the kill -9 test"));
    let state = PathBuf::from(std::env::var_os(HOLD_STATE_DIR).unwrap());
    let daemons = Daemons::start(&config(&state, &run, Runtime::Runc))
        .await
        .unwrap();
    let pid = containerd_pid(&daemons);
    // Written whole, then renamed: the test reads it as soon as it exists.
    std::fs::write(run.join("held.pid.tmp"), pid.to_string()).unwrap();
    std::fs::rename(run.join("held.pid.tmp"), run.join("held.pid")).unwrap();
    std::future::pending::<()>().await;
}

/// The holder process, killed if the test fails before it does.
struct Holder(std::process::Child);

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn containerd_dies_with_a_killed_envbox_and_starts_again_on_the_same_dirs() {
    if !containerd_requirements_met("kill -9 restart test") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (state, run) = (dir.path().join("state"), dir.path().join("run"));
    std::fs::create_dir_all(&run).unwrap();
    let holder_log = dir.path().join("holder.log");
    let mut holder = Holder(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "hold_daemons_until_killed",
                "--ignored",
                "--nocapture",
            ])
            .env(HOLD_RUN_DIR, &run)
            .env(HOLD_STATE_DIR, &state)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&holder_log).unwrap())
            .spawn()
            .unwrap(),
    );
    let held = run.join("held.pid");
    for _ in 0..3000 {
        if held.exists() || holder.0.try_wait().unwrap().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pid: u32 = std::fs::read_to_string(&held)
        .unwrap_or_else(|_| {
            let log = std::fs::read_to_string(&holder_log).unwrap_or_default();
            panic!("the holder did not start containerd: {log}")
        })
        .parse()
        .unwrap();
    assert!(!not_running(pid));

    // kill -9 of "envbox": its containerd must not outlive it (PR_SET_PDEATHSIG).
    kill(Pid::from_raw(holder.0.id() as i32), Signal::SIGKILL).unwrap();
    holder.0.wait().unwrap();
    assert!(
        wait_not_running(pid).await,
        "containerd {pid} outlived envbox"
    );
    let socket = run.join("containerd/containerd.sock");
    assert!(
        socket.exists(),
        "a killed containerd leaves its socket behind"
    );

    let daemons = Daemons::start(&config(&state, &run, Runtime::Runc))
        .await
        .expect("a start over the stale socket works");
    assert_eq!(version(&daemons).await, daemons.containerd_version());
    let log = std::fs::read_to_string(run.join("log/containerd.log")).unwrap();
    assert_eq!(
        log.matches("envbox: starting containerd").count(),
        1,
        "fresh log per run"
    );
    assert!(
        run.join("log/containerd.log.1").exists(),
        "the killed run's log is kept"
    );
    assert!(daemons.stop().await.is_empty());
}

/// A sysbox stand-in: binds `socket`, says it is ready, then accepts forever.
fn sysbox_stand_in(dir: &Path, name: &str, socket: &Path) -> PathBuf {
    let script = format!(
        "#!/usr/bin/python3\nimport socket, sys\nprint('{name} stand-in', sys.argv[1:], flush=True)\n\
         s = socket.socket(socket.AF_UNIX)\ns.bind('{}')\nprint('Ready', flush=True)\ns.listen(8)\n\
         while True:\n    s.accept()[0].close()\n",
        socket.display()
    );
    let path = dir.join(format!("{name}_stand_in"));
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn stand_in_sysbox_and_real_containerd_start_together_and_a_death_is_reported() {
    if !containerd_requirements_met("sysbox stand-in daemons test") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (state, run) = (dir.path().join("state"), dir.path().join("run"));
    let mut config = config(&state, &run, Runtime::SysboxRunc);
    config.sysbox.run_dir = dir.path().join("sysbox");
    config.sysbox.disable_idmapped_mount = true;
    config.sysbox.mgr_binary =
        sysbox_stand_in(dir.path(), "sysbox_mgr", &config.sysbox.mgr_socket());
    config.sysbox.fs_binary = sysbox_stand_in(dir.path(), "sysbox_fs", &config.sysbox.fs_socket());
    let daemons = Daemons::start(&config).await.unwrap();
    let names: Vec<&str> = daemons.daemons().iter().map(|d| d.name()).collect();
    assert_eq!(names, ["sysbox-mgr", "sysbox-fs", "containerd"]);
    version(&daemons).await;
    let mgr_log = std::fs::read_to_string(run.join("log/sysbox-mgr.log")).unwrap();
    assert!(
        mgr_log.contains("sysbox_mgr stand-in ['--disable-idmapped-mount']"),
        "{mgr_log}"
    );

    let mgr = daemons.daemons()[0].pid();
    kill(Pid::from_raw(mgr as i32), Signal::SIGKILL).unwrap();
    let death = tokio::time::timeout(Duration::from_secs(10), daemons.died())
        .await
        .expect("the death is noticed");
    assert_eq!(
        (death.name.as_str(), death.phase),
        ("sysbox-mgr", Phase::Running)
    );
    assert!(death.to_string().contains("privileged"), "{death}");

    let containerd = containerd_pid(&daemons);
    let problems = daemons.stop().await;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(matches!(&problems[0], StopProblem::AlreadyDead { name, .. } if name == "sysbox-mgr"));
    assert!(not_running(containerd));
}
