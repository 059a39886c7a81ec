//! [`RealSys`] against temporary directories. Tests that chown to 100000 or mknod need root and
//! fail (never skip) without it.

use std::fs;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt};
use std::path::Path;

use nix::unistd::{getegid, geteuid};

use super::*;

fn require_root() {
    assert!(
        geteuid().is_root(),
        "needs root: run the setup tests as root"
    );
}

fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

#[test]
fn write_file_atomic_replaces_and_leaves_no_staging_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hosts");
    fs::write(&path, "old contents that are longer\n").unwrap();
    RealSys.write_file_atomic(&path, b"new\n").unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), "new\n");
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["hosts"]);
}

#[test]
fn write_file_atomic_does_not_follow_a_stale_staging_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    fs::write(&victim, "keep").unwrap();
    let path = dir.path().join("resolv.conf");
    symlink(
        &victim,
        dir.path()
            .join(format!("resolv.conf.tmp-{}", std::process::id())),
    )
    .unwrap();
    RealSys
        .write_file_atomic(&path, b"nameserver 1.1.1.1\n")
        .unwrap();
    assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
    assert_eq!(fs::read_to_string(&path).unwrap(), "nameserver 1.1.1.1\n");
}

#[test]
fn apply_write_file_creates_parent_sets_owner_then_mode() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("etc/hostname");
    let action = Action::WriteFile {
        path: path.clone(),
        contents: "workspace\n".into(),
        mode: 0o644,
        uid: 100000,
        gid: 100000,
    };
    apply(&[action], &RealSys).unwrap();
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), mode_of(&path)),
        (100000, 100000, 0o644)
    );
    assert_eq!(fs::read_to_string(&path).unwrap(), "workspace\n");
}

#[test]
fn create_dir_chowns_and_keeps_setgid() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/home");
    let action = Action::CreateDir {
        path: path.clone(),
        mode: 0o2755,
        uid: 100000,
        gid: 100000,
    };
    apply(std::slice::from_ref(&action), &RealSys).unwrap();
    apply(&[action], &RealSys).unwrap(); // idempotent
    let meta = fs::metadata(&path).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (100000, 100000));
    assert_eq!(mode_of(&path), 0o2755, "chmod must come after chown");
}

#[test]
fn mknod_char_replaces_a_file_and_the_node_opens() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("null");
    fs::write(&path, "not a device").unwrap();
    let action = Action::CharDevice {
        path: path.clone(),
        major: 1,
        minor: 3,
        mode: 0o666,
        uid: 100000,
        gid: 100000,
    };
    apply(&[action], &RealSys).unwrap();
    let meta = fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_char_device());
    assert_eq!(meta.rdev(), nix::sys::stat::makedev(1, 3));
    assert_eq!((meta.uid(), mode_of(&path)), (100000, 0o666));
    fs::write(&path, "discarded").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"");
}

#[test]
fn mknod_char_refuses_to_replace_a_directory() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let err = RealSys.mknod_char(dir.path(), 1, 3, 0o666).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(nix::errno::Errno::EISDIR as i32));
}

#[test]
fn unmount_of_a_plain_directory_is_a_not_mounted_warning() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let actions = [Action::UnmountBestEffort {
        path: dir.path().to_owned(),
    }];
    let warnings = apply(&actions, &RealSys).unwrap();
    assert!(
        matches!(warnings[..], [SetupWarning::NotMounted { .. }]),
        "{warnings:?}"
    );
}

fn me() -> (u32, u32) {
    (geteuid().as_raw(), getegid().as_raw())
}

#[test]
fn symlink_in_root_creates_parents_and_replaces_a_file() {
    let rootfs = tempfile::tempdir().unwrap();
    let root = rootfs.path();
    fs::create_dir_all(root.join("usr/lib")).unwrap();
    symlink("usr/lib", root.join("lib")).unwrap();
    fs::write(root.join("usr/lib/libfoo.so"), "stale").unwrap();
    let (uid, gid) = me();

    let sys = RealSys;
    sys.symlink_in_root(
        root,
        Path::new("/lib/libfoo.so"),
        Path::new("libfoo.so.1"),
        uid,
        gid,
    )
    .unwrap();
    let link = root.join("usr/lib/libfoo.so");
    assert_eq!(fs::read_link(&link).unwrap(), Path::new("libfoo.so.1"));

    sys.symlink_in_root(
        root,
        Path::new("/opt/x/y/link"),
        Path::new("/abs"),
        uid,
        gid,
    )
    .unwrap();
    assert_eq!(
        fs::read_link(root.join("opt/x/y/link")).unwrap(),
        Path::new("/abs")
    );
    assert_eq!(mode_of(&root.join("opt/x")), 0o755);

    fs::create_dir(root.join("opt/dir")).unwrap();
    let err = sys.symlink_in_root(root, Path::new("/opt/dir"), Path::new("t"), uid, gid);
    assert_eq!(
        err.unwrap_err().raw_os_error(),
        Some(nix::errno::Errno::EISDIR as i32)
    );
}

#[test]
fn symlink_in_root_never_follows_a_symlink_out_of_the_rootfs() {
    // A real directory outside the rootfs that a host-side resolution would write into.
    let sentinel = tempfile::tempdir().unwrap();
    let rootfs = tempfile::tempdir().unwrap();
    let root = rootfs.path();
    fs::create_dir_all(root.join("usr")).unwrap();
    symlink(sentinel.path(), root.join("usr/lib64")).unwrap();
    let (uid, gid) = me();

    let path = Path::new("/usr/lib64/nvidia/libcuda.so");
    RealSys
        .symlink_in_root(root, path, Path::new("libcuda.so.1"), uid, gid)
        .unwrap();

    let sentinel_rel = sentinel.path().strip_prefix("/").unwrap();
    let in_root = root.join(sentinel_rel).join("nvidia/libcuda.so");
    assert_eq!(fs::read_link(&in_root).unwrap(), Path::new("libcuda.so.1"));
    assert_eq!(
        fs::read_dir(sentinel.path()).unwrap().count(),
        0,
        "escaped the rootfs"
    );
}

#[test]
fn symlink_in_root_dotdot_stays_inside() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    fs::create_dir(&root).unwrap();
    let (uid, gid) = me();
    let path = Path::new("/../../../escape/link");
    RealSys
        .symlink_in_root(&root, path, Path::new("t"), uid, gid)
        .unwrap();
    assert!(fs::symlink_metadata(root.join("escape/link")).is_ok());
    assert!(!outer.path().join("escape").exists());
}

#[test]
fn symlink_in_root_gives_up_on_symlink_loops() {
    let rootfs = tempfile::tempdir().unwrap();
    let root = rootfs.path();
    symlink("/b", root.join("a")).unwrap();
    symlink("/a", root.join("b")).unwrap();
    let (uid, gid) = me();
    let err = RealSys.symlink_in_root(root, Path::new("/a/link"), Path::new("t"), uid, gid);
    assert_eq!(
        err.unwrap_err().raw_os_error(),
        Some(nix::errno::Errno::ELOOP as i32)
    );
}

#[test]
fn a_read_only_bind_mount_source_is_chowned_and_stays_read_only() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("volume");
    fs::create_dir(&source).unwrap();
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    mount(
        Some(&source),
        &source,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    let ro = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID;
    mount(None::<&str>, &source, None::<&str>, ro, None::<&str>).unwrap();
    let result = apply(
        &[Action::Chown {
            path: source.clone(),
            uid: 101000,
            gid: 101000,
        }],
        &RealSys,
    );
    let still_ro = fs::write(source.join("probe"), "x");
    let table = crate::mountinfo::MountTable::read_self().unwrap();
    let entry = table
        .entries
        .iter()
        .rev()
        .find(|e| e.mount_point == source)
        .cloned();
    umount2(&source, MntFlags::MNT_DETACH).unwrap();
    result.unwrap();
    assert_eq!(fs::metadata(&source).unwrap().uid(), 101000);
    assert!(still_ro.is_err(), "the source is read-only again");
    let entry = entry.unwrap();
    assert!(entry.is_read_only());
    assert_eq!(entry.locked_flags(), ["nosuid"], "locked flags kept");
}
