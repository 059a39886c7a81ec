//! The bootstrap script's process: what runs the Coder agent inside the workspace.
//!
//! Owns: turning the container's init process, the inner user and the script into the exec'd
//! process (`/bin/sh -s` as the user's uid/gid with their supplementary groups, in their home,
//! the init's environment with the user's login variables (`HOME`, `USER`, `LOGNAME`, `SHELL`)
//! and `BINARY_DIR=<home>/.coder`, no raised capabilities unless the user is root, no
//! `noNewPrivileges` so setuid programs such as `sudo` work), and parsing stop signals.
//! Pure: it never execs anything (that is `runtime`) and never logs the script (it may carry
//! secrets).

use std::collections::HashSet;
use std::path::Path;

use oci_spec::runtime::{LinuxCapabilitiesBuilder, Process, ProcessBuilder, UserBuilder};

use crate::rootfs::PasswdEntry;

/// The exec ID of the bootstrap process.
pub const EXEC_ID: &str = "bootstrap";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("the container's runtime spec has no process to derive the bootstrap process from")]
    NoInitProcess,
    #[error("building the bootstrap process: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
    #[error("unknown signal {0:?}: expected a name like SIGTERM or SIGRTMIN+3, or a number")]
    UnknownSignal(String),
}

/// Where the agent binary goes: `<home>/.coder`.
pub fn binary_dir(user: &PasswdEntry) -> String {
    Path::new(&user.home).join(".coder").display().to_string()
}

/// The bootstrap process: `/bin/sh -s` reading the script on stdin, as `user` with the
/// supplementary groups `gids` (see [`crate::spec::user_gids`]), in their home.
///
/// The environment is the init's with the user's login variables, as `su -` sets them:
/// `HOME`, `USER` and `LOGNAME` from the passwd entry, `SHELL` its shell (`/bin/sh` when
/// empty), and `BINARY_DIR`.
///
/// `<home>/.coder` is created first, as the user, by the same exec (`mkdir -p` then `exec
/// /bin/sh -s`): one process start instead of two, and the shell then reads the script exactly
/// as `/bin/sh -s` does. When the directory is there already (every start after the first on
/// a persistent home), `mkdir` is not run at all.
pub fn process(
    init: &Process,
    user: &PasswdEntry,
    gids: &[u32],
) -> Result<Process, BootstrapError> {
    let home = user.home.display().to_string();
    let shell = if user.shell.is_empty() {
        "/bin/sh"
    } else {
        &user.shell
    };
    let mut env: Vec<String> = init
        .env()
        .iter()
        .flatten()
        .filter(|var| {
            let name = var.split('=').next().unwrap_or_default();
            !matches!(name, "HOME" | "USER" | "LOGNAME" | "SHELL" | "BINARY_DIR")
        })
        .cloned()
        .collect();
    env.push(format!("HOME={home}"));
    env.push(format!("USER={}", user.name));
    env.push(format!("LOGNAME={}", user.name));
    env.push(format!("SHELL={shell}"));
    env.push(format!("BINARY_DIR={}", binary_dir(user)));

    let bounding = init
        .capabilities()
        .as_ref()
        .and_then(|c| c.bounding().clone())
        .unwrap_or_default();
    let capabilities = if user.uid == 0 {
        init.capabilities().clone()
    } else {
        // A non-root user gets what `docker exec -u` gives: nothing raised, the bounding set
        // kept so setuid programs (sudo) still work: exec'ing a setuid-root file in the user
        // namespace gives its root the bounding set as permitted and effective.
        Some(
            LinuxCapabilitiesBuilder::default()
                .bounding(bounding)
                .effective(HashSet::new())
                .permitted(HashSet::new())
                .inheritable(HashSet::new())
                .ambient(HashSet::new())
                .build()?,
        )
    };
    let mut builder = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(user.uid)
                .gid(user.gid)
                .additional_gids(gids.to_vec())
                .build()?,
        )
        .args(vec![
            "/bin/sh".to_owned(),
            "-c".to_owned(),
            r#"{ [ -d "$BINARY_DIR" ] || mkdir -p "$BINARY_DIR"; } && cd "$HOME" && exec /bin/sh -s"#
                .to_owned(),
        ])
        .env(env)
        .cwd("/")
        .no_new_privileges(false);
    if let Some(capabilities) = capabilities {
        builder = builder.capabilities(capabilities);
    }
    if let Some(rlimits) = init.rlimits() {
        builder = builder.rlimits(rlimits.clone());
    }
    Ok(builder.build()?)
}

/// A signal number from its name (`SIGTERM`, `TERM`, `SIGRTMIN+3`) or number.
pub fn parse_signal(text: &str) -> Result<i32, BootstrapError> {
    let unknown = || BootstrapError::UnknownSignal(text.to_owned());
    if let Ok(number) = text.parse::<i32>() {
        return (1..=libc::SIGRTMAX())
            .contains(&number)
            .then_some(number)
            .ok_or_else(unknown);
    }
    let name = text.strip_prefix("SIG").unwrap_or(text);
    if let Some(offset) = name.strip_prefix("RTMIN") {
        let offset: i32 = match offset {
            "" => 0,
            _ => offset
                .strip_prefix('+')
                .and_then(|n| n.parse().ok())
                .ok_or_else(unknown)?,
        };
        let number = libc::SIGRTMIN() + offset;
        return (number <= libc::SIGRTMAX())
            .then_some(number)
            .ok_or_else(unknown);
    }
    let signal: nix::sys::signal::Signal = format!("SIG{name}").parse().map_err(|_| unknown())?;
    Ok(signal as i32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::Capability;
    use std::path::PathBuf;

    fn init() -> Process {
        let caps: HashSet<Capability> = [Capability::SysAdmin, Capability::NetAdmin].into();
        ProcessBuilder::default()
            .args(vec!["sleep".to_owned(), "infinity".to_owned()])
            .env(vec![
                "PATH=/usr/bin:/bin".to_owned(),
                "HOME=/root".to_owned(),
                "CODER_AGENT_TOKEN=secret".to_owned(),
            ])
            .capabilities(
                LinuxCapabilitiesBuilder::default()
                    .bounding(caps.clone())
                    .effective(caps.clone())
                    .permitted(caps)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    }

    fn user(uid: u32) -> PasswdEntry {
        PasswdEntry {
            name: "coder".into(),
            uid,
            gid: uid,
            home: PathBuf::from("/home/coder"),
            shell: "/bin/bash".into(),
        }
    }

    #[test]
    fn runs_sh_reading_stdin_as_the_user_with_the_init_env_and_binary_dir() {
        let p = process(&init(), &user(1000), &[1000]).unwrap();
        assert_eq!(p.user().uid(), 1000);
        assert_eq!(p.user().gid(), 1000);
        let args = p.args().clone().unwrap();
        assert_eq!(args[0], "/bin/sh");
        assert!(args[2].ends_with("exec /bin/sh -s"), "{args:?}");
        let env = p.env().clone().unwrap();
        assert!(env.contains(&"CODER_AGENT_TOKEN=secret".to_owned()));
        assert!(env.contains(&"PATH=/usr/bin:/bin".to_owned()));
        assert!(env.contains(&"HOME=/home/coder".to_owned()));
        assert!(env.contains(&"BINARY_DIR=/home/coder/.coder".to_owned()));
        assert!(
            !env.contains(&"HOME=/root".to_owned()),
            "HOME is the user's"
        );
    }

    #[test]
    fn the_user_gets_their_groups_and_login_variables_replacing_the_inits() {
        let mut init = init();
        let mut env = init.env().clone().unwrap();
        env.extend(["USER=root", "LOGNAME=root", "SHELL=/bin/false"].map(String::from));
        init.set_env(Some(env));
        let p = process(&init, &user(1000), &[1000, 27, 102]).unwrap();
        assert_eq!(p.user().additional_gids().clone().unwrap(), [1000, 27, 102]);
        let env = p.env().clone().unwrap();
        for var in [
            "HOME=/home/coder",
            "USER=coder",
            "LOGNAME=coder",
            "SHELL=/bin/bash",
            "CODER_AGENT_TOKEN=secret",
        ] {
            assert_eq!(
                env.iter().filter(|v| *v == var).count(),
                1,
                "{var} once in {env:?}"
            );
        }
        for name in ["HOME=", "USER=", "LOGNAME=", "SHELL="] {
            assert_eq!(
                env.iter().filter(|v| v.starts_with(name)).count(),
                1,
                "{name} in {env:?}"
            );
        }
        assert_eq!(p.no_new_privileges(), Some(false), "sudo is setuid");

        let mut no_shell = user(1000);
        no_shell.shell = String::new();
        let p = process(&init, &no_shell, &[1000]).unwrap();
        assert!(p
            .env()
            .clone()
            .unwrap()
            .contains(&"SHELL=/bin/sh".to_owned()));
    }

    #[test]
    fn a_non_root_user_gets_no_raised_capabilities_but_keeps_the_bounding_set() {
        let p = process(&init(), &user(1000), &[1000]).unwrap();
        let caps = p.capabilities().clone().unwrap();
        assert!(caps.effective().clone().unwrap().is_empty());
        assert!(caps.permitted().clone().unwrap().is_empty());
        assert_eq!(caps.bounding().clone().unwrap().len(), 2);
        let root = process(&init(), &user(0), &[0]).unwrap();
        assert_eq!(
            root.capabilities()
                .clone()
                .unwrap()
                .effective()
                .clone()
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn signals_parse_by_name_number_and_realtime_offset() {
        assert_eq!(parse_signal("SIGTERM").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("TERM").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("SIGQUIT").unwrap(), libc::SIGQUIT);
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert_eq!(parse_signal("SIGRTMIN+3").unwrap(), libc::SIGRTMIN() + 3);
        assert_eq!(parse_signal("RTMIN").unwrap(), libc::SIGRTMIN());
        for bad in ["SIGNOPE", "0", "SIGRTMIN+99", "SIGRTMIN+x", ""] {
            assert!(parse_signal(bad).is_err(), "{bad}");
        }
    }
}
