//! The synthetic images of the conformance suite, each a list of layer tars (bottom first).
//!
//! The "docker-like" images are layers as image builders write them: every layer lists the
//! ancestor directories of what it adds or deletes, names real paths (never a path through a
//! symlink) and hard-links only to files of its own; both envbox views must equal umoci on
//! them. [`handmade`] breaks those habits on purpose (see there).

use super::layer::{meta, LayerTar, LongNames, Meta};

const FILE: u32 = 0o644;
const DIR: u32 = 0o755;

/// A later mtime: what a directory gets when a layer changes it.
fn touched(mode: u32) -> Meta {
    meta(mode).mtime(1_700_000_000, 5)
}

/// A version 2 `security.capability` value: effective, permitted CAP_NET_RAW.
pub const CAP_NET_RAW: [u8; 20] = [
    0x01, 0, 0, 0x02, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// Whiteouts of files, trees, symlinks and missing names; opaque directories with the marker
/// before and after the layer's own entries, and with nothing else; dir->file, file->dir,
/// symlink->dir, dir->symlink; whiteout and re-creation of one name in one layer, both orders
/// (a whiteout only hides lower layers).
pub fn whiteouts() -> Vec<Vec<u8>> {
    let f = meta(FILE);
    let d = meta(DIR);
    let mut l1 = LayerTar::new(LongNames::Gnu);
    l1.dir("etc", &d).file("etc/passwd", &f, b"root:x:0:0");
    for opq in ["opq-before", "opq-after"] {
        l1.dir(opq, &d)
            .file(&format!("{opq}/old"), &f, b"old")
            .dir(&format!("{opq}/olddir"), &d)
            .file(&format!("{opq}/olddir/deep"), &f, b"deep")
            .dir(&format!("{opq}/keep"), &d)
            .file(&format!("{opq}/keep/lowerchild"), &f, b"lower");
    }
    l1.dir("opq-empty", &d)
        .file("opq-empty/x", &f, b"x")
        .dir("opq-empty/sub", &d)
        .file("opq-empty/sub/y", &f, b"y")
        .dir("d2f", &d)
        .file("d2f/child", &f, b"child")
        .file("f2d", &f, b"f2d")
        .symlink("s2d", "etc", &f)
        .dir("d2s", &d)
        .file("d2s/x", &f, b"x")
        .file("gone", &f, b"gone")
        .dir("gonedir", &d)
        .dir("gonedir/sub", &d)
        .file("gonedir/sub/x", &f, b"x")
        .symlink("gonelink", "gone", &f)
        .file("fresh-after", &f, b"lower")
        .file("fresh-before", &f, b"lower")
        .dir("freshdir-before", &d)
        .file("freshdir-before/old", &f, b"old")
        .dir("freshdir-after", &d)
        .file("freshdir-after/old", &f, b"old")
        .dir("nested", &d)
        .dir("nested/a", &d)
        .dir("nested/a/b", &d)
        .file("nested/a/b/c", &f, b"c");

    let t = touched(DIR);
    let mut l2 = LayerTar::new(LongNames::Pax);
    l2.whiteout("gone")
        .whiteout("gonedir")
        .whiteout("gonelink")
        .whiteout("never-existed")
        .dir("opq-before", &t)
        .opaque("opq-before")
        .file("opq-before/new", &f, b"new")
        .dir("opq-before/keep", &meta(0o750))
        .file("opq-before/keep/new2", &f, b"new2")
        .dir("opq-after", &t)
        .file("opq-after/new", &f, b"new")
        .dir("opq-after/keep", &meta(0o750))
        .file("opq-after/keep/new2", &f, b"new2")
        .opaque("opq-after")
        .dir("opq-empty", &t)
        .opaque("opq-empty")
        .file("d2f", &f, b"now a file")
        .dir("f2d", &d)
        .file("f2d/inner", &f, b"inner")
        .dir("s2d", &d)
        .file("s2d/in", &f, b"in")
        .symlink("d2s", "etc", &f)
        .file("fresh-after", &f, b"upper")
        .whiteout("fresh-after")
        .whiteout("fresh-before")
        .file("fresh-before", &f, b"upper")
        .whiteout("freshdir-before")
        .dir("freshdir-before", &d)
        .file("freshdir-before/new", &f, b"new")
        .dir("freshdir-after", &d)
        .file("freshdir-after/new", &f, b"new")
        .whiteout("freshdir-after")
        .dir("nested", &d)
        .dir("nested/a", &t)
        .whiteout("nested/a/b");

    let mut l3 = LayerTar::new(LongNames::UstarPrefix);
    l3.dir("opq-before", &touched(0o700))
        .whiteout("opq-before/new")
        .dir("d2f", &d)
        .file("d2f/again", &f, b"again")
        .dir("f2d", &t)
        .opaque("f2d")
        .whiteout("s2d")
        .file("gone", &f, b"back again");
    vec![l1.finish(), l2.finish(), l3.finish()]
}

/// Hard links (to files, a symlink, a FIFO; a group broken up by later layers replacing,
/// deleting and re-moding members) and symlink chains (relative, absolute, through `..`,
/// dangling, looping, to a directory).
pub fn links() -> Vec<Vec<u8>> {
    let f = meta(FILE);
    let d = meta(DIR);
    let x = meta(0o755);
    let mut l1 = LayerTar::new(LongNames::Pax);
    l1.dir("usr", &d)
        .dir("usr/bin", &d)
        .file("usr/bin/real", &x, b"real binary")
        .hardlink("usr/bin/hl1", "usr/bin/real")
        .hardlink("usr/bin/hl2", "./usr/bin/real")
        .dir("usr/lib", &d)
        .file("usr/lib/libx.so.1.2", &x, b"library")
        .symlink("usr/lib/libx.so.1", "libx.so.1.2", &f)
        .symlink("usr/lib/libx.so", "libx.so.1", &f)
        .symlink("lib", "usr/lib", &f)
        .dir("etc", &d)
        .dir("etc/alternatives", &d)
        .symlink("etc/alternatives/editor", "/usr/bin/real", &f)
        .symlink("usr/bin/editor", "/etc/alternatives/editor", &f)
        .dir("data", &d)
        .file("data/a", &f, b"A")
        .hardlink("data/b", "data/a")
        .hardlink("data/c", "data/a")
        .symlink("data/s", "a", &f)
        .hardlink("data/hs", "data/s")
        .symlink("data/r1", "r2", &f)
        .symlink("data/r2", "../data/a", &f)
        .symlink("data/dangle", "/nonexistent/path", &f)
        .symlink("data/dangle-rel", "missing/file", &f)
        .symlink("data/loop1", "loop2", &f)
        .symlink("data/loop2", "loop1", &f)
        .symlink("data/self", "self", &f)
        .symlink("data/dot", ".", &f)
        .symlink("data/up", "../../..", &f)
        .fifo("data/fifo", &f)
        .hardlink("data/fifo-link", "data/fifo");

    let t = touched(DIR);
    let mut l2 = LayerTar::new(LongNames::Gnu);
    l2.dir("data", &t)
        .file("data/a", &meta(0o600), b"A2")
        .whiteout("data/c")
        .file("data/new1", &f, b"N")
        .hardlink("data/new2", "data/new1")
        .hardlink("data/a-link", "data/a")
        .symlink("data/r2", "a", &f)
        .dir("usr", &d)
        .dir("usr/bin", &t)
        .whiteout("usr/bin/hl1");

    let mut l3 = LayerTar::new(LongNames::UstarPrefix);
    l3.dir("usr", &d)
        .dir("usr/bin", &t)
        .file("usr/bin/real", &meta(0o700), b"real binary");
    vec![l1.finish(), l2.finish(), l3.finish()]
}

/// Special bits on files and directories, odd modes, owners up to 65535, mtimes (epoch,
/// nanoseconds, 2100, before 1970), xattrs (user.*, empty and binary values,
/// security.capability), a FIFO, empty directories, sizes around a tar block; then a layer
/// changing the metadata of existing files and directories.
pub fn metadata() -> Vec<Vec<u8>> {
    let f = meta(FILE);
    let d = meta(DIR);
    let mut l1 = LayerTar::new(LongNames::Pax);
    l1.dir("bin", &d)
        .file("bin/suid", &meta(0o4755), b"s")
        .file("bin/sgid", &meta(0o2755).owner(0, 42), b"s")
        .file("bin/sticky", &meta(0o1755), b"s")
        .file("bin/all", &meta(0o7777), b"s")
        .file("bin/sgid-noexec", &meta(0o2644), b"s")
        .file("bin/suid-user", &meta(0o4750).owner(1000, 1000), b"s")
        .file("bin/none", &meta(0o000), b"s")
        .file(
            "bin/ping",
            &meta(0o755).xattr("security.capability", &CAP_NET_RAW),
            b"ping",
        )
        .dir("tmp", &meta(0o1777))
        .dir("shared", &meta(0o2775).owner(1000, 1000))
        .dir("locked", &meta(0o000))
        .file("locked/inside", &meta(0o600), b"in")
        .dir("private", &meta(0o700).owner(1000, 1000))
        .file("private/f", &meta(0o600).owner(1000, 1000), b"f")
        .dir("empty", &d)
        .dir("empty-odd", &meta(0o311).owner(7, 8))
        .dir("ids", &d.clone().owner(1, 2))
        .file("ids/nobody", &f.clone().owner(65534, 65534), b"n")
        .file("ids/max", &f.clone().owner(65535, 65535), b"m")
        .file("ids/mixed", &f.clone().owner(0, 65535), b"m")
        .dir("times", &meta(DIR).mtime(1_234_567_890, 987_654_321))
        .file("times/epoch", &meta(FILE).mtime(0, 0), b"t")
        .file(
            "times/ns",
            &meta(FILE).mtime(1_600_000_000, 123_456_789),
            b"t",
        )
        .file("times/y2100", &meta(FILE).mtime(4_102_444_800, 0), b"t")
        .file("times/pre-epoch", &meta(FILE).mtime(-86_400, 0), b"t")
        .file(
            "times/pre-epoch-frac",
            &meta(FILE).mtime(-86_400, 250_000_000),
            b"t",
        )
        .symlink("times/link", "ns", &meta(FILE).mtime(1_500_000_000, 42))
        .dir("x", &d.clone().xattr("user.dirattr", b"d"))
        .file(
            "x/user",
            &f.clone()
                .xattr("user.mime_type", b"text/plain")
                .xattr("user.empty", b"")
                .xattr("user.bin", &[0, 1, 2, 255]),
            b"u",
        )
        .file(
            "x/cap",
            &meta(0o750)
                .owner(0, 42)
                .xattr("security.capability", &CAP_NET_RAW)
                .xattr("user.also", b"yes"),
            b"c",
        )
        .dir("run", &d)
        .fifo("run/fifo", &meta(0o620).owner(1000, 1000))
        .dir("sizes", &d)
        .file("sizes/empty", &f, b"")
        .file("sizes/512", &f, &[7u8; 512])
        .file("sizes/513", &f, &[8u8; 513])
        .file("sizes/1m", &f, &pattern(1 << 20));

    let t = touched(DIR);
    let mut l2 = LayerTar::new(LongNames::Gnu);
    l2.dir("x", &meta(0o750).owner(5, 5).xattr("user.other", b"o"))
        .file("x/user", &meta(0o600), b"u2")
        .dir("tmp", &meta(0o777))
        .dir("private", &meta(0o750).owner(2000, 2000))
        .dir("bin", &t)
        .file("bin/suid", &meta(0o755), b"s")
        .dir("times", &meta(DIR).mtime(1_300_000_000, 1));
    vec![l1.finish(), l2.finish()]
}

/// A POSIX ACL in the `posix_acl_xattr` format (`SCHILY.xattr.system.posix_acl_*`, as Go's
/// archive/tar and umoci write it), from its short text form: `u::rwx,u:1000:r-x,g::r-x,m::rwx,o::---`.
pub fn acl(text: &str) -> Vec<u8> {
    let mut value = 2u32.to_le_bytes().to_vec();
    for item in text.split(',') {
        let fields: Vec<&str> = item.split(':').collect();
        let [kind, id, perm] = fields[..] else {
            panic!("ACL entry {item:?}: not kind:id:perm")
        };
        let tag: u16 = match (kind, id.is_empty()) {
            ("u", true) => 0x01,
            ("u", false) => 0x02,
            ("g", true) => 0x04,
            ("g", false) => 0x08,
            ("m", true) => 0x10,
            ("o", true) => 0x20,
            _ => panic!("ACL entry {item:?}"),
        };
        let perm = perm
            .chars()
            .zip([4u16, 2, 1])
            .map(|(c, bit)| if c == '-' { 0 } else { bit })
            .sum::<u16>();
        let id = if id.is_empty() {
            u32::MAX
        } else {
            id.parse().expect("numeric ACL id")
        };
        value.extend_from_slice(&tag.to_le_bytes());
        value.extend_from_slice(&perm.to_le_bytes());
        value.extend_from_slice(&id.to_le_bytes());
    }
    value
}

/// POSIX ACLs (access and default, named users and groups from 0 to 65535) on directories,
/// files and a setgid directory, with what a tar writer records for the entries created in a
/// directory with a default ACL (an inherited one, or none where the entry was there first);
/// then a layer listing the directories again (one keeping its ACLs, one losing them, one
/// gaining a default ACL only) and adding an entry without ACLs under a default ACL.
pub fn acls() -> Vec<Vec<u8>> {
    let shared = "u::rwx,u:1000:r-x,g::rwx,g:2000:rwx,m::rwx,o::r-x";
    let file_acl = "u::rw-,u:1000:r-x,g::rwx,g:2000:rwx,m::rw-,o::r--";
    let mut l1 = LayerTar::new(LongNames::Pax);
    let shared_meta = meta(0o2775)
        .owner(0, 2000)
        .xattr("system.posix_acl_access", &acl(shared))
        .xattr("system.posix_acl_default", &acl(shared));
    l1.dir("acl", &meta(DIR))
        .dir("acl/shared", &shared_meta)
        .file(
            "acl/shared/f",
            &meta(0o664).xattr("system.posix_acl_access", &acl(file_acl)),
            b"f",
        )
        .file("acl/shared/plain", &meta(0o640), b"p")
        .dir("acl/shared/sub", &meta(0o750))
        .dir(
            "acl/shared/inherited",
            &meta(0o2775)
                .owner(0, 2000)
                .xattr("system.posix_acl_access", &acl(shared))
                .xattr("system.posix_acl_default", &acl(shared)),
        )
        .file("acl/shared/inherited/deeper", &meta(0o600), b"d")
        .fifo("acl/shared/fifo", &meta(0o620))
        .symlink("acl/shared/link", "f", &meta(0o777))
        .dir(
            "acl/ids",
            &meta(0o770).xattr(
                "system.posix_acl_access",
                &acl("u::rwx,u:0:r-x,u:65535:rwx,g::r-x,g:0:r-x,g:65535:r--,m::rwx,o::---"),
            ),
        )
        .file(
            "acl/ids/masked",
            &meta(0o640).owner(1000, 1000).xattr(
                "system.posix_acl_access",
                &acl("u::rw-,u:1:rwx,g::r--,m::r--,o::---"),
            ),
            b"m",
        )
        .dir(
            "acl/relisted",
            &meta(0o775)
                .xattr("system.posix_acl_access", &acl(shared))
                .xattr("system.posix_acl_default", &acl(shared)),
        );

    let mut l2 = LayerTar::new(LongNames::Gnu);
    l2.dir("acl", &touched(DIR))
        .dir("acl/shared", &shared_meta.clone().mtime(1_700_000_000, 5))
        .file("acl/shared/later", &meta(0o600), b"l")
        .dir("acl/shared/later-dir", &meta(0o700))
        .dir("acl/relisted", &touched(0o755))
        .dir(
            "acl/new-default",
            &meta(0o755).xattr(
                "system.posix_acl_default",
                &acl("u::rwx,g::r-x,g:7:r-x,m::r-x,o::r-x"),
            ),
        );
    vec![l1.finish(), l2.finish()]
}

/// Names and link targets longer than a ustar header holds, in PAX, GNU and ustar-prefix
/// spelling (a 200-byte component, a component of exactly 100 bytes, UTF-8 and spaces), and
/// whiteouts and opaque markers under long names.
pub fn long_names() -> Vec<Vec<u8>> {
    let f = meta(FILE);
    let d = meta(DIR);
    let (a60, b60, c80) = ("a".repeat(60), "b".repeat(60), "c".repeat(80));
    let deep = format!("long/{a60}/{b60}/{c80}");
    let d200 = "d".repeat(200);
    let mut l1 = LayerTar::new(LongNames::Pax);
    l1.dir("long", &d)
        .dir(&format!("long/{a60}"), &d)
        .dir(&format!("long/{a60}/{b60}"), &d)
        .file(&deep, &f, b"deep")
        .file(&format!("long/{d200}"), &f, b"d200")
        .symlink("long/sym-to-long", &format!("{a60}/{b60}/{c80}"), &f)
        .hardlink("long/hl-to-long", &deep)
        .file("long/ünïcødé 名前 ✓", &f, b"utf8")
        .file("long/with space and 'quotes'", &f, b"q");

    let (e120, f120) = ("e".repeat(120), "f".repeat(120));
    let gnu = format!("long/gnu/{e120}/{f120}");
    let mut l2 = LayerTar::new(LongNames::Gnu);
    l2.dir("long", &touched(DIR))
        .dir("long/gnu", &d)
        .dir(&format!("long/gnu/{e120}"), &d)
        .file(&gnu, &f, b"gnu")
        .symlink("long/gnu-sym", &format!("gnu/{e120}/{f120}"), &f)
        .hardlink("long/gnu-hl", &gnu)
        .whiteout(&format!("long/{d200}"))
        .dir(&format!("long/{a60}"), &touched(DIR))
        .opaque(&format!("long/{a60}"))
        .file(&format!("long/{a60}/new"), &f, b"new");

    let (g90, h90, i100) = ("g".repeat(90), "h".repeat(90), "i".repeat(100));
    let mut l3 = LayerTar::new(LongNames::UstarPrefix);
    l3.dir("long", &touched(DIR))
        .dir("long/ustar", &d)
        .dir(&format!("long/ustar/{g90}"), &d)
        .file(&format!("long/ustar/{g90}/{h90}"), &f, b"prefix")
        .file(&format!("long/{i100}"), &f, b"exactly 100");
    vec![l1.finish(), l2.finish(), l3.finish()]
}

/// Layers no image builder writes, applied as the OCI rules say: a layer writing through a
/// lower layer's symlink (`lib/x`) and into directories it does not list (`etc/passwd`,
/// `home/u/g`, an opaque marker without its directory). The layer directories are settled
/// against the layers below them, so the overlay shows what umoci's merged tree holds. The
/// opaque marker comes after the layer's own entries in its directory when `opaque_after`.
pub fn handmade(opaque_after: bool) -> Vec<Vec<u8>> {
    let f = meta(FILE);
    let d = meta(DIR);
    let mut l1 = LayerTar::new(LongNames::Pax);
    l1.dir("etc", &d)
        .file("etc/passwd", &f, b"root:x:0:0")
        .file("etc/shadow", &meta(0o640).owner(0, 42), b"secret")
        .hardlink("etc/passwd-", "etc/passwd")
        .dir("usr", &d)
        .dir("usr/lib", &d)
        .file("usr/lib/libc.so", &meta(0o755), b"libc")
        .symlink("lib", "usr/lib", &f)
        .dir("home", &d)
        .dir("home/u", &meta(0o700).owner(1000, 1000))
        .file("home/u/f", &f.clone().owner(1000, 1000), b"u")
        .dir("opq", &d)
        .file("opq/old", &f, b"old")
        .dir("opq/keep", &d)
        .file("opq/keep/lowerchild", &f, b"lower")
        .symlink("sym", "/etc", &f);

    let mut l2 = LayerTar::new(LongNames::Pax);
    if !opaque_after {
        l2.opaque("opq");
    }
    l2.file("opq/new", &f, b"new")
        .dir("opq/keep", &meta(0o750))
        .file("opq/keep/new2", &f, b"new2");
    if opaque_after {
        l2.opaque("opq");
    }
    l2.whiteout("sym").file("home/u/g", &f, b"g");

    let mut l3 = LayerTar::new(LongNames::Pax);
    l3.file("lib/x", &f, b"via lib")
        .file("etc/passwd", &f, b"root:x:0:0:new");
    vec![l1.finish(), l2.finish(), l3.finish()]
}

/// Hard links to lower layers' files (issue 21, case 1): one beside entries of the layer's
/// own, one into a directory the layer does not list, one to the link itself, one to a lower
/// symlink. envbox copies the lower file up into the layer and links to the copy, so the
/// merged view holds one inode under every name, as umoci's tree does. (containerd's overlay
/// snapshotter applies a layer onto its upper directory only and fails on these links; where
/// it applies onto a merged tree, as umoci, it links.)
pub fn lower_hardlink() -> Vec<Vec<u8>> {
    let mut l1 = LayerTar::new(LongNames::Pax);
    l1.dir("usr", &meta(DIR))
        .file("usr/libc.so", &meta(0o755), b"libc")
        .dir("usr/lib", &meta(0o750).owner(0, 42))
        .file(
            "usr/lib/ld.so",
            &meta(0o4755).owner(7, 8).xattr("user.origin", b"lower"),
            b"ld",
        )
        .symlink("usr/sh", "libc.so", &meta(FILE));
    let mut l2 = LayerTar::new(LongNames::Pax);
    l2.hardlink("hl", "usr/libc.so")
        .dir("usr", &meta(DIR))
        .file("usr/other", &meta(FILE), b"o")
        .hardlink("hl2", "hl")
        .dir("bin", &meta(DIR))
        .hardlink("bin/ld", "usr/lib/ld.so")
        .hardlink("sh", "usr/sh");
    vec![l1.finish(), l2.finish()]
}

/// Whiteouts of what the lower layers do not have as a directory's entry (issue 21, case 2):
/// below a lower regular file, below a missing path, of a missing name; beside a whiteout of
/// a real lower entry in a directory the layer does not list. They change nothing: no
/// directory appears where the lower file is. (containerd's overlay apply makes `f` a
/// directory holding a whiteout device there; umoci's tree, and the issue, keep `f` a file.)
pub fn whiteout_under_lower_file() -> Vec<Vec<u8>> {
    let f = meta(FILE);
    let mut l1 = LayerTar::new(LongNames::Pax);
    l1.file("f", &f, b"a file")
        .dir("d", &meta(0o711).owner(3, 4))
        .file("d/x", &f, b"x")
        .file("d/y", &f, b"y");
    let mut l2 = LayerTar::new(LongNames::Pax);
    l2.whiteout("f/x")
        .whiteout("missing/y")
        .whiteout("nothing")
        .whiteout("d/x");
    vec![l1.finish(), l2.finish()]
}

/// A usr-merge conversion (issue 21, case 3): a layer deletes `bin`, makes it a symlink to
/// `usr/bin` and writes `bin/ls` after it, which lands below the symlink's target; it also
/// writes below a lower layer's symlink (`lib/new.so`, landing in `usr/lib`) and below
/// symlinks that climb out of the root or are absolute (resolved in-root). umoci and
/// containerd agree on the layer's own symlinks. Below a lower layer's symlink containerd's
/// overlay apply makes a directory in the upper layer that hides the symlink (and all of
/// `usr/lib` through it); envbox follows the symlink as umoci does and as issue 21 asks
/// (the parent resolves through this layer and the lower view).
pub fn below_symlinks() -> Vec<Vec<u8>> {
    let f = meta(FILE);
    let d = meta(DIR);
    let mut l1 = LayerTar::new(LongNames::Pax);
    l1.dir("bin", &d)
        .file("bin/ls", &meta(0o755), b"old ls")
        .dir("usr", &d)
        .dir("usr/bin", &meta(0o751))
        .file("usr/bin/env", &meta(0o755), b"env")
        .dir("usr/lib", &meta(0o750))
        .file("usr/lib/libc.so", &f, b"libc")
        .symlink("lib", "usr/lib", &f)
        .dir("usr/share", &d);
    let mut l2 = LayerTar::new(LongNames::Pax);
    l2.whiteout("bin")
        .symlink("bin", "usr/bin", &f)
        .file("bin/ls", &meta(0o755), b"new ls")
        .file("lib/new.so", &f, b"new")
        .symlink("up", "../../../usr/share", &f)
        .file("up/doc", &f, b"doc")
        .symlink("abs", "/usr/share", &f)
        .file("abs/doc2", &f, b"doc2");
    vec![l1.finish(), l2.finish()]
}

/// Directories a layer needs and does not list (issue 21's implicit directories, what `umoci
/// repack` writes for every directory whose own metadata did not change): in the overlay
/// they show the lower directory's owner, mode, xattrs and mtime; one the lower layers do
/// not have is 0755 root.
pub fn implicit_dirs() -> Vec<Vec<u8>> {
    let f = meta(FILE);
    let mut l1 = LayerTar::new(LongNames::Pax);
    l1.dir(
        "etc",
        &meta(0o751)
            .owner(3, 4)
            .xattr("user.tag", b"etc")
            .mtime(1_400_000_000, 0),
    )
    .dir("etc/systemd", &meta(0o700).mtime(1_400_000_100, 0))
    .dir("etc/systemd/system", &meta(DIR))
    .file("etc/systemd/system/old.service", &f, b"old");
    let mut l2 = LayerTar::new(LongNames::Pax);
    l2.file("etc/systemd/system/new.service", &f, b"new");
    let mut l3 = LayerTar::new(LongNames::Pax);
    l3.file("etc/systemd/user/x.service", &f, b"x")
        .file("srv/new/file", &f, b"file");
    vec![l1.finish(), l2.finish(), l3.finish()]
}

/// An entry below a lower layer's regular file: containerd's overlay apply makes a directory
/// there (0755 root) that replaces the file, and so does envbox. The reference is that tree:
/// umoci's unpack of the same layers with an explicit whiteout of the file first, since umoci
/// refuses the original (`explicit`).
pub fn below_lower_file(explicit: bool) -> Vec<Vec<u8>> {
    let f = meta(FILE);
    let mut l1 = LayerTar::new(LongNames::Pax);
    l1.file("file", &f, b"a file");
    let mut l2 = LayerTar::new(LongNames::Pax);
    if explicit {
        l2.whiteout("file");
    }
    l2.file("file/inside", &f, b"inside");
    vec![l1.finish(), l2.finish()]
}

/// `len` bytes of a repeating, slightly varying text (compressible like real files).
pub fn pattern(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut n = 0u64;
    while out.len() < len {
        out.extend_from_slice(format!("line {n} of a generated file\n").as_bytes());
        n += 1;
    }
    out.truncate(len);
    out
}
