//! The edges of the network stage: running a program ([`NetSys`]) and reading a link's MTU.
//!
//! Owns: process execution with an exact environment and stdin (the CNI plugins, iptables), the
//! identity (device and inode) of a network namespace file, and `/sys/class/net/<link>/mtu`.
//! Each primitive does one thing and never decides what to run or how to read its output:
//! that is the invoker's job.

use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use super::LinkMtu;

/// One program run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The whole environment: nothing is inherited.
    pub env: Vec<(String, String)>,
    pub stdin: Vec<u8>,
}

#[cfg(test)]
impl Invocation {
    /// The value of one environment variable.
    pub(crate) fn env_var(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub success: bool,
    /// The exit status as words (`exit status: 1`, `signal: 9`).
    pub status: String,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Which network namespace a path names (its nsfs device and inode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsId {
    pub dev: u64,
    pub ino: u64,
}

/// The side effects of the network stage.
pub trait NetSys {
    /// Runs a program to completion with exactly `env`, feeding it `stdin`.
    fn run(&self, invocation: &Invocation) -> io::Result<Outcome>;
    /// The namespace `path` names now; `None` when it no longer exists.
    fn netns_id(&self, path: &Path) -> Option<NetnsId>;
}

/// Real processes and real `stat`.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealNetSys;

impl NetSys for RealNetSys {
    fn run(&self, invocation: &Invocation) -> io::Result<Outcome> {
        let mut child = Command::new(&invocation.program)
            .args(&invocation.args)
            .env_clear()
            .envs(invocation.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        // Plugins read all of stdin before writing anything, and configs are a few KiB.
        if let Some(mut stdin) = child.stdin.take() {
            match stdin.write_all(&invocation.stdin) {
                Err(e) if e.kind() != io::ErrorKind::BrokenPipe => return Err(e),
                _ => {}
            }
        }
        let output = child.wait_with_output()?;
        Ok(Outcome {
            success: output.status.success(),
            status: output.status.to_string(),
            stdout: output.stdout,
            stderr: output.stderr,
        })
    }

    fn netns_id(&self, path: &Path) -> Option<NetnsId> {
        let meta = std::fs::metadata(path).ok()?;
        Some(NetnsId {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

/// Reads the MTU of `link` under `sys_class_net` (normally `/sys/class/net`).
pub(crate) fn read_link_mtu_in(sys_class_net: &Path, link: &str) -> LinkMtu {
    let unavailable = |reason: String| LinkMtu::Unavailable {
        link: link.to_owned(),
        reason,
    };
    if link.is_empty() || link.contains('/') || link == "." || link == ".." {
        return unavailable("not an interface name".into());
    }
    let path = sys_class_net.join(link).join("mtu");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return unavailable("no such link".into());
        }
        Err(e) => return unavailable(format!("reading {}: {e}", path.display())),
    };
    match text.trim().parse::<u32>() {
        Ok(mtu) if mtu >= 68 => LinkMtu::Read {
            link: link.to_owned(),
            mtu,
        },
        _ => unavailable(format!(
            "{} holds {:?}, not an MTU (68 or more)",
            path.display(),
            text.trim()
        )),
    }
}

/// Reads the MTU of `link` from `/sys/class/net`.
pub(crate) fn read_link_mtu(link: &str) -> LinkMtu {
    read_link_mtu_in(Path::new("/sys/class/net"), link)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_mtu_is_read_or_explained() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("eth0")).unwrap();
        std::fs::write(dir.path().join("eth0/mtu"), "1450\n").unwrap();
        std::fs::create_dir_all(dir.path().join("odd")).unwrap();
        std::fs::write(dir.path().join("odd/mtu"), "lots\n").unwrap();
        assert_eq!(
            read_link_mtu_in(dir.path(), "eth0"),
            LinkMtu::Read {
                link: "eth0".into(),
                mtu: 1450
            }
        );
        let reason = |link| match read_link_mtu_in(dir.path(), link) {
            LinkMtu::Unavailable { reason, .. } => reason,
            other => panic!("{other:?}"),
        };
        assert_eq!(reason("eth9"), "no such link");
        assert!(reason("odd").contains("\"lots\""), "{}", reason("odd"));
        assert_eq!(reason("../etc"), "not an interface name");
    }

    #[test]
    fn the_real_loopback_mtu_is_read() {
        // Every Linux network namespace has lo.
        assert!(matches!(read_link_mtu("lo"), LinkMtu::Read { mtu, .. } if mtu >= 68));
    }

    #[test]
    fn run_passes_exactly_the_given_environment_and_stdin() {
        let out = RealNetSys
            .run(&Invocation {
                program: "/bin/sh".into(),
                args: vec!["-c".into(), "cat; echo \"[$CNI_COMMAND][$HOME]\"".into()],
                env: vec![("CNI_COMMAND".into(), "ADD".into())],
                stdin: b"in:".to_vec(),
            })
            .unwrap();
        assert!(out.success);
        assert_eq!(String::from_utf8_lossy(&out.stdout), "in:[ADD][]\n");
    }
}
