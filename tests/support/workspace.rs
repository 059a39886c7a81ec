//! A running `envbox docker` for the tests that start workspaces (`tests/launch.rs`,
//! `tests/nodecache.rs`): spawned with only the given environment, its progress lines
//! collected and echoed, stopped on drop (SIGTERM, then killed).

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ENVBOX: &str = env!("CARGO_BIN_EXE_envbox");

/// A running `envbox docker`, its progress lines collected.
pub struct Envbox {
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Envbox {
    pub fn start(envs: &[(String, String)]) -> Envbox {
        Envbox::start_with_score(envs, None)
    }

    /// Started with `oom_score_adj` set as the kubelet sets a pod's, when given.
    pub fn start_with_score(envs: &[(String, String)], oom_score: Option<i32>) -> Envbox {
        Envbox::start_with(envs, oom_score, None)
    }

    /// Started in the network namespace `netns` (a file such as `/run/netns/NAME`), as each
    /// pod has its own: workspaces side by side then have their own bridge and iptables.
    pub fn start_in_netns(envs: &[(String, String)], netns: &Path) -> Envbox {
        Envbox::start_with(envs, None, Some(netns))
    }

    fn start_with(
        envs: &[(String, String)],
        oom_score: Option<i32>,
        netns: Option<&Path>,
    ) -> Envbox {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(ENVBOX);
        command
            .arg("docker")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(score) = oom_score {
            // SAFETY: only a write(2) to procfs between fork and exec.
            unsafe {
                command.pre_exec(move || fs::write("/proc/self/oom_score_adj", score.to_string()));
            }
        }
        if let Some(netns) = netns {
            enter_netns(&mut command, netns);
        }
        let mut child = command.spawn().expect("start envbox docker");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("envbox: {line}");
                sink.lock().unwrap().push(line);
            }
        });
        Envbox { child, lines }
    }

    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits until a progress line contains `needle`; panics with the log on timeout or exit.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) {
        let end = Instant::now() + timeout;
        loop {
            if self
                .lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(needle))
            {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "envbox exited ({status}) before {needle:?}:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < end,
                "no {needle:?} within {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    /// Stops it as Kubernetes would (SIGTERM) and asserts that it exits with status 0 within
    /// `timeout` (its log in the message).
    pub fn stop_cleanly(&mut self, timeout: Duration) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let status = self.wait_exit(timeout);
        assert!(
            status.success(),
            "exit after SIGTERM: {status}\n{}",
            self.log()
        );
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let end = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                return status;
            }
            assert!(
                Instant::now() < end,
                "envbox still running after {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// How long a dropped `envbox docker` may take to stop on SIGTERM (tests set
/// `ENVBOX_STOP_TIMEOUT=20s`) before it is killed.
const DROP_GRACE: Duration = Duration::from_secs(30);

impl Drop for Envbox {
    /// Still running (a test failed half-way): stopped with SIGTERM, as a pod is, so that its
    /// workspace (shim, processes, bridge, cgroup, mounts) does not outlive it and break the
    /// tests after it; killed if it does not stop in time.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // Not `signal`: a panic here, while a failed test unwinds, would abort.
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let end = Instant::now() + DROP_GRACE;
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes `command` run in the network namespace `netns` (a file such as `/run/netns/NAME`).
pub fn enter_netns(command: &mut Command, netns: &Path) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let netns = fs::File::open(netns).expect("open the network namespace");
    // SAFETY: only setns(2) between fork and exec; the closure owns `netns`.
    unsafe {
        command.pre_exec(
            move || match libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            },
        );
    }
}
