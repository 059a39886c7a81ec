//! What a test needs from this machine (root, runc, busybox, other tools): checked up front, so
//! a test either runs for real or says why not. In CI (`CI` set) a missing requirement fails
//! the test instead of skipping it.

use std::path::Path;
use std::process::Command;

pub const BUSYBOX: &str = "/bin/busybox";

/// True to go on, false to skip (never in CI, where it panics naming what is missing).
pub fn requirements_met(what: &str, needs_runc: bool) -> bool {
    let mut missing = missing_tools(if needs_runc { &[("runc", "runc")] } else { &[] });
    if !Path::new(BUSYBOX).exists() {
        missing.push(format!("{BUSYBOX} (apt-get install busybox-static)"));
    }
    verdict(what, missing)
}

/// Root and each `(command, Debian package)` of `tools` (found when `command --version` runs):
/// true to go on, false to skip (never in CI, where it panics naming what is missing).
pub fn root_and_tools_met(what: &str, tools: &[(&str, &str)]) -> bool {
    verdict(what, missing_tools(tools))
}

fn missing_tools(tools: &[(&str, &str)]) -> Vec<String> {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root".to_owned());
    }
    for (command, package) in tools {
        if Command::new(command).arg("--version").output().is_err() {
            missing.push(format!("{command} (apt-get install {package})"));
        }
    }
    missing
}

fn verdict(what: &str, missing: Vec<String>) -> bool {
    if missing.is_empty() {
        return true;
    }
    let message = format!("{what} needs: {}", missing.join(", "));
    if std::env::var_os("CI").is_some() {
        panic!("{message}");
    }
    eprintln!("SKIPPED: {message}");
    false
}

/// A runc container removed (killed) on drop.
pub struct RuncContainer {
    pub id: String,
}

impl RuncContainer {
    /// `runc run --detach` of a bundle; the container's stdio goes to `log`, never to our
    /// pipes (waiting for runc's output would otherwise wait for the container to exit).
    pub fn start(bundle: &Path, id: &str, log: &Path) -> RuncContainer {
        let file = std::fs::File::create(log).expect("container log");
        let status = Command::new("runc")
            .args([
                "run",
                "--detach",
                "--bundle",
                bundle.to_str().expect("bundle path"),
                id,
            ])
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .status()
            .expect("runc run");
        assert!(
            status.success(),
            "runc run: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        RuncContainer { id: id.to_owned() }
    }

    /// `runc exec` of a shell command.
    pub fn exec(&self, script: &str) -> std::process::Output {
        Command::new("runc")
            .args(["exec", &self.id, "/bin/sh", "-c", script])
            .output()
            .expect("runc exec")
    }

    /// Stdout of a command that must succeed.
    pub fn stdout(&self, script: &str) -> String {
        let out = self.exec(script);
        assert!(
            out.status.success(),
            "{script}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl RuncContainer {
    /// Checks the container's uid and gid maps are the envbox mapping, 0 -> 100000 (65536).
    pub fn assert_envbox_id_maps(&self) {
        for map in ["uid_map", "gid_map"] {
            let fields: Vec<String> = self
                .stdout(&format!("cat /proc/self/{map}"))
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            assert_eq!(fields, ["0", "100000", "65536"], "{map}");
        }
    }
}

impl Drop for RuncContainer {
    fn drop(&mut self) {
        let _ = Command::new("runc")
            .args(["delete", "--force", &self.id])
            .output();
    }
}
