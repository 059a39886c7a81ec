//! Tests of [`read_facts`] on small trees built in temporary directories (no root needed).

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use super::*;

const PASSWD_TEXT: &str =
    "root:x:0:0:root:/root:/bin/bash\ncoder:x:1000:1000::/home/coder:/bin/bash\n";

fn write(root: &Path, rel: &str, contents: &str, mode: u32) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, contents).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
}

fn link(root: &Path, rel: &str, target: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    symlink(target, path).unwrap();
}

/// A merged-/usr Debian 12 layout: `/sbin -> usr/sbin`, `/lib -> usr/lib`,
/// `/usr/sbin/init -> /lib/systemd/systemd`, `/etc/os-release -> ../usr/lib/os-release`.
fn debian_like() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "etc/passwd", PASSWD_TEXT, 0o644);
    link(root, "sbin", "usr/sbin");
    link(root, "lib", "usr/lib");
    link(root, "usr/sbin/init", "/lib/systemd/systemd");
    write(root, "usr/lib/systemd/systemd", "#!elf", 0o755);
    write(
        root,
        "usr/lib/os-release",
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n",
        0o644,
    );
    link(root, "etc/os-release", "../usr/lib/os-release");
    dir
}

#[test]
fn debian_like_tree() {
    let dir = debian_like();
    let facts = read_facts(dir.path(), "coder").unwrap();
    assert_eq!(
        facts.user,
        PasswdEntry {
            name: "coder".into(),
            uid: 1000,
            gid: 1000,
            home: "/home/coder".into(),
            shell: "/bin/bash".into(),
        }
    );
    assert!(
        facts.has_init,
        "/sbin -> usr/sbin, init -> /lib/systemd/systemd chain"
    );
    assert_eq!(
        facts.os_release,
        Some(OsRelease {
            id: "debian".into(),
            id_like: vec![],
        })
    );
}

#[test]
fn user_missing() {
    let dir = debian_like();
    let err = read_facts(dir.path(), "alice").unwrap_err();
    assert!(matches!(err, RootfsError::UserNotFound { ref username, .. } if username == "alice"));
}

#[test]
fn no_passwd() {
    let dir = debian_like();
    fs::remove_file(dir.path().join("etc/passwd")).unwrap();
    let err = read_facts(dir.path(), "coder").unwrap_err();
    assert!(matches!(err, RootfsError::NoPasswd { .. }), "{err:?}");
}

/// root needs no passwd entry, as with runc and Docker: uid 0, gid 0, home /root.
#[test]
fn root_without_a_passwd_entry_is_implicit() {
    let dir = debian_like();
    write(
        dir.path(),
        "etc/passwd",
        "coder:x:1000:1000::/home/coder:/bin/sh\n",
        0o644,
    );
    let listed_without_root = read_facts(dir.path(), "root").unwrap().user;
    fs::remove_file(dir.path().join("etc/passwd")).unwrap();
    let no_passwd = read_facts(dir.path(), "root").unwrap().user;
    for user in [listed_without_root, no_passwd] {
        assert_eq!(
            (user.name.as_str(), user.uid, user.gid, user.home.as_path()),
            ("root", 0, 0, Path::new("/root"))
        );
    }
}

#[test]
fn malformed_uid_on_the_users_line() {
    let dir = debian_like();
    write(
        dir.path(),
        "etc/passwd",
        "root:x:0:0::/root:/bin/sh\nother:x:nope:1::/:/bin/sh\ncoder:x:-5:1000::/home/coder:/bin/sh\n",
        0o644,
    );
    assert_eq!(read_facts(dir.path(), "root").unwrap().user.uid, 0);
    let err = read_facts(dir.path(), "coder").unwrap_err();
    match err {
        RootfsError::Malformed { line, path, .. } => {
            assert_eq!((line, path), (3, "/etc/passwd"));
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
}

#[test]
fn absolute_passwd_symlink_resolves_in_root() {
    let dir = debian_like();
    let root = dir.path();
    fs::remove_file(root.join("etc/passwd")).unwrap();
    link(root, "etc/passwd", "/etc/host-passwd");
    write(
        root,
        "etc/host-passwd",
        "coder:x:1234:1234::/home/coder:/bin/sh\n",
        0o644,
    );
    assert_eq!(read_facts(root, "coder").unwrap().user.uid, 1234);
}

#[test]
fn dotdot_passwd_symlink_cannot_escape() {
    // <outer>/etc/passwd is the sentinel a host-side resolution of the link would reach.
    let outer = tempfile::tempdir().unwrap();
    write(
        outer.path(),
        "etc/passwd",
        "coder:x:6666:6666::/sentinel:/bin/sh\n",
        0o644,
    );
    let root = outer.path().join("root");
    link(&root, "etc/passwd", "../../etc/passwd");
    assert!(fs::read_to_string(root.join("etc/passwd"))
        .unwrap()
        .contains("6666"));

    // In-root, `..` stops at the root: the link points at itself, a loop, so no passwd.
    let err = read_facts(&root, "coder").unwrap_err();
    assert!(matches!(err, RootfsError::NoPasswd { .. }), "{err:?}");

    // And a deep `../../../../` lands on the rootfs' own /etc, never the host's.
    fs::remove_file(root.join("etc/passwd")).unwrap();
    link(&root, "etc/passwd", "../../../../etc/in-root-passwd");
    write(
        &root,
        "etc/in-root-passwd",
        "coder:x:777:777::/:/bin/sh\n",
        0o644,
    );
    assert_eq!(read_facts(&root, "coder").unwrap().user.uid, 777);
}

#[test]
fn non_executable_init() {
    let dir = debian_like();
    let systemd = dir.path().join("usr/lib/systemd/systemd");
    fs::set_permissions(systemd, fs::Permissions::from_mode(0o644)).unwrap();
    assert!(!read_facts(dir.path(), "coder").unwrap().has_init);
}

#[test]
fn dangling_or_directory_init() {
    let dir = debian_like();
    fs::remove_dir_all(dir.path().join("usr/lib/systemd")).unwrap();
    assert!(
        !read_facts(dir.path(), "coder").unwrap().has_init,
        "dangling"
    );
    fs::remove_file(dir.path().join("usr/sbin/init")).unwrap();
    fs::create_dir(dir.path().join("usr/sbin/init")).unwrap();
    fs::set_permissions(
        dir.path().join("usr/sbin/init"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    assert!(
        !read_facts(dir.path(), "coder").unwrap().has_init,
        "directory"
    );
}

#[test]
fn os_release_falls_back_then_none() {
    let dir = debian_like();
    let root = dir.path();
    fs::remove_file(root.join("etc/os-release")).unwrap();
    let facts = read_facts(root, "coder").unwrap();
    assert_eq!(
        facts.os_release.unwrap().id,
        "debian",
        "fallback to /usr/lib/os-release"
    );
    fs::remove_file(root.join("usr/lib/os-release")).unwrap();
    assert_eq!(read_facts(root, "coder").unwrap().os_release, None);
}

#[test]
fn rhel_like_os_release() {
    let dir = debian_like();
    let root = dir.path();
    fs::remove_file(root.join("etc/os-release")).unwrap();
    write(
        root,
        "etc/os-release",
        "NAME=\"Red Hat Enterprise Linux\"\nID=\"RHEL\"\nID_LIKE='Fedora'\nVERSION_ID=\"9.4\"\n",
        0o644,
    );
    let os = read_facts(root, "coder").unwrap().os_release.unwrap();
    assert_eq!(os.id, "rhel");
    assert_eq!(os.id_like, ["fedora"]);
}

#[test]
fn fifo_passwd_is_refused_not_hung_on() {
    let dir = debian_like();
    let path = dir.path().join("etc/passwd");
    fs::remove_file(&path).unwrap();
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let err = read_facts(dir.path(), "coder").unwrap_err();
    assert!(matches!(err, RootfsError::Read { .. }), "{err:?}");
}

#[test]
fn an_init_linked_to_systemd_is_systemd() {
    let dir = debian_like();
    assert!(init_is_systemd(dir.path(), "/sbin/init"));
}

#[test]
fn an_init_that_is_not_systemd_is_not() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "bin/busybox", "#!elf", 0o755);
    link(dir.path(), "sbin/init", "/bin/busybox");
    assert!(!init_is_systemd(dir.path(), "/sbin/init"));
    // envbox's own init, and an image without /sbin/init.
    assert!(!init_is_systemd(dir.path(), "sleep"));
    assert!(!init_is_systemd(dir.path(), "/missing"));
}

#[test]
fn a_systemd_link_out_of_the_root_is_resolved_inside_it() {
    // An absolute link resolves in-root; a dangling one is judged by its name.
    let dir = tempfile::tempdir().unwrap();
    link(dir.path(), "sbin/init", "/../../usr/lib/systemd/systemd");
    write(dir.path(), "usr/lib/systemd/systemd", "#!elf", 0o755);
    assert!(init_is_systemd(dir.path(), "/sbin/init"));
    assert!(init_is_systemd(dir.path(), "/lib/systemd/systemd"));
}

#[test]
fn groups_listing_the_user_are_read_and_none_without_etc_group() {
    let dir = debian_like();
    let root = dir.path();
    assert_eq!(read_facts(root, "coder").unwrap().groups, []);
    write(
        root,
        "etc/group",
        "root:x:0:\nsudo:x:27:coder\ndocker:x:102:alice,coder\ncoder:x:1000:\n",
        0o644,
    );
    let facts = read_facts(root, "coder").unwrap();
    let gids: Vec<u32> = facts.groups.iter().map(|g| g.gid).collect();
    assert_eq!(gids, [27, 102]);
    assert!(facts.warnings.is_empty(), "{:?}", facts.warnings);
    assert_eq!(read_facts(root, "root").unwrap().groups, [], "no group");
}

#[test]
fn an_absolute_group_symlink_resolves_in_root() {
    // <outer>/etc/group is the sentinel a host-side resolution of the link would reach.
    let outer = tempfile::tempdir().unwrap();
    write(outer.path(), "etc/group", "host:x:4242:coder\n", 0o644);
    let root = outer.path().join("root");
    write(&root, "etc/passwd", PASSWD_TEXT, 0o644);
    link(
        &root,
        "etc/group",
        &format!("{}/etc/group", outer.path().display()),
    );
    assert_eq!(
        read_facts(&root, "coder").unwrap().groups,
        [],
        "dangling in-root"
    );
    // The same path inside the root (`write` takes it relative to the root).
    let inside = format!("{}/etc/group", outer.path().display());
    write(
        &root,
        inside.trim_start_matches('/'),
        "inroot:x:4343:coder\n",
        0o644,
    );
    let gids: Vec<u32> = read_facts(&root, "coder")
        .unwrap()
        .groups
        .iter()
        .map(|g| g.gid)
        .collect();
    assert_eq!(gids, [4343]);
}

#[test]
fn an_unreadable_or_malformed_group_file_is_a_warning_not_an_error() {
    let dir = debian_like();
    let root = dir.path();
    fs::create_dir_all(root.join("etc/group")).unwrap();
    let facts = read_facts(root, "coder").unwrap();
    assert_eq!(facts.groups, []);
    assert!(
        facts.warnings.len() == 1 && facts.warnings[0].contains("/etc/group"),
        "{:?}",
        facts.warnings
    );
    fs::remove_dir(root.join("etc/group")).unwrap();
    write(root, "etc/group", "bad:x:12x:coder\nok:x:5:coder\n", 0o644);
    let facts = read_facts(root, "coder").unwrap();
    assert_eq!(facts.groups.len(), 1);
    assert!(facts.warnings[0].contains("line 1"), "{:?}", facts.warnings);
}
