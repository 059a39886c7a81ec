//! The security model, checked on every spec before anyone can use it.
//!
//! Owns: [`check`], which refuses a spec that would be privileged in any of the ways that
//! matter: no user namespace or another id mapping than 0 -> 100000 (65536) for uids and gids;
//! a missing namespace, or one joined by path; device access not denied first, or allowed
//! wholesale; masked or read-only `/proc` and `/sys` paths missing; a writable bind of the host's
//! `/proc` or `/sys`; no seccomp profile, one whose default action lets a syscall through (only
//! errno or kill defaults), or one that hands syscalls to a user-space agent (`listenerPath`,
//! `SCMP_ACT_NOTIFY`: sysbox-runc installs its own). `spec::build` calls it on its result and
//! tests call it on every golden spec. It never fixes a spec, only refuses it.

use std::path::Path;

use oci_spec::runtime::{LinuxDeviceType, LinuxSeccompAction, Spec};

use super::linux::{MASKED_PATHS, NAMESPACES, READONLY_PATHS};
use super::{ID_RANGE, ID_SHIFT};

/// What is wrong with a spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("the spec has no linux section")]
    NoLinuxSection,
    #[error("{which} mappings must be exactly [0 -> {ID_SHIFT}, size {ID_RANGE}]")]
    IdMapping { which: &'static str },
    #[error("namespace {0} is missing")]
    MissingNamespace(String),
    #[error("namespace {0} joins an existing one by path")]
    NamespacePath(String),
    #[error("device rules must start by denying all devices")]
    DevicesNotDeniedFirst,
    #[error("a device rule allows every device")]
    AllDevicesAllowed,
    #[error("masked path {0} is missing")]
    MissingMaskedPath(&'static str),
    #[error("read-only path {0} is missing")]
    MissingReadonlyPath(&'static str),
    #[error("the spec has no seccomp profile")]
    NoSeccomp,
    #[error("the seccomp profile's default action {0} does not deny")]
    SeccompDefaultAllows(String),
    #[error("the seccomp profile hands syscalls to a user-space agent")]
    SeccompNotify,
    #[error("mount at {destination} binds the host's {host_path} writable")]
    WritableKernelBind {
        host_path: String,
        destination: String,
    },
}

fn check_id_mappings(spec: &Spec) -> Result<(), Violation> {
    let linux = spec.linux().as_ref().ok_or(Violation::NoLinuxSection)?;
    let ok = |maps: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| matches!(maps.as_deref(), Some([m]) if m.container_id() == 0 && m.host_id() == ID_SHIFT && m.size() == ID_RANGE);
    if !ok(linux.uid_mappings()) {
        return Err(Violation::IdMapping { which: "uid" });
    }
    if !ok(linux.gid_mappings()) {
        return Err(Violation::IdMapping { which: "gid" });
    }
    Ok(())
}

fn check_namespaces(spec: &Spec) -> Result<(), Violation> {
    let linux = spec.linux().as_ref().ok_or(Violation::NoLinuxSection)?;
    let present = linux.namespaces().as_deref().unwrap_or_default();
    for ns in present {
        if ns.path().is_some() {
            return Err(Violation::NamespacePath(format!("{:?}", ns.typ())));
        }
    }
    for wanted in NAMESPACES {
        if !present.iter().any(|ns| ns.typ() == wanted) {
            return Err(Violation::MissingNamespace(format!("{wanted:?}")));
        }
    }
    Ok(())
}

fn check_devices(spec: &Spec) -> Result<(), Violation> {
    let linux = spec.linux().as_ref().ok_or(Violation::NoLinuxSection)?;
    let rules = linux
        .resources()
        .as_ref()
        .and_then(|r| r.devices().as_deref())
        .unwrap_or_default();
    let denies_all = |r: &oci_spec::runtime::LinuxDeviceCgroup| {
        !r.allow()
            && matches!(r.typ(), None | Some(LinuxDeviceType::A))
            && r.major().is_none()
            && r.minor().is_none()
            && r.access()
                .as_deref()
                .is_none_or(|a| a.contains('r') && a.contains('w') && a.contains('m'))
    };
    match rules.first() {
        Some(first) if denies_all(first) => {}
        _ => return Err(Violation::DevicesNotDeniedFirst),
    }
    let allows_everything = rules.iter().any(|r| {
        r.allow()
            && r.major().is_none()
            && r.access()
                .as_deref()
                .is_none_or(|a| a.contains('r') || a.contains('w'))
    });
    if allows_everything {
        return Err(Violation::AllDevicesAllowed);
    }
    Ok(())
}

fn check_paths(spec: &Spec) -> Result<(), Violation> {
    let linux = spec.linux().as_ref().ok_or(Violation::NoLinuxSection)?;
    let masked = linux.masked_paths().as_deref().unwrap_or_default();
    if let Some(missing) = MASKED_PATHS
        .iter()
        .find(|p| !masked.iter().any(|m| m == *p))
    {
        return Err(Violation::MissingMaskedPath(missing));
    }
    let readonly = linux.readonly_paths().as_deref().unwrap_or_default();
    if let Some(missing) = READONLY_PATHS
        .iter()
        .find(|p| !readonly.iter().any(|m| m == *p))
    {
        return Err(Violation::MissingReadonlyPath(missing));
    }
    Ok(())
}

fn check_kernel_binds(spec: &Spec) -> Result<(), Violation> {
    for mount in spec.mounts().as_deref().unwrap_or_default() {
        let options = mount.options().as_deref().unwrap_or_default();
        let is_bind = mount.typ().as_deref() == Some("bind")
            || options.iter().any(|o| o == "bind" || o == "rbind");
        let read_only = options.iter().any(|o| o == "ro");
        let source = mount.source().as_deref().unwrap_or(Path::new(""));
        let kernel = source.starts_with("/proc") || source.starts_with("/sys");
        if is_bind && kernel && !read_only {
            return Err(Violation::WritableKernelBind {
                host_path: source.display().to_string(),
                destination: mount.destination().display().to_string(),
            });
        }
    }
    Ok(())
}

fn check_seccomp(spec: &Spec) -> Result<(), Violation> {
    let linux = spec.linux().as_ref().ok_or(Violation::NoLinuxSection)?;
    let seccomp = linux.seccomp().as_ref().ok_or(Violation::NoSeccomp)?;
    use LinuxSeccompAction::*;
    match seccomp.default_action() {
        ScmpActErrno | ScmpActKill | ScmpActKillThread | ScmpActKillProcess => {}
        other => return Err(Violation::SeccompDefaultAllows(other.to_string())),
    }
    let notifies = seccomp
        .syscalls()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|s| s.action() == ScmpActNotify);
    if seccomp.listener_path().is_some() || notifies {
        return Err(Violation::SeccompNotify);
    }
    Ok(())
}

/// Refuses a spec that breaks the security model.
pub(crate) fn check(spec: &Spec) -> Result<(), Violation> {
    check_id_mappings(spec)?;
    check_namespaces(spec)?;
    check_devices(spec)?;
    check_paths(spec)?;
    check_kernel_binds(spec)?;
    check_seccomp(spec)
}
