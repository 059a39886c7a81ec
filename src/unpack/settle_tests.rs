//! Tests of layers applied onto their lower layers (module `settle`): hard links to lower
//! files, whiteouts where the lower view has something (or not), parents through symlinks of
//! the layer or below, implicit directories. Real layer directories, root needed.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::tests::{is_whiteout, lstat, xattr, Layer, Meta, Work, M};
use super::UnpackError;

const D: Meta = Meta { mode: 0o755, ..M };

fn owner_mode(path: &Path) -> (u32, u32, u32) {
    let m = lstat(path);
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

fn unpack(w: &Work, tars: Vec<Vec<u8>>) -> Vec<std::path::PathBuf> {
    let (result, dirs) = w.unpack_layers(&tars);
    result.expect("unpack");
    dirs
}

/// A hard link to a lower file that the same layer writes again later in its stream: the link
/// keeps the lower file, as containerd applies the layer (the link copies the lower file up;
/// the later entry replaces the target, not the link), and a second link read before the
/// rewrite shares that copy; a link read after the rewrite gets the new file. A link to a link
/// that settling made (`x2` to `x`, where the lower layer also has an `x`) follows that link,
/// not the lower `x`.
#[test]
fn a_link_to_a_lower_file_the_layer_writes_again_keeps_the_lower_file() {
    let w = Work::new();
    let mut lower = Layer::new();
    lower
        .file("f", M, b"old")
        .file("g", M, b"lower g")
        .file("x", M, b"lower x");
    let mut upper = Layer::new();
    upper
        .hardlink("h", "f")
        .hardlink("h2", "f")
        .file("f", M, b"new")
        .hardlink("h3", "f")
        .hardlink("x", "g")
        .hardlink("x2", "x");
    let dirs = unpack(&w, vec![lower.finish(), upper.finish()]);
    let up = &dirs[1];
    assert_eq!(fs::read(up.join("f")).unwrap(), b"new");
    assert_eq!(
        fs::read(up.join("h")).unwrap(),
        b"old",
        "the link keeps the lower file"
    );
    assert_eq!(lstat(&up.join("h2")).ino(), lstat(&up.join("h")).ino());
    assert_ne!(lstat(&up.join("h")).ino(), lstat(&up.join("f")).ino());
    assert_eq!(lstat(&up.join("h3")).ino(), lstat(&up.join("f")).ino());
    assert_eq!(fs::read(up.join("x")).unwrap(), b"lower g");
    assert_eq!(lstat(&up.join("x2")).ino(), lstat(&up.join("x")).ino());
    assert_eq!(
        fs::read(dirs[0].join("f")).unwrap(),
        b"old",
        "the lower layer is untouched"
    );
    w.check_contained();
}

#[test]
fn a_hard_link_to_a_lower_file_copies_it_up() {
    let w = Work::new();
    let setuid = Meta {
        uid: 5,
        gid: 6,
        mode: 0o4755,
        mtime: 1_500_000_000,
    };
    let mut lower = Layer::new();
    lower
        .dir("d/", Meta { mode: 0o750, ..D })
        .pax(&[("SCHILY.xattr.user.origin", b"lower")])
        .file("d/f", setuid, b"content")
        .symlink("s", "d/f");
    let mut upper = Layer::new();
    upper
        .hardlink("h", "d/f")
        // A link to the link, and one to a lower symlink.
        .hardlink("h2", "h")
        .hardlink("hs", "s")
        .dir("e/", D)
        .hardlink("e/h3", "d/f");
    let dirs = unpack(&w, vec![lower.finish(), upper.finish()]);
    let up = &dirs[1];
    let copy = up.join("d/f");
    assert_eq!(fs::read(&copy).expect("copied up"), b"content");
    assert_eq!(owner_mode(&copy), (100_005, 100_006, 0o4755));
    assert_eq!(lstat(&copy).mtime(), 1_500_000_000);
    assert_eq!(xattr(&copy, "user.origin").as_deref(), Some(&b"lower"[..]));
    for link in ["h", "h2", "e/h3"] {
        assert_eq!(lstat(&up.join(link)).ino(), lstat(&copy).ino(), "{link}");
    }
    assert_eq!(lstat(&copy).nlink(), 4);
    // The parent the copy needed has the lower directory's mode and owner.
    assert_eq!(owner_mode(&up.join("d")), (100_000, 100_000, 0o750));
    assert!(lstat(&up.join("hs")).file_type().is_symlink());
    assert_eq!(lstat(&up.join("hs")).ino(), lstat(&up.join("s")).ino());
    // The lower layer is untouched.
    assert_eq!(lstat(&dirs[0].join("d/f")).nlink(), 1);
    w.check_contained();

    // Nothing there, in this layer or below: refused, nothing kept.
    let lower = Layer::new().file("a", M, b"a").finish();
    let upper = Layer::new().hardlink("h", "missing").finish();
    let (result, dirs) = w.unpack_layers(&[lower, upper]);
    assert!(
        matches!(result, Err(UnpackError::HardlinkTarget { .. })),
        "{result:?}"
    );
    assert!(!dirs[1].exists());
    w.check_contained();
}

#[test]
fn whiteouts_act_only_where_the_lower_view_has_something() {
    let w = Work::new();
    let mut lower = Layer::new();
    lower
        .file("f", M, b"a file")
        .dir("d/", Meta { mode: 0o711, ..D })
        .file("d/x", M, b"x")
        .dir("o/", D)
        .file("o/.wh..wh..opq", M, b"");
    let mut upper = Layer::new();
    upper
        // Below a lower file, a missing path, a missing name: nothing.
        .file("f/.wh.x", M, b"")
        .file("missing/.wh.y", M, b"")
        .file(".wh.nothing", M, b"")
        // Below an opaque lower directory, of what is below it: nothing either.
        .file("o/.wh.gone", M, b"")
        .file("d/.wh.x", M, b"");
    let mut bottom = Layer::new();
    bottom.dir("o/", D).file("o/gone", M, b"");
    let dirs = unpack(&w, vec![bottom.finish(), lower.finish(), upper.finish()]);
    let up = &dirs[2];
    for absent in ["f", "missing", "nothing", "o"] {
        assert!(
            fs::symlink_metadata(up.join(absent)).is_err(),
            "{absent} in the layer"
        );
    }
    assert!(is_whiteout(&up.join("d/x")));
    assert_eq!(owner_mode(&up.join("d")), (100_000, 100_000, 0o711));
    w.check_contained();
}

/// Below a lower layer's symlink the entry goes below its target: umoci's result, and
/// containerd's where it applies onto the merged view of the parents (native snapshotter,
/// overlayfs in a user namespace); its overlayfs snapshotter outside one makes a directory
/// there instead (see module `settle` for why envbox keeps the merged view's result).
#[test]
fn entries_below_symlinks_go_below_their_targets_in_root() {
    let w = Work::new();
    let mut lower = Layer::new();
    lower
        .dir("usr/", D)
        .dir("usr/lib/", Meta { mode: 0o750, ..D })
        .dir("usr/bin/", Meta { mode: 0o751, ..D })
        .dir("usr/sbin/", D)
        .symlink("lib", "usr/lib")
        .file("file", M, b"a file");
    let abs = w.sentinel_abs();
    let mut upper = Layer::new();
    upper
        // This layer's own symlinks, relative, absolute and climbing out of the root.
        .symlink("bin", "usr/bin")
        .file("bin/tool", M, b"tool")
        .symlink("sbin", "/usr/sbin")
        .file("sbin/stool", M, b"stool")
        .symlink("up", "../../../usr")
        .file("up/share/doc", M, b"doc")
        .symlink("out", &abs)
        .file("out/planted", M, b"planted")
        // A lower layer's symlink.
        .file("lib/libx.so", M, b"libx")
        // A lower file as a parent: replaced by a directory, as containerd does.
        .file("file/inside", M, b"inside");
    let dirs = unpack(&w, vec![lower.finish(), upper.finish()]);
    let up = &dirs[1];
    assert_eq!(fs::read(up.join("usr/bin/tool")).expect("tool"), b"tool");
    assert_eq!(
        fs::read(up.join("usr/sbin/stool")).expect("stool"),
        b"stool"
    );
    assert_eq!(fs::read(up.join("usr/share/doc")).expect("doc"), b"doc");
    assert_eq!(fs::read(up.join("usr/lib/libx.so")).expect("libx"), b"libx");
    assert_eq!(
        fs::read(up.join(abs.trim_start_matches('/')).join("planted")).expect("planted"),
        b"planted"
    );
    assert!(lstat(&up.join("bin")).file_type().is_symlink());
    // The lower symlink shows through: the layer has nothing at `lib`.
    assert!(fs::symlink_metadata(up.join("lib")).is_err());
    assert_eq!(owner_mode(&up.join("usr/lib")), (100_000, 100_000, 0o750));
    assert_eq!(owner_mode(&up.join("usr/bin")), (100_000, 100_000, 0o751));
    assert_eq!(owner_mode(&up.join("usr/share")), (100_000, 100_000, 0o755));
    assert!(lstat(&up.join("file")).is_dir());
    assert_eq!(owner_mode(&up.join("file")), (100_000, 100_000, 0o755));
    w.check_contained();
}

#[test]
fn implicit_directories_take_the_lower_view_s_metadata() {
    let w = Work::new();
    let etc = Meta {
        uid: 3,
        gid: 4,
        mode: 0o751,
        mtime: 1_400_000_000,
    };
    let mut lower = Layer::new();
    lower
        .pax(&[("SCHILY.xattr.user.tag", b"etc")])
        .dir("etc/", etc)
        .dir("etc/systemd/", Meta { mode: 0o700, ..D })
        .dir("gone/", Meta { mode: 0o700, ..D })
        .file("gone/old", M, b"old");
    let mut upper = Layer::new();
    upper
        .file("etc/systemd/unit", M, b"unit")
        .file("new/dir/file", M, b"file")
        // Deleted, then made again: its own directory, opaque, nothing of the lower one.
        .file(".wh.gone", M, b"")
        .file("gone/new", M, b"new");
    let dirs = unpack(&w, vec![lower.finish(), upper.finish()]);
    let up = &dirs[1];
    assert_eq!(owner_mode(&up.join("etc")), (100_003, 100_004, 0o751));
    assert_eq!(lstat(&up.join("etc")).mtime(), 1_400_000_000);
    assert_eq!(
        xattr(&up.join("etc"), "user.tag").as_deref(),
        Some(&b"etc"[..])
    );
    assert_eq!(
        owner_mode(&up.join("etc/systemd")),
        (100_000, 100_000, 0o700)
    );
    assert_eq!(xattr(&up.join("etc"), "trusted.overlay.opaque"), None);
    assert_eq!(owner_mode(&up.join("new/dir")), (100_000, 100_000, 0o755));
    let gone = up.join("gone");
    assert_eq!(owner_mode(&gone), (100_000, 100_000, 0o755));
    assert_eq!(
        xattr(&gone, "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    w.check_contained();
}

#[test]
fn a_layer_below_a_different_chain_is_a_different_directory() {
    let w = Work::new();
    let a = Layer::new().dir("etc/", Meta { mode: 0o700, ..D }).finish();
    let b = Layer::new().dir("etc/", Meta { mode: 0o750, ..D }).finish();
    let top = Layer::new().file("etc/x", M, b"x").finish();
    let on_a = unpack(&w, vec![a, top.clone()]);
    let on_b = unpack(&w, vec![b, top]);
    assert_ne!(on_a[1], on_b[1]);
    assert_eq!(owner_mode(&on_a[1].join("etc")).2, 0o700);
    assert_eq!(owner_mode(&on_b[1].join("etc")).2, 0o750);
}
