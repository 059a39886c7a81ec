//! The `linux` section: namespaces, id mappings, cgroup resources, masked paths, seccomp.
//!
//! Owns: the isolation the security model rests on. Always a user namespace mapping container
//! ids 0..65536 to host ids 100000..165536 (what sysbox-runc expects and needs no shifting for),
//! always fresh pid, ipc, uts, mount, network, user and cgroup namespaces (never joined by
//! path), device access denied by default with explicit allow rules, Docker's masked and
//! read-only `/proc` and `/sys` paths, the seccomp profile of [`super::seccomp`]. It must never
//! add a namespace path or an allow-all device rule.

use oci_spec::runtime::{
    Linux, LinuxBuilder, LinuxCpuBuilder, LinuxDeviceCgroup, LinuxDeviceCgroupBuilder,
    LinuxDeviceType, LinuxIdMappingBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder,
    LinuxNamespaceType, LinuxResourcesBuilder, LinuxSeccomp,
};

use super::devices::DevicePlan;
use super::{SpecError, ID_RANGE, ID_SHIFT};
use crate::config::Settings;

/// CFS period: quota = CPUs x period.
pub(crate) const CPU_PERIOD_US: u64 = 100_000;

pub(crate) const NAMESPACES: [LinuxNamespaceType; 7] = [
    LinuxNamespaceType::Pid,
    LinuxNamespaceType::Ipc,
    LinuxNamespaceType::Uts,
    LinuxNamespaceType::Mount,
    LinuxNamespaceType::Network,
    LinuxNamespaceType::User,
    LinuxNamespaceType::Cgroup,
];

pub(crate) const MASKED_PATHS: [&str; 13] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/sys/kernel/security",
];

pub(crate) const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

fn rule(
    allow: bool,
    typ: LinuxDeviceType,
    major: Option<i64>,
    minor: Option<i64>,
) -> Result<LinuxDeviceCgroup, SpecError> {
    let mut builder = LinuxDeviceCgroupBuilder::default()
        .allow(allow)
        .typ(typ)
        .access(if allow && major.is_none() { "m" } else { "rwm" });
    if let Some(major) = major {
        builder = builder.major(major);
    }
    if let Some(minor) = minor {
        builder = builder.minor(minor);
    }
    Ok(builder.build()?)
}

/// Deny all, then the devices every container has (runc's defaults), then ours.
fn device_rules(devices: &DevicePlan) -> Result<Vec<LinuxDeviceCgroup>, SpecError> {
    use LinuxDeviceType::{B, C};
    let mut rules = vec![
        rule(false, LinuxDeviceType::A, None, None)?,
        rule(true, C, None, None)?,
        rule(true, B, None, None)?,
    ];
    const DEFAULTS: [(i64, Option<i64>); 9] = [
        (1, Some(3)), // null
        (1, Some(5)), // zero
        (1, Some(7)), // full
        (1, Some(8)), // random
        (1, Some(9)), // urandom
        (5, Some(0)), // tty
        (5, Some(1)), // console
        (5, Some(2)), // ptmx
        (136, None),  // pts/*
    ];
    for (major, minor) in DEFAULTS {
        rules.push(rule(true, C, Some(major), minor)?);
    }
    for device in &devices.binds {
        let (major, minor) = (device.major as i64, device.minor as i64);
        rules.push(rule(true, C, Some(major), Some(minor))?);
    }
    Ok(rules)
}

pub(crate) fn build(
    settings: &Settings,
    devices: &DevicePlan,
    seccomp: LinuxSeccomp,
) -> Result<Linux, SpecError> {
    let mapping = LinuxIdMappingBuilder::default()
        .container_id(0u32)
        .host_id(ID_SHIFT)
        .size(ID_RANGE)
        .build()?;
    let namespaces = NAMESPACES
        .iter()
        .map(|typ| LinuxNamespaceBuilder::default().typ(*typ).build())
        .collect::<Result<Vec<_>, _>>()?;
    let mut resources = LinuxResourcesBuilder::default().devices(device_rules(devices)?);
    if let Some(milli) = settings.cpus_milli {
        let quota = milli * CPU_PERIOD_US / 1000;
        resources = resources.cpu(
            LinuxCpuBuilder::default()
                .quota(quota as i64)
                .period(CPU_PERIOD_US)
                .build()?,
        );
    }
    if let Some(bytes) = settings.memory_bytes {
        resources = resources.memory(LinuxMemoryBuilder::default().limit(bytes as i64).build()?);
    }
    Ok(LinuxBuilder::default()
        .uid_mappings(vec![mapping])
        .gid_mappings(vec![mapping])
        .namespaces(namespaces)
        .resources(resources.build()?)
        .masked_paths(
            MASKED_PATHS
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>(),
        )
        .readonly_paths(
            READONLY_PATHS
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>(),
        )
        .seccomp(seccomp)
        .build()?)
}
