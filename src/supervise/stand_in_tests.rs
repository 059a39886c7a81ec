//! sysbox-mgr and sysbox-fs replaced by stand-ins (sysbox cannot run here): small Python
//! daemons that, like the real ones, say "Ready" before their socket accepts connections.
//! Needs `/usr/bin/python3` (CI installs it); skips without it, except when `CI` is set.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, SIGKILL};
use nix::unistd::Pid;

use super::sysbox::{self, SysboxOptions};
use super::tests::{gone, wait_gone};
use super::*;

const PYTHON: &str = "/usr/bin/python3";

/// How a stand-in behaves.
#[derive(Clone, Copy)]
enum Act {
    /// Bind, print "Ready", wait `delay_ms`, then listen and accept forever.
    Serve { delay_ms: u64 },
    /// Print a kernel complaint and exit 3 (what an unsupported node looks like).
    Fail,
}

fn python_available() -> bool {
    if Path::new(PYTHON).exists() {
        return true;
    }
    let message = format!("the sysbox stand-in tests need {PYTHON} (apt-get install python3)");
    if std::env::var_os("CI").is_some() {
        panic!("{message}");
    }
    eprintln!("SKIPPED: {message}");
    false
}

/// Writes an executable stand-in named `<name>_stand_in` serving `socket`.
fn stand_in(dir: &Path, name: &str, socket: &Path, act: Act) -> PathBuf {
    let (mode, delay) = match act {
        Act::Serve { delay_ms } => ("serve", delay_ms),
        Act::Fail => ("fail", 0),
    };
    let script = format!(
        r#"#!{PYTHON}
import socket, sys, time
print("{name} stand-in args:", sys.argv[1:], flush=True)
if "{mode}" == "fail":
    print("seccomp notify: unsupported kernel API level 3", flush=True)
    sys.exit(3)
s = socket.socket(socket.AF_UNIX)
s.bind("{socket}")
print("Ready ...", flush=True)
time.sleep({delay} / 1000)
s.listen(16)
while True:
    s.accept()[0].close()
"#,
        socket = socket.display()
    );
    let path = dir.join(format!("{}_stand_in", name.replace('-', "_")));
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Options whose binaries are stand-ins and whose run dir is `<dir>/sysbox`.
fn stand_in_options(dir: &Path, mgr: Act, fs: Act) -> SysboxOptions {
    let run_dir = dir.join("sysbox");
    let defaults = SysboxOptions {
        run_dir,
        ready_timeout: Duration::from_secs(20),
        ..SysboxOptions::default()
    };
    SysboxOptions {
        mgr_binary: stand_in(dir, "sysbox-mgr", &defaults.mgr_socket(), mgr),
        fs_binary: stand_in(dir, "sysbox-fs", &defaults.fs_socket(), fs),
        ..defaults
    }
}

/// Pids of processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

#[tokio::test]
async fn stand_in_sysbox_is_ready_only_once_both_sockets_accept() {
    if !python_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let options = stand_in_options(
        dir.path(),
        Act::Serve { delay_ms: 50 },
        Act::Serve { delay_ms: 700 },
    );
    let sysbox = sysbox::start(&options, &dir.path().join("log"))
        .await
        .unwrap();
    // Had readiness trusted "Ready" or the socket file, sysbox-fs would still refuse here.
    UnixStream::connect(options.mgr_socket()).expect("sysbox-mgr accepts");
    UnixStream::connect(options.fs_socket()).expect("sysbox-fs accepts");
    let fs_log = std::fs::read_to_string(dir.path().join("log/sysbox-fs.log")).unwrap();
    assert!(fs_log.contains("Ready ..."), "{fs_log}");
    let (mgr, fs) = (sysbox.mgr.pid(), sysbox.fs.pid());
    assert!(sysbox.fs.stop(Duration::from_secs(5)).await.is_ok());
    assert!(sysbox.mgr.stop(Duration::from_secs(5)).await.is_ok());
    assert!(gone(mgr) && gone(fs), "stop reaps both");
}

#[tokio::test]
async fn stand_in_sysbox_exit_before_ready_blames_the_kernel_or_privileges_with_the_log_tail() {
    if !python_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let options = stand_in_options(dir.path(), Act::Fail, Act::Serve { delay_ms: 0 });
    let err = sysbox::start(&options, &dir.path().join("log"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(&err, SuperviseError::Died(d) if d.name == "sysbox-mgr"),
        "{text}"
    );
    assert!(
        text.starts_with("sysbox-mgr exited while starting (exit status: 3): "),
        "{text}"
    );
    assert!(text.contains("seccomp API level >= 5"), "{text}");
    assert!(text.contains("securityContext.privileged: true"), "{text}");
    assert!(
        text.ends_with("\n  seccomp notify: unsupported kernel API level 3"),
        "{text}"
    );
    // The healthy sysbox-fs stand-in was killed with the failed start.
    let fs = options.fs_binary.display().to_string();
    for pid in processes_mentioning(&fs) {
        assert!(
            wait_gone(pid).await,
            "sysbox-fs stand-in {pid} survived the failed start"
        );
    }
}

#[tokio::test]
async fn stand_in_sysbox_mgr_gets_disable_idmapped_mount_and_fs_does_not() {
    if !python_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut options = stand_in_options(
        dir.path(),
        Act::Serve { delay_ms: 0 },
        Act::Serve { delay_ms: 0 },
    );
    options.disable_idmapped_mount = true;
    let sysbox = sysbox::start(&options, &dir.path().join("log"))
        .await
        .unwrap();
    let log =
        |name: &str| std::fs::read_to_string(dir.path().join(format!("log/{name}.log"))).unwrap();
    assert!(log("sysbox-mgr").contains("sysbox-mgr stand-in args: ['--disable-idmapped-mount']"));
    assert!(log("sysbox-fs").contains("sysbox-fs stand-in args: []"));
    drop(sysbox);
}

#[tokio::test]
async fn stand_in_sysbox_starts_over_stale_sockets_and_pid_files_but_not_a_live_one() {
    if !python_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let options = stand_in_options(
        dir.path(),
        Act::Serve { delay_ms: 0 },
        Act::Serve { delay_ms: 0 },
    );
    std::fs::create_dir_all(&options.run_dir).unwrap();
    // A crashed run's sockets: the files stay, nothing listens. The stand-ins' bind() would
    // fail with EADDRINUSE on them.
    drop(UnixListener::bind(options.mgr_socket()).unwrap());
    drop(UnixListener::bind(options.fs_socket()).unwrap());
    for pid_file in ["sysmgr.pid", "sysfs.pid"] {
        std::fs::write(options.run_dir.join(pid_file), "4242\n").unwrap();
    }
    let sysbox = sysbox::start(&options, &dir.path().join("log"))
        .await
        .unwrap();
    assert!(!options.run_dir.join("sysmgr.pid").exists());
    assert!(!options.run_dir.join("sysfs.pid").exists());
    drop(sysbox);

    // A socket something still serves belongs to a live daemon: refused, left alone.
    let other = tempfile::tempdir().unwrap();
    let options = stand_in_options(
        other.path(),
        Act::Serve { delay_ms: 0 },
        Act::Serve { delay_ms: 0 },
    );
    std::fs::create_dir_all(&options.run_dir).unwrap();
    let _live = UnixListener::bind(options.mgr_socket()).unwrap();
    let err = sysbox::start(&options, &other.path().join("log"))
        .await
        .unwrap_err();
    assert!(matches!(err, SuperviseError::SocketInUse { .. }), "{err}");
    assert!(options.mgr_socket().exists());
}

#[tokio::test]
async fn stand_in_sysbox_death_after_ready_is_reported_and_stop_kills_the_other() {
    if !python_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let options = stand_in_options(
        dir.path(),
        Act::Serve { delay_ms: 0 },
        Act::Serve { delay_ms: 0 },
    );
    let sysbox = sysbox::start(&options, &dir.path().join("log"))
        .await
        .unwrap();
    kill(Pid::from_raw(sysbox.fs.pid() as i32), SIGKILL).unwrap();
    let death = tokio::select! {
        death = sysbox.mgr.died() => death,
        death = sysbox.fs.died() => death,
        _ = tokio::time::sleep(Duration::from_secs(10)) => panic!("no death noticed"),
    };
    assert_eq!(death.name, "sysbox-fs");
    let text = death.to_string();
    assert!(
        text.starts_with("sysbox-fs exited unexpectedly (signal: 9 (SIGKILL)): the node's kernel"),
        "{text}"
    );
    assert!(text.contains("\n  Ready ..."), "{text}");
    let mgr = sysbox.mgr.pid();
    assert!(sysbox.mgr.stop(Duration::from_secs(5)).await.is_ok());
    assert!(gone(mgr));
}
