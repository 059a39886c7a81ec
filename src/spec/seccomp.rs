//! The `linux.seccomp` section: Docker's default seccomp profile, as dockerd would hand it to
//! the runtime for this container, plus the few syscalls sysbox-runc adds to every profile.
//!
//! Owns: [`profile`], a pure function from the host architecture and the process's bounding
//! capabilities (all of them: `process.rs`) to the OCI [`LinuxSeccomp`], evaluated as moby's
//! `setupSeccomp` does (arch map, rules kept by their capability and arch includes/excludes;
//! the one kernel-version condition, 4.8 for `ptrace`, taken as met). `DOCKER_RULES` is
//! moby's `profiles/seccomp/default_linux.go` as of moby v26.0.0, written out as a table:
//! to move to a newer moby, compare it rule by rule. Default action: EPERM.
//!
//! Under sysbox-runc (its `libsysbox/syscont/spec.go` `cfgSeccomp`) the profile must list
//! x86_64, aarch64 or arm and default to errno, kill or allow; sysbox-runc then allows its own
//! syscall list, drops argument conditions, and installs its sysbox-fs traps (`mount`,
//! `umount2`, `reboot`, `swapon`/`swapoff`, optionally `chown` and the xattr calls) as a second
//! filter of its own. So the spec carries no listener or notify rule (an invariant), and
//! allows every trapped syscall but the swap calls, which sysbox-runc adds itself.
//! [`SYSBOX_ADDITIONS`] (`pivot_root`, `keyctl`, ...) are written here too, so that under plain
//! runc the workspace can do what it can under sysbox (an inner dockerd's runc needs them).
//! It never reads the host: the architecture comes in as an argument.

use std::collections::BTreeSet;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

use super::SpecError;

/// The errno of the default action and of every denied syscall.
pub(crate) const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Allow,
    Errno(u32),
}

/// A rule's `includes` or `excludes`: capability names and Docker (`GOARCH`-style) arch names.
#[derive(Debug, Clone, Copy)]
struct Filter {
    caps: &'static [&'static str],
    arches: &'static [&'static str],
}

const ANY: Filter = Filter {
    caps: &[],
    arches: &[],
};

const fn caps(caps: &'static [&'static str]) -> Filter {
    Filter { caps, arches: &[] }
}

const fn arches(arches: &'static [&'static str]) -> Filter {
    Filter { caps: &[], arches }
}

#[derive(Debug, Clone, Copy)]
struct Arg {
    index: usize,
    value: u64,
    op: LinuxSeccompOperator,
}

const fn arg(index: usize, value: u64, op: LinuxSeccompOperator) -> Arg {
    Arg { index, value, op }
}

#[derive(Debug, Clone, Copy)]
struct Rule {
    names: &'static [&'static str],
    action: Action,
    args: &'static [Arg],
    includes: Filter,
    excludes: Filter,
}

const fn allow(names: &'static [&'static str], includes: Filter) -> Rule {
    Rule {
        names,
        action: Action::Allow,
        args: &[],
        includes,
        excludes: ANY,
    }
}

const fn allow_args(names: &'static [&'static str], args: &'static [Arg]) -> Rule {
    Rule {
        names,
        action: Action::Allow,
        args,
        includes: ANY,
        excludes: ANY,
    }
}

/// `CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET |
/// CLONE_NEWCGROUP`: without CAP_SYS_ADMIN, `clone` may create no namespace.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;
/// `socket`'s domain that Docker refuses.
const AF_VSOCK: u64 = 40;

use LinuxSeccompOperator::{ScmpCmpEq as EQ, ScmpCmpMaskedEq as MASKED_EQ, ScmpCmpNe as NE};

/// Docker's default profile (moby v26.0.0), in its order.
const DOCKER_RULES: &[Rule] = &[
    allow(ALWAYS_ALLOWED, ANY),
    // `includes.minKernel: 4.8` in moby (taken as met).
    allow(&["process_vm_readv", "process_vm_writev", "ptrace"], ANY),
    allow_args(&["socket"], &[arg(0, AF_VSOCK, NE)]),
    allow_args(&["personality"], &[arg(0, 0x0, EQ)]),
    allow_args(&["personality"], &[arg(0, 0x0008, EQ)]),
    allow_args(&["personality"], &[arg(0, 0x20000, EQ)]),
    allow_args(&["personality"], &[arg(0, 0x20008, EQ)]),
    allow_args(&["personality"], &[arg(0, 0xffff_ffff, EQ)]),
    allow(&["sync_file_range2", "swapcontext"], arches(&["ppc64le"])),
    allow(
        &[
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "sync_file_range2",
            "breakpoint",
            "cacheflush",
            "set_tls",
        ],
        arches(&["arm", "arm64"]),
    ),
    allow(&["arch_prctl"], arches(&["amd64", "x32"])),
    allow(&["modify_ldt"], arches(&["amd64", "x32", "x86"])),
    allow(
        &[
            "s390_pci_mmio_read",
            "s390_pci_mmio_write",
            "s390_runtime_instr",
        ],
        arches(&["s390", "s390x"]),
    ),
    allow(&["riscv_flush_icache"], arches(&["riscv64"])),
    allow(&["open_by_handle_at"], caps(&["CAP_DAC_READ_SEARCH"])),
    allow(
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
        caps(&["CAP_SYS_ADMIN"]),
    ),
    Rule {
        names: &["clone"],
        action: Action::Allow,
        args: &[arg(0, CLONE_NAMESPACE_FLAGS, MASKED_EQ)],
        includes: ANY,
        excludes: Filter {
            caps: &["CAP_SYS_ADMIN"],
            arches: &["s390", "s390x"],
        },
    },
    // s390's clone takes the flags second.
    Rule {
        names: &["clone"],
        action: Action::Allow,
        args: &[arg(1, CLONE_NAMESPACE_FLAGS, MASKED_EQ)],
        includes: arches(&["s390", "s390x"]),
        excludes: caps(&["CAP_SYS_ADMIN"]),
    },
    // Without CAP_SYS_ADMIN, clone3 (whose flags seccomp cannot see) fails as if absent, and
    // libc falls back to clone.
    Rule {
        names: &["clone3"],
        action: Action::Errno(ENOSYS),
        args: &[],
        includes: ANY,
        excludes: caps(&["CAP_SYS_ADMIN"]),
    },
    allow(&["reboot"], caps(&["CAP_SYS_BOOT"])),
    allow(&["chroot"], caps(&["CAP_SYS_CHROOT"])),
    allow(
        &["delete_module", "init_module", "finit_module"],
        caps(&["CAP_SYS_MODULE"]),
    ),
    allow(&["acct"], caps(&["CAP_SYS_PACCT"])),
    allow(
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
        caps(&["CAP_SYS_PTRACE"]),
    ),
    allow(&["iopl", "ioperm"], caps(&["CAP_SYS_RAWIO"])),
    allow(
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
        caps(&["CAP_SYS_TIME"]),
    ),
    allow(&["vhangup"], caps(&["CAP_SYS_TTY_CONFIG"])),
    allow(
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
        caps(&["CAP_SYS_NICE"]),
    ),
    allow(&["syslog"], caps(&["CAP_SYSLOG"])),
    allow(&["bpf"], caps(&["CAP_BPF"])),
    allow(&["perf_event_open"], caps(&["CAP_PERFMON"])),
];

/// The first rule of Docker's profile: allowed whatever the capabilities.
const ALWAYS_ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// Syscalls sysbox-runc allows in every system container whatever the profile says (its
/// `syscontSyscallWhitelist` beyond Docker's list; sysbox user guide, security.md "System
/// Calls"), that envbox writes into the profile so plain runc allows them too. Those the
/// profile already allows without argument conditions are not repeated.
pub(crate) const SYSBOX_ADDITIONS: &[&str] = &[
    "mount",
    "umount",
    "umount2",
    "add_key",
    "request_key",
    "keyctl",
    "pivot_root",
    "sethostname",
    "setns",
    "unshare",
    "clone",
    "chroot",
];

/// A host architecture (Rust's `std::env::consts::ARCH` names) as Docker knows it: the
/// `GOARCH`-style name its rules' `arches` use, and the seccomp architectures of its arch map.
fn docker_arch(arch: &str) -> (&str, Vec<Arch>) {
    match arch {
        "x86_64" => (
            "amd64",
            vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32],
        ),
        "aarch64" => ("arm64", vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]),
        "s390x" => ("s390x", vec![Arch::ScmpArchS390x, Arch::ScmpArchS390]),
        "riscv64" => ("riscv64", vec![Arch::ScmpArchRiscv64]),
        // Not in Docker's arch map: no `architectures`, libseccomp takes the native one.
        "x86" => ("x86", Vec::new()),
        other => (other, Vec::new()),
    }
}

fn applies(rule: &Rule, arch: &str, caps: &BTreeSet<&str>) -> bool {
    let Rule {
        includes, excludes, ..
    } = rule;
    !excludes.arches.contains(&arch)
        && !excludes.caps.iter().any(|c| caps.contains(c))
        && (includes.arches.is_empty() || includes.arches.contains(&arch))
        && includes.caps.iter().all(|c| caps.contains(c))
}

fn syscall(names: Vec<String>, action: Action, args: &[Arg]) -> Result<LinuxSyscall, SpecError> {
    let mut builder = LinuxSyscallBuilder::default().names(names);
    builder = match action {
        Action::Allow => builder.action(LinuxSeccompAction::ScmpActAllow),
        Action::Errno(errno) => builder
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(errno),
    };
    if !args.is_empty() {
        let args = args
            .iter()
            .map(|a| {
                LinuxSeccompArgBuilder::default()
                    .index(a.index)
                    .value(a.value)
                    .op(a.op)
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        builder = builder.args(args);
    }
    Ok(builder.build()?)
}

/// The seccomp profile for a process with these bounding capabilities (`CAP_*` names) on
/// this host architecture (`std::env::consts::ARCH` names). Pure.
pub(crate) fn profile<'a>(
    arch: &str,
    bounding_caps: impl IntoIterator<Item = &'a str>,
) -> Result<LinuxSeccomp, SpecError> {
    let caps: BTreeSet<&str> = bounding_caps.into_iter().collect();
    let (docker_arch, architectures) = docker_arch(arch);
    let mut syscalls = Vec::new();
    let mut allowed = BTreeSet::new();
    for rule in DOCKER_RULES {
        if !applies(rule, docker_arch, &caps) {
            continue;
        }
        if rule.action == Action::Allow && rule.args.is_empty() {
            allowed.extend(rule.names.iter().copied());
        }
        let names = rule.names.iter().map(|n| n.to_string()).collect();
        syscalls.push(syscall(names, rule.action, rule.args)?);
    }
    let added: Vec<String> = SYSBOX_ADDITIONS
        .iter()
        .filter(|name| !allowed.contains(*name))
        .map(|name| name.to_string())
        .collect();
    if !added.is_empty() {
        syscalls.push(syscall(added, Action::Allow, &[])?);
    }
    let mut builder = LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(EPERM)
        .syscalls(syscalls);
    if !architectures.is_empty() {
        builder = builder.architectures(architectures);
    }
    Ok(builder.build()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::process::ALL_CAPABILITIES;

    /// Docker's default capabilities (what the Go envbox's `docker run` got).
    const DOCKER_DEFAULT_CAPS: [&str; 14] = [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE",
    ];

    /// How the kernel would answer a syscall with no argument conditions involved: `Some(errno)`
    /// of the first matching rule (rules with arguments are treated as not matching), or the
    /// default action's errno.
    fn verdict(profile: &LinuxSeccomp, name: &str) -> Option<u32> {
        for rule in profile.syscalls().as_deref().unwrap_or_default() {
            if rule.args().as_ref().is_some_and(|a| !a.is_empty()) {
                continue;
            }
            if rule.names().iter().any(|n| n == name) {
                return match rule.action() {
                    LinuxSeccompAction::ScmpActAllow => None,
                    LinuxSeccompAction::ScmpActErrno => Some(rule.errno_ret().unwrap_or(EPERM)),
                    other => panic!("unexpected action {other:?}"),
                };
            }
        }
        Some(profile.default_errno_ret().unwrap_or(EPERM))
    }

    fn all_caps(arch: &str) -> LinuxSeccomp {
        profile(arch, ALL_CAPABILITIES.iter().copied()).unwrap()
    }

    #[test]
    fn the_default_denies_with_eperm() {
        let p = all_caps("x86_64");
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(EPERM));
        assert_eq!(p.listener_path(), &None);
        for name in [
            "kexec_load",
            "kexec_file_load",
            "userfaultfd",
            "swapon",
            "nfsservctl",
            "move_pages",
        ] {
            assert_eq!(verdict(&p, name), Some(EPERM), "{name}");
        }
    }

    #[test]
    fn every_capability_allows_the_capability_gated_syscalls() {
        let p = all_caps("x86_64");
        for name in [
            "mount",
            "umount2",
            "unshare",
            "setns",
            "clone",
            "clone3",
            "fsopen",
            "move_mount",
            "sethostname",
            "chroot",
            "reboot",
            "ptrace",
            "bpf",
            "open_by_handle_at",
            "read",
            "openat2",
            "futex_wait",
        ] {
            assert_eq!(verdict(&p, name), None, "{name}");
        }
        // Unconditional clone makes the namespace-flag rules and clone3's ENOSYS go.
        let rules = p.syscalls().as_ref().unwrap();
        assert!(!rules.iter().any(|r| r.errno_ret() == Some(ENOSYS)));
        assert!(!rules
            .iter()
            .any(|r| r.names() == &["clone"] && r.args().is_some()));
    }

    #[test]
    fn sysbox_additions_are_allowed_whatever_the_capabilities() {
        for caps in [&ALL_CAPABILITIES[..], &DOCKER_DEFAULT_CAPS[..], &[]] {
            let p = profile("x86_64", caps.iter().copied()).unwrap();
            for name in SYSBOX_ADDITIONS {
                assert_eq!(verdict(&p, name), None, "{name} with {caps:?}");
            }
        }
        // With every capability, only the ones Docker never allows are added.
        let last = all_caps("x86_64")
            .syscalls()
            .as_ref()
            .unwrap()
            .last()
            .cloned();
        assert_eq!(
            last.unwrap().names(),
            &["add_key", "request_key", "keyctl", "pivot_root"]
        );
    }

    #[test]
    fn without_cap_sys_admin_clone_keeps_dockers_namespace_mask() {
        let p = profile("x86_64", DOCKER_DEFAULT_CAPS.iter().copied()).unwrap();
        let rules = p.syscalls().as_ref().unwrap();
        let masked = rules
            .iter()
            .find(|r| r.names() == &["clone"] && r.args().is_some())
            .expect("masked clone rule");
        let arg = masked.args().as_ref().unwrap()[0];
        assert_eq!((arg.index(), arg.value()), (0, 0x7E02_0000));
        assert_eq!(arg.op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
        assert_eq!(verdict(&p, "clone3"), Some(ENOSYS));
        for name in ["bpf", "fsopen", "reboot", "kcmp", "open_by_handle_at"] {
            assert_eq!(verdict(&p, name), Some(EPERM), "{name}");
        }
        // chroot comes with CAP_SYS_CHROOT, one of Docker's defaults.
        assert_eq!(verdict(&p, "chroot"), None);
    }

    #[test]
    fn architectures_follow_dockers_arch_map() {
        let x86 = all_caps("x86_64");
        assert_eq!(
            x86.architectures().as_deref(),
            Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32][..])
        );
        assert_eq!(verdict(&x86, "arch_prctl"), None);
        assert_eq!(verdict(&x86, "modify_ldt"), None);
        assert_eq!(verdict(&x86, "set_tls"), Some(EPERM));

        let arm = all_caps("aarch64");
        assert_eq!(
            arm.architectures().as_deref(),
            Some(&[Arch::ScmpArchAarch64, Arch::ScmpArchArm][..])
        );
        assert_eq!(verdict(&arm, "set_tls"), None);
        assert_eq!(verdict(&arm, "arch_prctl"), Some(EPERM));

        // s390 takes clone's flags second.
        let s390 = profile("s390x", DOCKER_DEFAULT_CAPS.iter().copied()).unwrap();
        let clone = s390
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .find(|r| r.names() == &["clone"] && r.args().is_some())
            .cloned()
            .unwrap();
        assert_eq!(clone.args().as_ref().unwrap()[0].index(), 1);

        // An architecture outside the map: libseccomp's native one, rules still filtered.
        let other = all_caps("loongarch64");
        assert_eq!(other.architectures(), &None);
        assert_eq!(verdict(&other, "arch_prctl"), Some(EPERM));
    }

    #[test]
    fn docker_argument_conditions_are_kept() {
        let p = all_caps("x86_64");
        let rules = p.syscalls().as_ref().unwrap();
        let socket = rules.iter().find(|r| r.names() == &["socket"]).unwrap();
        let arg = socket.args().as_ref().unwrap()[0];
        assert_eq!(
            (arg.index(), arg.value(), arg.op()),
            (0, 40, LinuxSeccompOperator::ScmpCmpNe)
        );
        let personalities: Vec<u64> = rules
            .iter()
            .filter(|r| r.names() == &["personality"])
            .map(|r| r.args().as_ref().unwrap()[0].value())
            .collect();
        assert_eq!(personalities, [0, 8, 0x20000, 0x20008, 0xffff_ffff]);
    }

    #[test]
    fn no_syscall_name_is_listed_twice_in_one_rule() {
        for rule in DOCKER_RULES {
            let set: BTreeSet<_> = rule.names.iter().collect();
            assert_eq!(set.len(), rule.names.len(), "{:?}", rule.names);
        }
        // Docker's first rule has 355 names in v26.0.0: 349 before moby#47341, which added six.
        assert_eq!(ALWAYS_ALLOWED.len(), 355);
    }
}
