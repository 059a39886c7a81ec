//! Integration test (root): a spec from `envbox spec`, its setup actions applied, run with the
//! real `runc` on a busybox rootfs shifted to 100000.
//!
//! Needs root, `runc` and Debian's `busybox-static` (and `cc` with a static libc, as any Rust
//! build on Debian has, for the syscall probe). Without them it fails when `CI` is set (CI must
//! run it) and says it skipped otherwise.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use envbox::config::{Purpose, RawSettings, Settings};
use envbox::image::ImageConfig;
use envbox::plan;
use envbox::setup::{self, RealSys};
use envbox::spec::render::{self, Secrets};

mod support;

use support::host::{requirements_met, RuncContainer, BUSYBOX};

const ENVBOX: &str = env!("CARGO_BIN_EXE_envbox");
const APPLETS: &[&str] = &[
    "sh", "sleep", "cat", "echo", "id", "hostname", "ls", "touch", "env", "test", "grep", "mkdir",
    "true", "false", "stat", "head", "tr", "mount", "umount", "unshare",
];

/// A static program that makes one syscall and prints `ok` or `errno=N`: busybox has no applet
/// for the syscalls Docker's profile denies.
const PROBE_C: &str = r#"
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(int argc, char **argv) {
    long r;
    if (argc != 2) return 2;
    if (!strcmp(argv[1], "getpid")) r = syscall(SYS_getpid);
    else if (!strcmp(argv[1], "kexec_load")) r = syscall(SYS_kexec_load, 0, 0, 0, 0);
    /* UFFD_USER_MODE_ONLY: allowed without privilege since Linux 5.11. */
    else if (!strcmp(argv[1], "userfaultfd")) r = syscall(SYS_userfaultfd, 1);
    else return 2;
    if (r < 0) { printf("errno=%d\n", errno); return 1; }
    printf("ok\n");
    return 0;
}
"#;

/// Builds [`PROBE_C`] into `dest` with `cc -static`.
fn build_probe(dest: &Path) {
    let source = dest.with_extension("c");
    fs::write(&source, PROBE_C).unwrap();
    let out = run(Command::new("cc")
        .args(["-static", "-O1", "-o"])
        .arg(dest)
        .arg(&source));
    assert!(
        out.status.success(),
        "cc -static (the syscall probe): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::remove_file(source).unwrap();
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        path,
        Some(uid.into()),
        Some(gid.into()),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .unwrap();
    if path.is_dir() && !path.is_symlink() {
        for entry in fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path(), uid, gid);
        }
    }
}

/// A busybox root filesystem with a `coder` user (uid 1000), shifted by 100000.
fn busybox_rootfs(root: &Path) {
    for dir in [
        "bin",
        "etc",
        "dev",
        "proc",
        "sys",
        "tmp",
        "root",
        "home/coder",
        "mnt",
    ] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
    for applet in APPLETS {
        symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\ncoder:x:1000:1000:Coder:/home/coder:/bin/sh\n",
    )
    .unwrap();
    fs::write(root.join("etc/group"), "root:x:0:\ncoder:x:1000:\n").unwrap();
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    chown_tree(root, 100_000, 100_000);
    chown_tree(&root.join("home/coder"), 101_000, 101_000);
}

#[test]
fn spec_runs_with_runc_as_an_unprivileged_user_namespaced_container() {
    if !requirements_met("runc integration test", true) {
        return;
    }
    let work = tempfile::Builder::new()
        .prefix("envbox-runc-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let rootfs = work.path().join("rootfs");
    busybox_rootfs(&rootfs);
    build_probe(&rootfs.join("bin/syscall-probe"));
    let rw = work.path().join("rw");
    let ro = work.path().join("ro");
    fs::create_dir_all(&rw).unwrap();
    fs::create_dir_all(&ro).unwrap();
    fs::write(ro.join("seen"), "from the outside\n").unwrap();
    let run_dir = work.path().join("run");
    let mounts = format!("{}:/mnt/rw,{}:/mnt/ro:ro", rw.display(), ro.display());

    let args = [
        "--rootfs",
        rootfs.to_str().unwrap(),
        "--username",
        "coder",
        "--hostname",
        "envbox-test",
        "--add-fuse",
        "--add-tun",
        "--envs",
        "ENVBOX_TEST_*",
        "--mounts",
        &mounts,
        "--run-dir",
        run_dir.to_str().unwrap(),
        "--show-secrets",
    ];
    let spec_out = run(Command::new(ENVBOX)
        .arg("spec")
        .args(args)
        .env("ENVBOX_TEST_GREETING", "hello=world")
        .env("ENVBOX_TEST_SYSBOX", "kept")
        .env("SYSBOX_SKIP_UID_SHIFT", "/")
        .env("CODER_AGENT_TOKEN", "test-token"));
    assert!(
        spec_out.status.success(),
        "envbox spec: {}",
        String::from_utf8_lossy(&spec_out.stderr)
    );
    let spec_json = String::from_utf8(spec_out.stdout).unwrap();

    // The same plan through the library, to apply its setup actions; it must be the same spec.
    std::env::set_var("ENVBOX_TEST_GREETING", "hello=world");
    std::env::set_var("ENVBOX_TEST_SYSBOX", "kept");
    std::env::set_var("SYSBOX_SKIP_UID_SHIFT", "/");
    let raw = RawSettings {
        username: Some("coder".into()),
        hostname: Some("envbox-test".into()),
        add_fuse: Some("true".into()),
        add_tun: Some("true".into()),
        envs: Some("ENVBOX_TEST_*".into()),
        mounts: Some(mounts.clone()),
        run_dir: Some(run_dir.to_str().unwrap().into()),
        runtime: Some("runc".into()),
        agent_token: Some(envbox::config::Secret::new("test-token")),
        ..Default::default()
    };
    let settings = Settings::from_raw(&raw, None, Purpose::Spec).unwrap();
    let rootfs = fs::canonicalize(&rootfs).unwrap();
    let plan = plan::for_rootfs(&settings, &rootfs, &ImageConfig::default()).unwrap();
    assert_eq!(
        render::to_json(&plan.spec, Secrets::Reveal),
        spec_json,
        "envbox spec printed what plan::for_rootfs plans"
    );
    setup::apply(&plan.actions, &RealSys).unwrap();

    let bundle = work.path().join("bundle");
    fs::create_dir_all(&bundle).unwrap();
    fs::write(bundle.join("config.json"), &spec_json).unwrap();
    let container = RuncContainer::start(
        &bundle,
        &format!("envbox-test-{}", std::process::id()),
        &work.path().join("container.log"),
    );
    container.assert_envbox_id_maps();
    assert_eq!(container.stdout("hostname"), "envbox-test");
    assert_eq!(container.stdout("id -u"), "0");

    let env = container.stdout("cat /proc/1/environ | tr '\\0' '\\n'");
    assert!(
        env.lines().any(|l| l == "ENVBOX_TEST_GREETING=hello=world"),
        "{env}"
    );
    assert!(env.lines().any(|l| l == "ENVBOX_TEST_SYSBOX=kept"), "{env}");
    assert!(
        env.lines().any(|l| l == "CODER_AGENT_TOKEN=test-token"),
        "{env}"
    );
    assert!(
        env.lines().any(|l| l == "CODER_AGENT_SUBSYSTEM=envbox"),
        "{env}"
    );
    assert!(!env.lines().any(|l| l.starts_with("SYSBOX_")), "{env}");

    // Devices: our own nodes, openable by root inside.
    container.stdout("exec 3<>/dev/fuse && echo fuse-open");
    container.stdout("test -c /dev/net/tun && exec 3<>/dev/net/tun && echo tun-open");

    // Seccomp: Docker's profile is on, it leaves mounts and namespaces to root, and what it does
    // not list fails with EPERM. userfaultfd (user-mode only) needs no privilege: outside the
    // container it succeeds or is absent (ENOSYS), so EPERM inside comes from the profile.
    assert_eq!(
        container.stdout("grep '^Seccomp:' /proc/self/status"),
        "Seccomp:\t2"
    );
    container.stdout("mkdir -p /tmp/t && mount -t tmpfs -o size=1m tmpfs /tmp/t");
    container.stdout("touch /tmp/t/x && umount /tmp/t");
    container.stdout("unshare -m -n true");
    assert_eq!(container.stdout("syscall-probe getpid"), "ok");
    let outside = run(Command::new(rootfs.join("bin/syscall-probe")).arg("userfaultfd"));
    let outside = String::from_utf8_lossy(&outside.stdout).trim().to_owned();
    assert_ne!(
        outside, "errno=1",
        "userfaultfd is refused outside the container"
    );
    for denied in ["userfaultfd", "kexec_load"] {
        let out = container.exec(&format!("syscall-probe {denied}"));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "errno=1",
            "{denied}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Mounts: ro refuses writes, rw works and lands as the shifted root outside.
    assert_eq!(container.stdout("cat /mnt/ro/seen"), "from the outside");
    let refused = container.exec("touch /mnt/ro/new");
    assert!(
        !refused.status.success(),
        "a write to the ro mount succeeded"
    );
    assert!(!ro.join("new").exists());
    container.stdout("touch /mnt/rw/new");
    let meta = fs::metadata(rw.join("new")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 100_000);

    // Generated files and the state mounts.
    assert!(container
        .stdout("cat /etc/hosts")
        .contains("host.docker.internal"));
    assert_eq!(container.stdout("cat /etc/hostname"), "envbox-test");
    container.stdout("test -d /var/lib/docker && touch /var/lib/docker/.envbox-test");
    assert!(Path::new("/var/lib/coder/docker/.envbox-test").exists());
    let _ = fs::remove_file("/var/lib/coder/docker/.envbox-test");

    // The host's /proc and /sys are not writable.
    assert!(!container
        .exec("echo 1 > /proc/sys/kernel/panic")
        .status
        .success());
    drop(container);
    let _: PathBuf = work.path().to_owned();
}
