//! Tests of [`flatten`]: a three-layer image built here (whiteouts, opaque directories in both
//! entry orders, dir<->file replacement, writes through a lower symlink, hard links to lower
//! layers), the merged tree checked entry by entry; directory metadata across layers (xattrs
//! of a relisted directory, mtimes of unlisted ones). Layers like these, and many more, are
//! compared with `umoci raw unpack` in the conformance suite (`conformance/unpack/`). They need
//! root and panic without it.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::tests::{gzip, named_acl, needs_root, xattr, Layer, Meta, M};
use super::*;
use crate::testing::{incompressible, LoopExt4};

/// As a bundle is flattened.
fn flatten_synced(layers: &[LayerSource], target: &Path) -> Result<FlattenReport, UnpackError> {
    flatten(layers, target, &Limits::default(), Durability::Synced)
}

fn meta(uid: u64, gid: u64, mode: u32) -> Meta {
    Meta {
        uid,
        gid,
        mode,
        ..M
    }
}

/// Layer 1: the base tree.
fn base_layer() -> Vec<u8> {
    let mut l = Layer::new();
    l.dir("etc/", meta(0, 0, 0o755))
        .file("etc/passwd", M, b"root:x:0:0")
        .file("etc/shadow", meta(0, 42, 0o640), b"secret")
        .hardlink("etc/passwd-", "etc/passwd")
        .dir("usr/", meta(0, 0, 0o755))
        .dir("usr/lib/", meta(0, 0, 0o755))
        .file("usr/lib/libc.so", meta(0, 0, 0o755), b"libc")
        .symlink("lib", "usr/lib")
        .dir("bin/", meta(0, 0, 0o755))
        .file("bin/su", meta(0, 0, 0o4755), b"su")
        .dir("home/", meta(0, 0, 0o755))
        .dir("home/u/", meta(1000, 1000, 0o700))
        .file("home/u/f", meta(1000, 1000, 0o644), b"u")
        .dir("opq/", meta(0, 0, 0o755))
        .file("opq/old", M, b"old")
        .dir("opq/olddir/", meta(0, 0, 0o755))
        .file("opq/olddir/deep", M, b"deep")
        .dir("opq/keep/", meta(0, 0, 0o755))
        .file("opq/keep/lowerchild", M, b"lower")
        .dir("d2f/", meta(0, 0, 0o755))
        .file("d2f/child", M, b"child")
        .file("f2d", M, b"f2d")
        .file("gone", M, b"gone")
        .dir("gonedir/", meta(0, 0, 0o755))
        .file("gonedir/x", M, b"x")
        .symlink("sym", "/etc");
    l.finish()
}

/// Layer 2: deletions, an opaque directory (marker before or after this layer's entries in it)
/// and type changes.
fn change_layer(opaque_after: bool) -> Vec<u8> {
    let mut l = Layer::new();
    l.file(".wh.gone", M, b"")
        .file(".wh.gonedir", M, b"")
        .file(".wh.sym", M, b"");
    if !opaque_after {
        l.file("opq/.wh..wh..opq", M, b"");
    }
    l.file("opq/new", M, b"new")
        .dir("opq/keep/", meta(0, 0, 0o750))
        .file("opq/keep/new2", M, b"new2");
    if opaque_after {
        l.file("opq/.wh..wh..opq", M, b"");
    }
    l.file("d2f", M, b"now a file")
        .dir("f2d/", meta(0, 0, 0o755))
        .file("f2d/inner", M, b"inner")
        // A whiteout only hides lower layers: this layer's own entry stays.
        .file("fresh", M, b"fresh")
        .file(".wh.fresh", M, b"");
    l.finish()
}

/// Layer 3: writes through the lower symlink `lib`, hard links to a lower file, replaces a
/// file that a lower hard link shares.
fn top_layer() -> Vec<u8> {
    let mut l = Layer::new();
    l.file("lib/x", M, b"via lib")
        .hardlink("hl", "usr/lib/libc.so")
        .file("etc/passwd", M, b"root:x:0:0:new");
    l.finish()
}

struct Image {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    sources: Vec<LayerSource>,
}

impl Image {
    fn new(tars: Vec<Vec<u8>>) -> Self {
        needs_root();
        let tmp = tempfile::Builder::new()
            .prefix("envbox-flatten-test")
            .tempdir()
            .expect("tempdir");
        let dir = tmp.path().to_owned();
        let sources = tars
            .iter()
            .map(|tar| {
                let blob = gzip(tar);
                let digest = Digest::of(&blob);
                let path = dir.join(format!("blob-{}", digest.hex()));
                fs::write(&path, &blob).expect("write blob");
                LayerSource {
                    blob: path,
                    compression: Compression::Gzip,
                    digest,
                    diff_id: Digest::of(tar),
                }
            })
            .collect();
        Image {
            _tmp: tmp,
            dir,
            sources,
        }
    }

    fn flatten(&self) -> (FlattenReport, PathBuf) {
        let target = self.dir.join("rootfs");
        let report = flatten_synced(&self.sources, &target).expect("flatten");
        (report, target)
    }
}

/// Every entry under `root` (the root itself left out): path -> "type mode uid:gid content or
/// target", with `shift` taken off the ids. Also refuses overlay leftovers.
fn snapshot(root: &Path, shift: u32) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).expect("list") {
            let path = entry.expect("entry").path();
            let m = fs::symlink_metadata(&path).expect("lstat");
            let rel = path
                .strip_prefix(root)
                .expect("prefix")
                .display()
                .to_string();
            let ft = m.file_type();
            assert!(!ft.is_char_device(), "{rel}: device in a flattened tree");
            assert!(
                xattr(&path, "trusted.overlay.opaque").is_none(),
                "{rel}: overlay xattr"
            );
            let ids = format!("{}:{}", m.uid() - shift, m.gid() - shift);
            let mode = m.mode() & 0o7777;
            let desc = if ft.is_dir() {
                stack.push(path.clone());
                format!("dir {mode:o} {ids}")
            } else if ft.is_symlink() {
                let target = fs::read_link(&path).expect("readlink");
                format!("symlink {ids} -> {}", target.display())
            } else if ft.is_file() {
                let data = fs::read(&path).expect("read");
                format!("file {mode:o} {ids} {}", String::from_utf8_lossy(&data))
            } else {
                format!("other {mode:o} {ids}")
            };
            out.insert(rel, desc);
        }
    }
    out
}

fn expected() -> BTreeMap<String, String> {
    [
        ("bin", "dir 755 0:0"),
        ("bin/su", "file 4755 0:0 su"),
        ("d2f", "file 644 0:0 now a file"),
        ("etc", "dir 755 0:0"),
        ("etc/passwd", "file 644 0:0 root:x:0:0:new"),
        ("etc/passwd-", "file 644 0:0 root:x:0:0"),
        ("etc/shadow", "file 640 0:42 secret"),
        ("f2d", "dir 755 0:0"),
        ("f2d/inner", "file 644 0:0 inner"),
        ("fresh", "file 644 0:0 fresh"),
        ("hl", "file 755 0:0 libc"),
        ("home", "dir 755 0:0"),
        ("home/u", "dir 700 1000:1000"),
        ("home/u/f", "file 644 1000:1000 u"),
        ("lib", "symlink 0:0 -> usr/lib"),
        ("opq", "dir 755 0:0"),
        ("opq/keep", "dir 750 0:0"),
        ("opq/keep/new2", "file 644 0:0 new2"),
        ("opq/new", "file 644 0:0 new"),
        ("usr", "dir 755 0:0"),
        ("usr/lib", "dir 755 0:0"),
        ("usr/lib/libc.so", "file 755 0:0 libc"),
        ("usr/lib/x", "file 644 0:0 via lib"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn check_merged(opaque_after: bool) {
    let image = Image::new(vec![base_layer(), change_layer(opaque_after), top_layer()]);
    let (report, root) = image.flatten();
    assert_eq!(report.layers, 3);
    assert!(report.entries > 40, "{report:?}");
    assert!(report.warnings.is_empty(), "{report:?}");
    let top = fs::symlink_metadata(&root).expect("lstat");
    assert_eq!(
        (top.uid(), top.gid(), top.mode() & 0o7777),
        (ID_SHIFT, ID_SHIFT, 0o755)
    );
    let merged = snapshot(&root, ID_SHIFT);
    assert_eq!(merged, expected());
    let ino = |p: &str| fs::symlink_metadata(root.join(p)).expect("lstat").ino();
    assert_eq!(
        ino("hl"),
        ino("usr/lib/libc.so"),
        "hard link to a lower file"
    );
    assert_ne!(
        ino("etc/passwd"),
        ino("etc/passwd-"),
        "replaced, not written through"
    );
    // No staging directory left beside the target.
    let names: Vec<_> = fs::read_dir(&image.dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

#[test]
fn flatten_merges_layers_opaque_before() {
    check_merged(false);
}

#[test]
fn flatten_merges_layers_opaque_after() {
    check_merged(true);
}

/// A sentinel directory outside any image's root, with its listing.
fn sentinel() -> (tempfile::TempDir, PathBuf, Vec<String>) {
    let tmp = tempfile::Builder::new()
        .prefix("envbox-flatten-sentinel")
        .tempdir()
        .expect("tempdir");
    let dir = tmp.path().join("sentinel");
    fs::create_dir_all(dir.join("inside")).expect("sentinel");
    fs::write(dir.join("file"), b"sentinel").expect("sentinel");
    fs::write(dir.join("inside/deep"), b"deep").expect("sentinel");
    let before = list_all(&dir);
    (tmp, dir, before)
}

fn list_all(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = snapshot(dir, 0)
        .into_iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    names.sort();
    names
}

#[test]
fn whiteouts_never_act_through_symlinks() {
    needs_root();
    let (_sentinel_tmp, sentinel_dir, before) = sentinel();
    let abs = sentinel_dir.display().to_string();
    let mut l1 = Layer::new();
    l1.symlink("evil", &abs)
        .symlink("up", "../../../..")
        .file("keep", M, b"k");
    let mut l2 = Layer::new();
    l2.file("evil/.wh.file", M, b"")
        .file("evil/.wh.inside", M, b"")
        .file(&format!("up/{}/.wh.file", &abs[1..]), M, b"")
        .file("../../.wh.keep-not", M, b"");
    let mut l3 = Layer::new();
    l3.file(".wh.evil", M, b"").file("up/.wh.keep", M, b"");
    let image = Image::new(vec![l1.finish(), l2.finish(), l3.finish()]);
    let (_, root) = image.flatten();
    assert_eq!(list_all(&sentinel_dir), before, "sentinel changed");
    let merged = snapshot(&root, ID_SHIFT);
    // `evil` itself is gone (not what it points to); `up/.wh.keep` resolves in-root to `keep`.
    let names: Vec<&str> = merged.keys().map(String::as_str).collect();
    assert_eq!(names, ["up"], "{merged:?}");

    // An opaque marker below the escaping symlink is refused or contained.
    let mut l1 = Layer::new();
    l1.symlink("evil", &abs);
    let mut l2 = Layer::new();
    l2.file("evil/.wh..wh..opq", M, b"");
    let image2 = Image::new(vec![l1.finish(), l2.finish()]);
    let target = image2.dir.join("rootfs");
    if flatten_synced(&image2.sources, &target).is_err() {
        assert!(!target.exists(), "a failed flatten left its target");
    }
    assert_eq!(list_all(&sentinel_dir), before, "sentinel changed");
}

#[test]
fn failures_leave_no_target() {
    let mut bad = Image::new(vec![base_layer(), top_layer()]);
    bad.sources[1].diff_id = Digest::of(b"something else");
    let target = bad.dir.join("rootfs");
    let err = flatten_synced(&bad.sources, &target).expect_err("mismatch");
    assert!(matches!(err, UnpackError::DiffIdMismatch { .. }), "{err}");
    assert!(!target.exists());
    let left: Vec<_> = fs::read_dir(&bad.dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(left.is_empty(), "staging left: {left:?}");

    let image = Image::new(vec![base_layer()]);
    let (_, target) = image.flatten();
    let err = flatten_synced(&image.sources, &target).expect_err("exists");
    assert!(matches!(err, UnpackError::TargetExists { .. }), "{err}");
}

/// A hard link to a lower file that the layer writes again later keeps the lower file (the
/// later entry replaces the target, not the link), as in the layer directories (`settle`) and
/// as containerd applies it.
#[test]
fn a_link_to_a_lower_file_the_layer_writes_again_keeps_the_lower_file() {
    let mut l1 = Layer::new();
    l1.file("f", M, b"old");
    let mut l2 = Layer::new();
    l2.hardlink("h", "f")
        .file("f", M, b"new")
        .hardlink("h3", "f");
    let image = Image::new(vec![l1.finish(), l2.finish()]);
    let (_, root) = image.flatten();
    assert_eq!(fs::read(root.join("f")).unwrap(), b"new");
    assert_eq!(fs::read(root.join("h")).unwrap(), b"old");
    let ino = |p: &str| fs::symlink_metadata(root.join(p)).unwrap().ino();
    assert_eq!(ino("h3"), ino("f"));
}

/// A directory listed again by a later layer takes that entry's xattrs as it takes its mode
/// and owner: the earlier entry's user xattrs are gone (as in the overlay view, where the upper
/// directory's xattrs are the ones seen, and in umoci's tree).
#[test]
fn a_relisted_directory_takes_the_later_entrys_xattrs() {
    let mut l1 = Layer::new();
    l1.pax(&[
        ("SCHILY.xattr.user.old", b"1"),
        ("SCHILY.xattr.user.both", b"old"),
    ])
    .dir("d/", meta(0, 0, 0o755))
    .file("d/f", M, b"f");
    let mut l2 = Layer::new();
    l2.pax(&[
        ("SCHILY.xattr.user.new", b"2"),
        ("SCHILY.xattr.user.both", b"new"),
    ])
    .dir("d/", meta(5, 6, 0o750));
    let image = Image::new(vec![l1.finish(), l2.finish()]);
    let (_, root) = image.flatten();
    let d = root.join("d");
    assert_eq!(xattr(&d, "user.old"), None, "earlier entry's xattr kept");
    assert_eq!(xattr(&d, "user.new").as_deref(), Some(&b"2"[..]));
    assert_eq!(xattr(&d, "user.both").as_deref(), Some(&b"new"[..]));
    let m = fs::symlink_metadata(&d).expect("lstat");
    assert_eq!(
        (m.uid(), m.gid(), m.mode() & 0o7777),
        (100_005, 100_006, 0o750)
    );
    assert!(d.join("f").exists(), "the directories merged");
}

/// A default ACL of a lower directory is not inherited by what later layers create in it
/// (each entry gets the ACLs it lists); its ids are shifted, and a later layer listing the
/// directory again without ACLs removes them.
#[test]
fn posix_acls_are_kept_shifted_and_never_inherited_across_layers() {
    let access = "SCHILY.xattr.system.posix_acl_access";
    let default = "SCHILY.xattr.system.posix_acl_default";
    let mut l1 = Layer::new();
    l1.pax(&[
        (access, &named_acl(1000, 4)),
        (default, &named_acl(1000, 4)),
    ])
    .dir("j/", meta(0, 0, 0o775))
    .pax(&[(default, &named_acl(1, 1))])
    .dir("gone/", meta(0, 0, 0o755));
    let mut l2 = Layer::new();
    l2.file("j/later", meta(0, 0, 0o640), b"l")
        .dir("j/later-dir/", meta(0, 0, 0o750))
        .dir("gone/", meta(0, 0, 0o755))
        .file("gone/x", meta(0, 0, 0o600), b"x");
    let image = Image::new(vec![l1.finish(), l2.finish()]);
    let (_, root) = image.flatten();
    let acl_of = |path: &str, which: &str| xattr(&root.join(path), &format!("system.{which}"));
    let shifted = named_acl(101_000, 100_004);
    assert_eq!(acl_of("j", "posix_acl_access"), Some(shifted.clone()));
    assert_eq!(acl_of("j", "posix_acl_default"), Some(shifted));
    for path in ["j/later", "j/later-dir", "gone", "gone/x"] {
        for which in ["posix_acl_access", "posix_acl_default"] {
            assert_eq!(acl_of(path, which), None, "{which} on {path}");
        }
    }
    for (path, mode) in [
        ("j/later", 0o640),
        ("j/later-dir", 0o750),
        ("gone/x", 0o600),
    ] {
        let m = fs::symlink_metadata(root.join(path)).expect("lstat");
        assert_eq!(m.mode() & 0o7777, mode, "{path}");
    }
}

/// A lower directory that a layer writes into, deletes in or makes opaque without listing it
/// keeps its mtime (the layer says nothing about it); one the layer lists gets the layer's.
#[test]
fn unlisted_lower_directories_keep_their_mtime() {
    let old = Meta {
        mtime: 1_000_000,
        ..meta(0, 0, 0o755)
    };
    let mut l1 = Layer::new();
    l1.dir("write/", old)
        .dir("delete/", old)
        .file("delete/x", M, b"x")
        .dir("opaque/", old)
        .file("opaque/x", M, b"x")
        .dir("via/", old)
        .symlink("link", "via")
        .dir("listed/", old);
    let mut l2 = Layer::new();
    l2.file("write/new", M, b"n")
        .file("delete/.wh.x", M, b"")
        .file("opaque/.wh..wh..opq", M, b"")
        .file("link/new", M, b"through a symlink")
        .dir(
            "listed/",
            Meta {
                mtime: 2_000_000,
                ..old
            },
        )
        .file("listed/new", M, b"n");
    let image = Image::new(vec![l1.finish(), l2.finish()]);
    let (_, root) = image.flatten();
    let mtime = |p: &str| fs::symlink_metadata(root.join(p)).expect("lstat").mtime();
    for dir in ["write", "delete", "opaque", "via"] {
        assert_eq!(mtime(dir), 1_000_000, "{dir}");
    }
    assert_eq!(mtime("listed"), 2_000_000);
    assert!(root.join("via/new").exists() && !root.join("delete/x").exists());
    assert!(!root.join("opaque/x").exists());
}

/// A bundle's tree is on the device when `flatten` returns; a per-start scratch tree leaves
/// its data to the kernel's write-back (nothing waits for the disk).
#[test]
fn a_synced_flatten_reaches_the_device_and_a_scratch_one_does_not_wait() {
    const KIB: usize = 4096;
    let data = incompressible(KIB);
    let mut l = Layer::new();
    l.dir("d/", M).file("d/big", M, &data);
    let image = Image::new(vec![l.finish()]);
    let disk = LoopExt4::new();

    let flattened = |dir: &str, durability| {
        let target = disk.mnt.join(dir);
        let ((), kib) = disk.written_during(|| {
            flatten(&image.sources, &target, &Limits::default(), durability).expect("flatten");
        });
        (target, kib)
    };
    let (scratch, scratch_kib) = flattened("scratch", Durability::Scratch);
    assert_eq!(fs::read(scratch.join("d/big")).expect("read"), data);
    assert!(
        scratch_kib < KIB as u64 / 2,
        "a scratch flatten wrote {scratch_kib} KiB to the device before returning"
    );

    let (_, synced_kib) = flattened("synced", Durability::Synced);
    assert!(
        synced_kib >= KIB as u64,
        "a synced flatten returned with only {synced_kib} KiB on the device"
    );
}

/// An entry below a lower layer's file replaces the file with a directory (0755 root), as
/// containerd applies a layer; below a file of the same layer it is refused.
#[test]
fn an_entry_below_a_lower_file_replaces_it_with_a_directory() {
    let lower = Layer::new().file("f", M, b"a file").finish();
    let upper = Layer::new().file("f/inside", M, b"inside").finish();
    let image = Image::new(vec![lower, upper]);
    let (_, root) = image.flatten();
    let f = fs::symlink_metadata(root.join("f")).expect("lstat");
    assert!(f.is_dir());
    assert_eq!((f.uid(), f.mode() & 0o7777), (ID_SHIFT, 0o755));
    assert_eq!(fs::read(root.join("f/inside")).expect("read"), b"inside");

    let own = Layer::new()
        .file("g", M, b"a file")
        .file("g/inside", M, b"inside")
        .finish();
    let image = Image::new(vec![own]);
    let err = flatten_synced(&image.sources, &image.dir.join("rootfs")).expect_err("refused");
    assert!(matches!(err, UnpackError::ParentNotDir { .. }), "{err}");
}
