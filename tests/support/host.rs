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

/// The CNI plugins the network stage runs, where Debian's containernetworking-plugins puts them.
pub const CNI_PATH: &str = "/usr/lib/cni";

/// Like [`requirements_met`], for tests of the real CNI plugins: root, the plugins,
/// `iptables`, `ip`, `nsenter`, `unshare` and busybox (its `nc`).
pub fn network_requirements_met(what: &str) -> bool {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root".to_owned());
    }
    for plugin in ["bridge", "host-local", "portmap"] {
        if !Path::new(CNI_PATH).join(plugin).exists() {
            missing.push(format!(
                "{CNI_PATH}/{plugin} (apt-get install containernetworking-plugins)"
            ));
        }
    }
    for (tool, version, package) in [
        ("iptables", "--version", "iptables"),
        ("ip", "-V", "iproute2"),
        ("nsenter", "--version", "util-linux"),
        ("unshare", "--version", "util-linux"),
    ] {
        if Command::new(tool).arg(version).output().is_err() {
            missing.push(format!("{tool} (apt-get install {package})"));
        }
    }
    if !Path::new(BUSYBOX).exists() {
        missing.push(format!("{BUSYBOX} (apt-get install busybox-static)"));
    }
    verdict(what, missing)
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

/// Like [`network_requirements_met`], for tests of `envbox docker` end to end: also runc,
/// containerd (and its runc shim) and the registry tools.
pub fn launch_requirements_met(what: &str) -> bool {
    if !network_requirements_met(what) {
        return false;
    }
    let mut missing = Vec::new();
    for (tool, package) in [
        ("runc", "runc"),
        ("containerd", "containerd"),
        ("containerd-shim-runc-v2", "containerd"),
        ("docker-registry", "docker-registry"),
        ("skopeo", "skopeo"),
    ] {
        let found = std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).exists()))
            .unwrap_or(false);
        if !found {
            missing.push(format!("{tool} (apt-get install {package})"));
        }
    }
    verdict(what, missing)
}

/// Like [`requirements_met`], for tests that start the real containerd (and sysbox stand-ins
/// written in Python): root, `containerd` and `/usr/bin/python3`.
pub fn containerd_requirements_met(what: &str) -> bool {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root");
    }
    if Command::new("containerd")
        .arg("--version")
        .output()
        .is_err()
    {
        missing.push("containerd (apt-get install containerd)");
    }
    if !Path::new("/usr/bin/python3").exists() {
        missing.push("/usr/bin/python3 (apt-get install python3)");
    }
    verdict(what, missing.into_iter().map(str::to_owned).collect())
}
