//! Tests of the layer store: tar streams built here (raw headers for the malicious ones),
//! unpacked for real. They need root (chown, mknod, trusted.* xattrs) and panic without it.

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tar::{EntryType, Header};

use super::*;

pub(super) fn needs_root() {
    assert!(nix::unistd::Uid::effective().is_root(), "needs root");
}

// ---- building layers ----

/// A tar stream under construction, entry by entry, with raw names (no validation).
pub(super) struct Layer {
    builder: tar::Builder<Vec<u8>>,
}

/// Metadata of an entry to add.
#[derive(Clone, Copy)]
pub(super) struct Meta {
    pub(super) uid: u64,
    pub(super) gid: u64,
    pub(super) mode: u32,
    pub(super) mtime: u64,
}

pub(super) const M: Meta = Meta {
    uid: 0,
    gid: 0,
    mode: 0o644,
    mtime: 1_600_000_000,
};

impl Layer {
    pub(super) fn new() -> Self {
        Layer {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn header(name: &str, kind: EntryType, meta: Meta, size: u64, link: &str) -> Header {
        let mut h = Header::new_ustar();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_uid(meta.uid);
        h.set_gid(meta.gid);
        h.set_mode(meta.mode);
        h.set_mtime(meta.mtime);
        let old = h.as_old_mut();
        assert!(name.len() < 100 && link.len() < 100);
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_cksum();
        h
    }

    pub(super) fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut data = Vec::new();
        for (key, value) in records {
            // "<len> <key>=<value>\n" where len counts itself.
            let body = key.len() + value.len() + 3;
            let mut len = body + body.to_string().len();
            if len.to_string().len() != body.to_string().len() {
                len += 1;
            }
            data.extend_from_slice(format!("{len} {key}=").as_bytes());
            data.extend_from_slice(value);
            data.push(b'\n');
        }
        let h = Self::header("PaxHeader", EntryType::XHeader, M, data.len() as u64, "");
        self.builder
            .append(&h, data.as_slice())
            .expect("append pax");
        self
    }

    pub(super) fn file(&mut self, name: &str, meta: Meta, data: &[u8]) -> &mut Self {
        let h = Self::header(name, EntryType::Regular, meta, data.len() as u64, "");
        self.builder.append(&h, data).expect("append file");
        self
    }

    pub(super) fn dir(&mut self, name: &str, meta: Meta) -> &mut Self {
        self.other(name, EntryType::Directory, meta, "")
    }

    pub(super) fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.other(name, EntryType::Symlink, M, target)
    }

    pub(super) fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.other(name, EntryType::Link, M, target)
    }

    pub(super) fn other(
        &mut self,
        name: &str,
        kind: EntryType,
        meta: Meta,
        link: &str,
    ) -> &mut Self {
        let h = Self::header(name, kind, meta, 0, link);
        self.builder.append(&h, &[][..]).expect("append entry");
        self
    }

    pub(super) fn finish(&mut self) -> Vec<u8> {
        let builder = std::mem::replace(&mut self.builder, tar::Builder::new(Vec::new()));
        builder.into_inner().expect("finish tar")
    }
}

pub(super) fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).expect("gzip");
    enc.finish().expect("gzip")
}

// ---- the workspace: a state dir and a sentinel beside it ----

pub(super) struct Work {
    _tmp: tempfile::TempDir,
    pub(super) state: PathBuf,
    pub(super) sentinel: PathBuf,
    pub(super) store: LayerStore,
    sentinel_before: (Vec<String>, SystemTime),
}

fn listing(dir: &Path) -> (Vec<String>, SystemTime) {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mtime = fs::metadata(dir).expect("stat").modified().expect("mtime");
    (names, mtime)
}

/// Unpacks an image's layers one after another: each staged, then published onto the ones
/// below it (what `prepare::unpack_all` does in parallel).
pub(super) fn unpack_image(
    store: &LayerStore,
    sources: &[LayerSource],
    limits: &Limits,
) -> Result<Vec<UnpackReport>, UnpackError> {
    let diff_ids: Vec<Digest> = sources.iter().map(|s| s.diff_id.clone()).collect();
    let mut below = Vec::new();
    let mut reports = Vec::new();
    for (source, chain) in sources.iter().zip(chain_ids(&diff_ids)) {
        let report = match store.stage(source, &chain, limits)? {
            Stage::Complete => UnpackReport {
                reused: true,
                ..UnpackReport::default()
            },
            Stage::Staged(staged) => store.publish(staged, &below)?,
        };
        below.push(store.path(&chain));
        reports.push(report);
    }
    Ok(reports)
}

/// One layer as a whole image (its chain ID is its diff ID).
pub(super) trait UnpackOne {
    fn unpack(&self, source: &LayerSource, limits: &Limits) -> Result<UnpackReport, UnpackError>;
}

impl UnpackOne for LayerStore {
    fn unpack(&self, source: &LayerSource, limits: &Limits) -> Result<UnpackReport, UnpackError> {
        unpack_image(self, std::slice::from_ref(source), limits).map(|mut r| r.remove(0))
    }
}

impl Work {
    pub(super) fn new() -> Self {
        needs_root();
        // The temp dir's filesystem must take user.* and trusted.* xattrs (ext4 here).
        let tmp = tempfile::Builder::new()
            .prefix("envbox-unpack-test")
            .tempdir()
            .expect("tempdir");
        let state = tmp.path().join("state");
        let sentinel = tmp.path().join("sentinel");
        fs::create_dir_all(sentinel.join("inside")).expect("sentinel");
        fs::write(sentinel.join("file"), b"sentinel").expect("sentinel");
        fs::write(sentinel.join("passwd"), b"root:x:0:0").expect("sentinel");
        let store = LayerStore::open(&state).expect("open store");
        let sentinel_before = listing(&sentinel);
        Work {
            _tmp: tmp,
            state,
            sentinel,
            store,
            sentinel_before,
        }
    }

    fn source(&self, blob: &[u8], compression: Compression, tar: &[u8]) -> LayerSource {
        let digest = Digest::of(blob);
        let path = self.state.join(format!("blob-{}", digest.hex()));
        fs::write(&path, blob).expect("write blob");
        LayerSource {
            blob: path,
            compression,
            digest,
            diff_id: Digest::of(tar),
        }
    }

    /// Unpacks layers (bottom first) as one image; the layer directories, bottom first.
    pub(super) fn unpack_layers(
        &self,
        tars: &[Vec<u8>],
    ) -> (Result<Vec<UnpackReport>, UnpackError>, Vec<PathBuf>) {
        let sources: Vec<LayerSource> = tars
            .iter()
            .map(|tar| self.source(&gzip(tar), Compression::Gzip, tar))
            .collect();
        let diff_ids: Vec<Digest> = sources.iter().map(|s| s.diff_id.clone()).collect();
        let result = unpack_image(&self.store, &sources, &Limits::default());
        (result, self.store.image_layer_dirs(&diff_ids))
    }

    pub(super) fn unpack_tar(&self, tar: &[u8]) -> (Result<UnpackReport, UnpackError>, PathBuf) {
        let source = self.source(&gzip(tar), Compression::Gzip, tar);
        let result = self.store.unpack(&source, &Limits::default());
        (result, self.store.path(&source.diff_id))
    }

    pub(super) fn unpack_ok(&self, tar: &[u8]) -> (UnpackReport, PathBuf) {
        let (result, path) = self.unpack_tar(tar);
        (result.expect("unpack"), path)
    }

    /// Nothing outside the store changed; no staging directory is left.
    pub(super) fn check_contained(&self) {
        assert_eq!(
            listing(&self.sentinel),
            self.sentinel_before,
            "sentinel changed"
        );
        assert_eq!(
            fs::read(self.sentinel.join("file")).expect("read"),
            b"sentinel"
        );
        assert!(fs::read_dir(self.sentinel.join("inside"))
            .expect("list")
            .next()
            .is_none());
        assert!(!Path::new("/etc/envbox-unpack-test").exists());
        let staging: Vec<_> = fs::read_dir(self.state.join("layers/chain/.staging"))
            .expect("list")
            .collect();
        assert!(staging.is_empty(), "staging left: {staging:?}");
    }

    /// The state dir's path without its leading `/`, to aim absolute names at the sentinel.
    pub(super) fn sentinel_abs(&self) -> String {
        self.sentinel.to_string_lossy().into_owned()
    }
}

pub(super) fn lstat(path: &Path) -> fs::Metadata {
    fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub(super) fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let cpath = CString::new(path.as_os_str().as_bytes()).expect("path");
    let cname = CString::new(name).expect("name");
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and a buffer of the given length.
    let n = unsafe {
        libc::lgetxattr(
            cpath.as_ptr(),
            cname.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (n >= 0).then(|| {
        buf.truncate(n as usize);
        buf
    })
}

pub(super) fn assert_owner(path: &Path, uid: u32, gid: u32) {
    let m = lstat(path);
    assert_eq!(
        (m.uid(), m.gid()),
        (uid + ID_SHIFT, gid + ID_SHIFT),
        "{}",
        path.display()
    );
}

pub(super) fn is_whiteout(path: &Path) -> bool {
    let m = lstat(path);
    m.file_type().is_char_device() && m.rdev() == 0 && m.uid() == ID_SHIFT && m.gid() == ID_SHIFT
}

// A v2 file capability (cap_net_bind_service, effective).
const CAP: &[u8] = &[0, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

fn rich_layer() -> Vec<u8> {
    let mut l = Layer::new();
    l.dir(
        "./",
        Meta {
            mode: 0o700,
            uid: 5,
            ..M
        },
    )
    .dir(
        "d/",
        Meta {
            uid: 1,
            gid: 2,
            mode: 0o750,
            mtime: 1000,
        },
    )
    .pax(&[
        ("SCHILY.xattr.security.capability", CAP),
        ("SCHILY.xattr.user.foo", b"bar"),
        ("SCHILY.xattr.trusted.evil", b"x"),
        ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
        ("mtime", b"2000.25"),
    ])
    .file(
        "d/f",
        Meta {
            uid: 3,
            gid: 4,
            mode: 0o4755,
            mtime: 1,
        },
        b"hello",
    )
    .symlink("d/l", "../etc/target")
    .hardlink("d/h", "d/f")
    .other(
        "p",
        EntryType::Fifo,
        Meta {
            mode: 0o640,
            uid: 7,
            gid: 8,
            mtime: 3000,
        },
        "",
    )
    .other("null", EntryType::Char, M, "")
    .dir("tmp/", Meta { mode: 0o1777, ..M })
    .dir("g/", Meta { mode: 0o2775, ..M })
    .file("implicit/parent/file", M, b"x");
    l.finish()
}

fn check_rich(root: &Path, report: &UnpackReport) {
    let m = lstat(root);
    assert_eq!(m.mode() & 0o7777, 0o755);
    assert_owner(root, 0, 0);

    let d = root.join("d");
    let m = lstat(&d);
    assert!(m.is_dir());
    assert_eq!(m.mode() & 0o7777, 0o750);
    assert_owner(&d, 1, 2);
    assert_eq!(m.mtime(), 1000, "directory mtime set after its contents");

    let f = d.join("f");
    let m = lstat(&f);
    assert!(m.is_file());
    assert_eq!(fs::read(&f).expect("read"), b"hello");
    assert_eq!(m.mode() & 0o7777, 0o4755, "setuid survives the chown");
    assert_owner(&f, 3, 4);
    assert_eq!(
        (m.mtime(), m.mtime_nsec()),
        (2000, 250_000_000),
        "PAX mtime"
    );
    assert_eq!(xattr(&f, "security.capability").as_deref(), Some(CAP));
    assert_eq!(xattr(&f, "user.foo").as_deref(), Some(&b"bar"[..]));
    assert_eq!(xattr(&f, "trusted.evil"), None);
    assert_eq!(xattr(&f, "trusted.overlay.opaque"), None);

    let l = d.join("l");
    assert!(lstat(&l).file_type().is_symlink());
    assert_eq!(
        fs::read_link(&l).expect("readlink"),
        PathBuf::from("../etc/target")
    );
    assert_owner(&l, 0, 0);
    assert_eq!(lstat(&l).mtime(), M.mtime as i64);

    assert_eq!(lstat(&d.join("h")).ino(), m.ino(), "hard link");

    let p = root.join("p");
    let m = lstat(&p);
    assert!(m.file_type().is_fifo());
    assert_eq!(m.mode() & 0o7777, 0o640);
    assert_owner(&p, 7, 8);
    assert_eq!(m.mtime(), 3000);

    assert!(!root.join("null").exists(), "device nodes are not created");
    assert!(report
        .warnings
        .iter()
        .any(|w| w.contains("null") && w.contains("device")));
    assert!(report.warnings.iter().any(|w| w.contains("trusted.evil")));

    assert_eq!(lstat(&root.join("tmp")).mode() & 0o7777, 0o1777);
    assert_eq!(lstat(&root.join("g")).mode() & 0o7777, 0o2775);
    let implicit = root.join("implicit/parent");
    assert_eq!(lstat(&implicit).mode() & 0o7777, 0o755);
    assert_owner(&implicit, 0, 0);
    assert_eq!(fs::read(implicit.join("file")).expect("read"), b"x");
}

#[test]
fn gzip_layer_unpacks_shifted() {
    let w = Work::new();
    let tar = rich_layer();
    let (report, root) = w.unpack_ok(&tar);
    assert!(!report.reused);
    assert_eq!(report.entries, 10);
    assert!(report.bytes >= tar.len() as u64 - 1024);
    check_rich(&root, &report);
    w.check_contained();

    // A second unpack is a no-op.
    let (again, _) = w.unpack_ok(&tar);
    assert!(again.reused);
    assert_eq!(again.entries, 0);
}

#[test]
fn zstd_and_plain_layers_unpack() {
    let w = Work::new();
    let tar = rich_layer();
    let zst = zstd::encode_all(tar.as_slice(), 3).expect("zstd");
    let source = w.source(&zst, Compression::Zstd, &tar);
    let report = w
        .store
        .unpack(&source, &Limits::default())
        .expect("unpack zstd");
    check_rich(&w.store.path(&source.diff_id), &report);

    let mut plain = tar.clone();
    plain.extend_from_slice(&[0; 512]); // trailing padding: a different diff ID
    let source = w.source(&plain, Compression::None, &plain);
    let report = w
        .store
        .unpack(&source, &Limits::default())
        .expect("unpack plain");
    check_rich(&w.store.path(&source.diff_id), &report);
    w.check_contained();
}

#[test]
fn multi_member_gzip_unpacks_fully() {
    let w = Work::new();
    let mut l = Layer::new();
    for i in 0..50 {
        l.file(&format!("f{i}"), M, format!("content {i}").as_bytes());
    }
    let tar = l.finish();
    let (a, b) = tar.split_at(tar.len() / 2 + 100);
    let mut blob = gzip(a);
    blob.extend_from_slice(&gzip(b));
    let source = w.source(&blob, Compression::Gzip, &tar);
    let report = w.store.unpack(&source, &Limits::default()).expect("unpack");
    assert_eq!(report.entries, 50);
    let root = w.store.path(&source.diff_id);
    assert_eq!(fs::read(root.join("f49")).expect("read"), b"content 49");
}

/// Zero padding after the last member is accepted; its bytes are part of the blob's digest.
#[test]
fn a_gzip_layer_padded_with_zeros_unpacks() {
    let w = Work::new();
    let mut l = Layer::new();
    l.file("padded", M, b"yes");
    let tar = l.finish();
    let mut blob = gzip(&tar);
    blob.extend_from_slice(&[0; 10_240]);
    let source = w.source(&blob, Compression::Gzip, &tar);
    w.store.unpack(&source, &Limits::default()).expect("unpack");
    let root = w.store.path(&source.diff_id);
    assert_eq!(fs::read(root.join("padded")).expect("read"), b"yes");
}

#[test]
fn whiteouts_become_overlay_whiteouts() {
    let w = Work::new();
    let mut l = Layer::new();
    l.file(".wh.gone", M, b"")
        .file("d/.wh.x", M, b"")
        // Opaque marker after the directory's entries...
        .dir("o1/", M)
        .file("o1/a", M, b"a")
        .file("o1/.wh..wh..opq", M, b"")
        // ... and before them, the directory entry itself coming later.
        .file("o2/.wh..wh..opq", M, b"")
        .dir("o2/", Meta { mode: 0o700, ..M })
        .file("o2/a", M, b"a")
        // OCI: a whiteout only hides lower layers; this layer's entry stays, in either order.
        .file("k", M, b"kept")
        .file(".wh.k", M, b"")
        .file(".wh.k2", M, b"")
        .file("k2", M, b"kept")
        // A directory that replaces a whiteout of this layer hides the lower one: opaque.
        .file(".wh.dd", M, b"")
        .dir("dd/", M)
        .dir("de/", M)
        .file(".wh.de", M, b"");
    // Whiteouts are written only where the layers below have something.
    let lower = Layer::new()
        .file("gone", M, b"")
        .dir("d/", Meta { mode: 0o750, ..M })
        .file("d/x", M, b"")
        .finish();
    let (result, dirs) = w.unpack_layers(&[lower, l.finish()]);
    result.expect("unpack");
    let root = &dirs[1];
    assert!(is_whiteout(&root.join("gone")));
    assert!(is_whiteout(&root.join("d/x")));
    assert_eq!(lstat(&root.join("d")).mode() & 0o7777, 0o750, "d as below");
    for dir in ["o1", "o2", "dd", "de"] {
        let dir = root.join(dir);
        assert_eq!(
            xattr(&dir, "trusted.overlay.opaque").as_deref(),
            Some(&b"y"[..]),
            "{}",
            dir.display()
        );
    }
    assert_eq!(fs::read(root.join("o1/a")).expect("read"), b"a");
    assert_eq!(fs::read(root.join("o2/a")).expect("read"), b"a");
    assert_eq!(lstat(&root.join("o2")).mode() & 0o7777, 0o700);
    assert_eq!(fs::read(root.join("k")).expect("read"), b"kept");
    assert_eq!(fs::read(root.join("k2")).expect("read"), b"kept");
    assert!(!root.join(".wh.k").exists() && !root.join("o1/.wh..wh..opq").exists());
    assert_eq!(xattr(&root.join("d"), "trusted.overlay.opaque"), None);
    w.check_contained();
}

/// Inodes born with their owner (the writer creates as the shifted root) or mode (when the
/// umask leaves it alone) must still end exactly as listed, in a setgid directory too.
#[test]
fn owners_and_modes_are_exact_whether_set_at_creation_or_after() {
    let w = Work::new();
    let mut l = Layer::new();
    l.dir(
        "sg/",
        Meta {
            gid: 50,
            mode: 0o2775,
            ..M
        },
    )
    // 0:0 in a setgid directory: the group is 0, not the directory's.
    .file("sg/f", M, b"f")
    .symlink("sg/l", "f")
    .file("sg/.wh.gone", M, b"")
    .dir("sg/sub/", Meta { mode: 0o755, ..M })
    // Modes a umask of 022 would cut, and owners other than root.
    .file("open/rw", Meta { mode: 0o666, ..M }, b"")
    .file("open/rwx", Meta { mode: 0o777, ..M }, b"")
    .file("open/private", Meta { mode: 0o600, ..M }, b"")
    .file(
        "open/theirs",
        Meta {
            uid: 1000,
            gid: 1000,
            mode: 0o664,
            ..M
        },
        b"",
    )
    .symlink("open/l", "rw")
    .file("plain", M, b"p");
    let lower = Layer::new().dir("sg/", M).file("sg/gone", M, b"").finish();
    let (result, dirs) = w.unpack_layers(&[lower, l.finish()]);
    result.expect("unpack");
    let root = &dirs[1];
    for (path, uid, gid, mode) in [
        ("sg", 0, 50, 0o2775),
        ("sg/f", 0, 0, 0o644),
        ("sg/sub", 0, 0, 0o755),
        ("open/rw", 0, 0, 0o666),
        ("open/rwx", 0, 0, 0o777),
        ("open/private", 0, 0, 0o600),
        ("open/theirs", 1000, 1000, 0o664),
        ("plain", 0, 0, 0o644),
    ] {
        let path = root.join(path);
        assert_owner(&path, uid, gid);
        assert_eq!(lstat(&path).mode() & 0o7777, mode, "{}", path.display());
    }
    assert_owner(&root.join("sg/l"), 0, 0);
    assert_owner(&root.join("open/l"), 0, 0);
    assert!(
        is_whiteout(&root.join("sg/gone")),
        "whiteout owned 0:0 shifted"
    );
    w.check_contained();
}

/// A default ACL on the cache directory is not inherited by the layer: the modes are the
/// layer's, and no file gets an ACL.
#[test]
fn a_default_acl_on_the_cache_does_not_reach_the_layer() {
    let w = Work::new();
    // system.posix_acl_default: version 2; user::rw-, group::---, other::---.
    let mut acl = 2u32.to_le_bytes().to_vec();
    for (tag, perm) in [(0x01u16, 6u16), (0x04, 0), (0x20, 0)] {
        acl.extend_from_slice(&tag.to_le_bytes());
        acl.extend_from_slice(&perm.to_le_bytes());
        acl.extend_from_slice(&u32::MAX.to_le_bytes());
    }
    let staging =
        CString::new(w.state.join("layers/chain/.staging").as_os_str().as_bytes()).unwrap();
    // SAFETY: valid C strings and a value slice of the given length.
    let rc = unsafe {
        libc::lsetxattr(
            staging.as_ptr(),
            c"system.posix_acl_default".as_ptr(),
            acl.as_ptr().cast(),
            acl.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "setting a default ACL: {}",
        std::io::Error::last_os_error()
    );
    let mut l = Layer::new();
    l.dir("d/", Meta { mode: 0o755, ..M })
        .file("d/f", M, b"f")
        .file("g", Meta { mode: 0o755, ..M }, b"g");
    let (_, root) = w.unpack_ok(&l.finish());
    for (path, mode) in [("", 0o755), ("d", 0o755), ("d/f", 0o644), ("g", 0o755)] {
        let path = root.join(path);
        assert_eq!(lstat(&path).mode() & 0o7777, mode, "{}", path.display());
        for acl in ["system.posix_acl_access", "system.posix_acl_default"] {
            assert_eq!(xattr(&path, acl), None, "{acl} on {}", path.display());
        }
    }
}

#[test]
fn duplicates_replace_or_merge() {
    let w = Work::new();
    let mut l = Layer::new();
    l.file("x", M, b"file")
        .dir("x/", M)
        .file("x/y", M, b"y")
        .dir("z/", M)
        .file("z/a/b", M, b"deep")
        .file("z", M, b"now a file")
        .file("w", M, b"1")
        .file("w", M, b"2")
        .dir(
            "m/",
            Meta {
                mode: 0o700,
                uid: 1,
                ..M
            },
        )
        .file("m/keep", M, b"k")
        .dir(
            "m/",
            Meta {
                mode: 0o755,
                uid: 2,
                ..M
            },
        )
        .symlink("s", "w")
        .file("s", M, b"not through the link")
        // A directory replaced by a symlink: later entries under it resolve anew (in-root).
        .dir("r/", M)
        .file("r/a", M, b"a")
        .symlink("r", "/")
        .file("r/b", M, b"b");
    let (_, root) = w.unpack_ok(&l.finish());
    assert_eq!(fs::read(root.join("x/y")).expect("read"), b"y");
    assert_eq!(fs::read(root.join("z")).expect("read"), b"now a file");
    assert_eq!(fs::read(root.join("w")).expect("read"), b"2");
    let m = root.join("m");
    assert_eq!(lstat(&m).mode() & 0o7777, 0o755);
    assert_owner(&m, 2, 0);
    assert_eq!(fs::read(m.join("keep")).expect("read"), b"k");
    assert!(lstat(&root.join("s")).is_file());
    assert!(lstat(&root.join("r")).file_type().is_symlink());
    assert_eq!(fs::read(root.join("b")).expect("read"), b"b");
    assert_eq!(fs::read(root.join("w")).expect("read"), b"2");
    w.check_contained();
}

/// A directory listed twice in one layer takes the later entry's user xattrs (the earlier ones
/// go, as its mode and owner do); the opaque marker envbox set in between stays.
#[test]
fn a_relisted_directory_keeps_only_the_later_xattrs_and_its_opaque_marker() {
    let w = Work::new();
    let mut l = Layer::new();
    l.pax(&[
        ("SCHILY.xattr.user.old", b"1"),
        ("SCHILY.xattr.security.capability", CAP),
    ])
    .dir("d/", M)
    .file("d/.wh..wh..opq", M, b"")
    .pax(&[("SCHILY.xattr.user.new", b"2")])
    .dir("d/", M);
    let (_, root) = w.unpack_ok(&l.finish());
    let d = root.join("d");
    assert_eq!(xattr(&d, "user.old"), None);
    assert_eq!(xattr(&d, "security.capability"), None);
    assert_eq!(xattr(&d, "user.new").as_deref(), Some(&b"2"[..]));
    assert_eq!(
        xattr(&d, "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    w.check_contained();
}

// ---- malicious layers ----

#[test]
fn traversal_names_are_contained() {
    let w = Work::new();
    let abs = w.sentinel_abs();
    let mut l = Layer::new();
    l.file("../../etc/envbox-unpack-test", M, b"1")
        .file("/etc/envbox-unpack-test2", M, b"2")
        .symlink("a", "/")
        .file("a/etc/envbox-unpack-test3", M, b"3")
        .symlink("b", "../..")
        .file("b/x", M, b"4")
        .dir("c/", M)
        .file("c/../../../y", M, b"5")
        .symlink("e", "/")
        .file("e/.wh.passwd", M, b"");
    let (_, root) = w.unpack_ok(&l.finish());
    assert_eq!(
        fs::read(root.join("etc/envbox-unpack-test")).expect("read"),
        b"1"
    );
    assert_eq!(
        fs::read(root.join("etc/envbox-unpack-test2")).expect("read"),
        b"2"
    );
    assert_eq!(
        fs::read(root.join("etc/envbox-unpack-test3")).expect("read"),
        b"3"
    );
    assert_eq!(fs::read(root.join("x")).expect("read"), b"4");
    assert_eq!(fs::read(root.join("y")).expect("read"), b"5");
    // A whiteout with nothing below it is not written (this is a bottom layer).
    assert!(fs::symlink_metadata(root.join("passwd")).is_err());
    assert!(!Path::new("/etc/envbox-unpack-test2").exists());
    assert!(!Path::new("/etc/envbox-unpack-test3").exists());
    w.check_contained();

    // Aimed at the sentinel by its absolute path: resolves in-root, where it does not exist,
    // and what is below the symlink is written there, as containerd does.
    let in_root = PathBuf::from(abs.trim_start_matches('/'));
    for (tar, written) in [
        (
            Layer::new()
                .symlink("s", &abs)
                .file("s/file", M, b"pwned")
                .finish(),
            Some(in_root.join("file")),
        ),
        (
            Layer::new()
                .symlink("s", &abs)
                .dir("s/inside/new/", M)
                .finish(),
            Some(in_root.join("inside/new")),
        ),
        (
            Layer::new()
                .symlink("evil", &abs)
                .file("evil/.wh.file", M, b"")
                .finish(),
            None,
        ),
        (
            Layer::new()
                .symlink("evil", &abs)
                .file("evil/.wh..wh..opq", M, b"")
                .finish(),
            Some(in_root.clone()),
        ),
        (
            Layer::new()
                .symlink("evil", &format!("{abs}/inside"))
                .file("evil/.wh.x", M, b"")
                .finish(),
            None,
        ),
    ] {
        let (_, root) = w.unpack_ok(&tar);
        if let Some(written) = written {
            assert!(
                fs::symlink_metadata(root.join(&written)).is_ok(),
                "{written:?}"
            );
        }
        w.check_contained();
    }
}

#[test]
fn hardlinks_must_stay_inside() {
    let w = Work::new();
    let abs = w.sentinel_abs();
    for target in [
        "/etc/passwd",
        "../outside",
        "../sentinel/file",
        &format!("{abs}/passwd"),
    ] {
        let tar = Layer::new()
            .file("f", M, b"f")
            .hardlink("h", target)
            .finish();
        let (result, path) = w.unpack_tar(&tar);
        match result {
            Err(UnpackError::HardlinkTarget { .. }) => assert!(!path.exists()),
            other => panic!("{target}: expected HardlinkTarget, got {other:?}"),
        }
        w.check_contained();
    }
    // Through a planted symlink: links the symlink itself, never what it points to.
    let tar = Layer::new()
        .symlink("s", &format!("{abs}/passwd"))
        .hardlink("h", "s")
        .finish();
    let (_, root) = w.unpack_ok(&tar);
    assert!(lstat(&root.join("h")).file_type().is_symlink());
    assert_eq!(lstat(&root.join("h")).ino(), lstat(&root.join("s")).ino());
    assert_eq!(lstat(&w.sentinel.join("passwd")).nlink(), 1);
    // A directory is never a hard link target.
    let tar = Layer::new().dir("d/", M).hardlink("h", "d").finish();
    assert!(matches!(
        w.unpack_tar(&tar).0,
        Err(UnpackError::HardlinkTarget { .. })
    ));
    w.check_contained();
}

#[test]
fn budgets_stop_bombs() {
    let w = Work::new();
    let zeros = vec![0u8; 32 << 20];
    let tar = Layer::new().file("bomb", M, &zeros).finish();
    let source = w.source(&gzip(&tar), Compression::Gzip, &tar);
    let limits = Limits {
        max_uncompressed_bytes: 4 << 20,
        ..Limits::default()
    };
    match w.store.unpack(&source, &limits) {
        Err(UnpackError::TooLarge { limit, .. }) => assert_eq!(limit, 4 << 20),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(!w.store.is_complete(&source.diff_id));

    // The same bomb split over entries that each fit.
    let mut l = Layer::new();
    for i in 0..8 {
        l.file(&format!("part{i}"), M, &zeros[..1 << 20]);
    }
    let tar = l.finish();
    let source = w.source(&gzip(&tar), Compression::Gzip, &tar);
    assert!(matches!(
        w.store.unpack(&source, &limits),
        Err(UnpackError::TooLarge { .. })
    ));

    let mut l = Layer::new();
    for i in 0..20 {
        l.file(&format!("f{i}"), M, b"");
    }
    let tar = l.finish();
    let source = w.source(&gzip(&tar), Compression::Gzip, &tar);
    let limits = Limits {
        max_entries: 10,
        ..Limits::default()
    };
    assert!(matches!(
        w.store.unpack(&source, &limits),
        Err(UnpackError::TooManyEntries { limit: 10, .. })
    ));
    w.check_contained();
}

#[test]
fn ids_out_of_range_are_refused() {
    let w = Work::new();
    let tar = Layer::new()
        .file("ok", M, b"")
        .file("bad", Meta { uid: 70000, ..M }, b"")
        .finish();
    match w.unpack_tar(&tar).0 {
        Err(UnpackError::IdOutOfRange {
            path, which, value, ..
        }) => {
            assert_eq!((path, which, value), (PathBuf::from("bad"), "uid", 70000));
        }
        other => panic!("expected IdOutOfRange, got {other:?}"),
    }
    // A PAX gid overrides the header's.
    let tar = Layer::new()
        .pax(&[("gid", b"65536")])
        .file("bad", M, b"")
        .finish();
    assert!(matches!(
        w.unpack_tar(&tar).0,
        Err(UnpackError::IdOutOfRange { which: "gid", .. })
    ));
    w.check_contained();
}

#[test]
fn diff_id_mismatch_keeps_nothing() {
    let w = Work::new();
    let tar = Layer::new().file("f", M, b"f").finish();
    let mut source = w.source(&gzip(&tar), Compression::Gzip, &tar);
    source.diff_id = Digest::of(b"something else");
    match w.store.unpack(&source, &Limits::default()) {
        Err(UnpackError::DiffIdMismatch { actual, .. }) => assert_eq!(actual, Digest::of(&tar)),
        other => panic!("expected DiffIdMismatch, got {other:?}"),
    }
    assert!(!w.store.is_complete(&source.diff_id));
    assert!(!w.store.path(&Digest::of(&tar)).exists());
    w.check_contained();
}

#[test]
fn failure_midway_leaves_no_layer_and_stale_staging_is_swept() {
    let w = Work::new();
    let mut l = Layer::new();
    for i in 0..200 {
        l.file(&format!("f{i}"), M, &[i as u8; 4096]);
    }
    let tar = l.finish();
    let mut blob = gzip(&tar);
    let n = blob.len();
    blob.truncate(n - n / 4); // a corrupt (cut) tail: the stream fails after some entries
    let source = w.source(&blob, Compression::Gzip, &tar);
    match w.store.unpack(&source, &Limits::default()) {
        Err(UnpackError::Stream { after, .. }) => assert!(after.to_string_lossy().starts_with('f')),
        other => panic!("expected a stream error, got {other:?}"),
    }
    assert!(!w.store.is_complete(&source.diff_id));
    w.check_contained();

    // What a kill -9 leaves: staging directories of a dead process, and of an earlier
    // incarnation of this pid. `open` removes both; a live process's is kept.
    let staging = w.state.join("layers/chain/.staging");
    let hex = source.diff_id.hex();
    let dead = staging.join(format!("{hex}.999999999.0123456789abcdef-0.partial"));
    let earlier = staging.join(format!(
        "{hex}.{}.0000000000000000-3.partial",
        std::process::id()
    ));
    let live = staging.join(format!("{hex}.1.0123456789abcdef-0.partial"));
    for dir in [&dead, &earlier, &live] {
        fs::create_dir_all(dir.join("sub")).expect("mkdir");
        std::os::unix::fs::symlink(&w.sentinel, dir.join("sub/link")).expect("symlink");
    }
    let store = LayerStore::open(&w.state).expect("reopen");
    assert!(!dead.exists() && !earlier.exists());
    assert!(live.exists());
    assert!(!store.is_complete(&source.diff_id));
    fs::remove_dir_all(&live).expect("cleanup");
    w.check_contained();
}

#[test]
fn a_layer_published_unsynced_before_a_restart_is_unpacked_again_and_a_synced_one_is_kept() {
    let w = Work::new();
    let boot = |id: &str| LayerStore::open_in_boot(&w.state, Some(id.to_owned())).expect("open");
    let torn = Layer::new().file("torn", M, b"written").finish();
    let kept = Layer::new().file("kept", M, b"written").finish();

    // Boot 1: one layer published and synced, then another published and not synced.
    let first = boot("b1");
    let kept_source = w.source(&gzip(&kept), Compression::Gzip, &kept);
    first
        .unpack(&kept_source, &Limits::default())
        .expect("unpack");
    let kept_dir = first.path(&kept_source.diff_id);
    assert_eq!(first.sync().expect("sync"), 1);
    let torn_source = w.source(&gzip(&torn), Compression::Gzip, &torn);
    first
        .unpack(&torn_source, &Limits::default())
        .expect("unpack");
    let torn_dir = first.path(&torn_source.diff_id);
    // What a power loss may leave: the rename on disk, a file's data not.
    fs::write(torn_dir.join("torn"), b"").expect("tear");

    // Same boot: the page cache holds everything, nothing is dropped.
    let again = boot("b1");
    assert!(again.is_complete(&torn_source.diff_id));

    // Boot 2: the layer marked in boot 1 is gone (unpacked again by its next use); the synced
    // one stays; no staging directory is left.
    let second = boot("b2");
    assert!(!second.is_complete(&torn_source.diff_id), "torn layer kept");
    assert_eq!(fs::read(kept_dir.join("kept")).expect("kept"), b"written");
    let report = second
        .unpack(&torn_source, &Limits::default())
        .expect("redo");
    assert!(!report.reused);
    assert_eq!(fs::read(torn_dir.join("torn")).expect("redone"), b"written");
    // Its new marker names boot 2: boot 2 keeps it, boot 3 would not.
    assert!(boot("b2").is_complete(&torn_source.diff_id));
    assert_eq!(second.sync().expect("sync"), 1);
    assert!(boot("b3").is_complete(&torn_source.diff_id));
    w.check_contained();
}

#[test]
fn removing_a_layer_removes_its_marker_so_a_restart_has_nothing_to_drop() {
    let w = Work::new();
    let tar = Layer::new().file("a", M, b"a").finish();
    let (_, dir) = w.unpack_ok(&tar);
    let unsynced = w.state.join("layers/chain/.unsynced");
    assert_eq!(fs::read_dir(&unsynced).expect("list").count(), 1);
    w.store.remove(&Digest::of(&tar)).expect("remove");
    assert!(!dir.exists());
    assert_eq!(fs::read_dir(&unsynced).expect("list").count(), 0);
}

/// A layer directory is complete only with its completion marker: one without it (a kill
/// between the marker and the rename cannot make one, but another tool or an earlier layout
/// can) or with a marker naming another layer is unpacked again, never used as it is.
#[test]
fn a_layer_directory_without_its_completion_marker_is_unpacked_again() {
    let w = Work::new();
    let tar = Layer::new().file("a", M, b"a").finish();
    let (report, dir) = w.unpack_ok(&tar);
    assert!(!report.reused);
    let chain = Digest::of(&tar);
    let marker = w.state.join("layers/chain/.complete").join(chain.hex());
    let record: serde_json::Value = serde_json::from_slice(&fs::read(&marker).unwrap()).unwrap();
    assert_eq!(record["chain"], chain.to_string());
    assert_eq!(record["diff_id"], chain.to_string());
    assert_eq!(record["bytes"], tar.len() as u64);
    let (again, _) = w.unpack_ok(&tar);
    assert!(again.reused, "a marked layer is reused");

    // Planted: a directory with a file the layer does not have, and no marker.
    fs::remove_file(&marker).unwrap();
    fs::write(dir.join("planted"), b"x").unwrap();
    let (report, dir) = w.unpack_ok(&tar);
    assert!(
        !report.reused,
        "a layer without its marker was used as it was"
    );
    assert!(!dir.join("planted").exists());
    assert_eq!(fs::read(dir.join("a")).unwrap(), b"a");

    // A marker naming another layer counts as none.
    let other = Digest::of(b"other");
    let text = fs::read_to_string(&marker).unwrap();
    fs::write(
        &marker,
        text.replace(&chain.to_string(), &other.to_string()),
    )
    .unwrap();
    fs::write(dir.join("planted"), b"x").unwrap();
    let (report, dir) = w.unpack_ok(&tar);
    assert!(!report.reused);
    assert!(!dir.join("planted").exists());
}

/// An ACL xattr value naming user `user` and group `group` (see `acl::named`).
pub(super) fn named_acl(user: u32, group: u32) -> Vec<u8> {
    acl::encode(&acl::named(user, group))
}

/// POSIX ACLs are set with their named ids shifted, a directory's default ACL too; what is
/// created in that directory gets only the ACLs and the mode its own entry lists (no
/// inherited ACL), and a directory listed again without ACLs loses them.
#[test]
fn posix_acls_are_set_with_named_ids_shifted() {
    let w = Work::new();
    let access = "SCHILY.xattr.system.posix_acl_access";
    let default = "SCHILY.xattr.system.posix_acl_default";
    let mut l = Layer::new();
    l.pax(&[
        (access, &named_acl(1000, 4)),
        (default, &named_acl(0, 65535)),
    ])
    .dir("j/", Meta { mode: 0o2775, ..M })
    .pax(&[(access, &named_acl(1000, 4))])
    .file("j/f", Meta { mode: 0o664, ..M }, b"f")
    .file("j/plain", Meta { mode: 0o640, ..M }, b"p")
    .dir("j/sub/", Meta { mode: 0o750, ..M })
    .file("j/sub/deeper", Meta { mode: 0o600, ..M }, b"d")
    .pax(&[(access, &named_acl(7, 7)), (default, &named_acl(7, 7))])
    .dir("again/", M)
    .dir("again/", Meta { mode: 0o700, ..M })
    // GNU tar's text form beside the xattr form: the xattr is read, nothing is said.
    .pax(&[
        ("SCHILY.acl.access", b"user::rw-\nuser:coder:r-x\n"),
        (access, &named_acl(1, 2)),
    ])
    .file("both", M, b"b")
    // The text form alone is not read: a warning says so.
    .pax(&[("SCHILY.acl.default", b"user::rwx\n")])
    .dir("text/", M);
    let (report, root) = w.unpack_ok(&l.finish());
    let acl_of = |path: &str, which: &str| xattr(&root.join(path), &format!("system.{which}"));
    assert_eq!(
        acl_of("j", "posix_acl_access"),
        Some(named_acl(101_000, 100_004))
    );
    assert_eq!(
        acl_of("j", "posix_acl_default"),
        Some(named_acl(100_000, 165_535))
    );
    assert_eq!(
        acl_of("j/f", "posix_acl_access"),
        Some(named_acl(101_000, 100_004))
    );
    assert_eq!(
        acl_of("both", "posix_acl_access"),
        Some(named_acl(100_001, 100_002))
    );
    for path in ["j/plain", "j/sub", "j/sub/deeper", "again", "text"] {
        for which in ["posix_acl_access", "posix_acl_default"] {
            assert_eq!(acl_of(path, which), None, "{which} on {path}");
        }
    }
    for (path, mode) in [
        ("j", 0o2775),
        // The access ACL's owner, mask and other entries are the mode's permission bits (the
        // kernel keeps them one): set after the mode, the ACL wins, as in umoci's tree.
        ("j/f", 0o775),
        ("j/plain", 0o640),
        ("j/sub", 0o750),
        ("j/sub/deeper", 0o600),
        ("again", 0o700),
    ] {
        assert_eq!(lstat(&root.join(path)).mode() & 0o7777, mode, "{path}");
    }
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    assert!(
        report.warnings[0].contains("\"text/\": xattr SCHILY.acl.default"),
        "{:?}",
        report.warnings
    );

    // getfacl, where installed, shows the shifted entries.
    if let Ok(out) = std::process::Command::new("getfacl")
        .args(["--numeric", "--omit-header", "--absolute-names"])
        .arg(root.join("j"))
        .output()
    {
        let text = String::from_utf8_lossy(&out.stdout);
        for line in [
            "user:101000:r-x",
            "group:100004:r-x",
            "default:group:165535:r-x",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(line)),
                "{line} in {text}"
            );
        }
    }
    w.check_contained();
}

/// A malformed ACL is refused naming the entry and the xattr; a named id outside the mapping
/// is refused as an owner's is; a default ACL on a file is refused.
#[test]
fn bad_posix_acls_are_refused() {
    let w = Work::new();
    let access = "SCHILY.xattr.system.posix_acl_access";
    let default = "SCHILY.xattr.system.posix_acl_default";
    let unpack = |key: &str, value: &[u8], dir: bool| {
        let mut l = Layer::new();
        l.file("ok", M, b"").pax(&[(key, value)]);
        match dir {
            true => l.dir("bad/", M),
            false => l.file("bad", M, b""),
        };
        w.unpack_tar(&l.finish()).0.expect_err("refused")
    };

    match unpack(access, &named_acl(65_536, 1), false) {
        UnpackError::IdOutOfRange {
            path, which, value, ..
        } => assert_eq!(
            (path, which, value),
            (
                PathBuf::from("bad"),
                "system.posix_acl_access named user",
                65_536
            )
        ),
        other => panic!("expected IdOutOfRange, got {other:?}"),
    }
    let err = unpack(default, &named_acl(1, 100_000), true);
    assert!(
        matches!(
            err,
            UnpackError::IdOutOfRange {
                which: "system.posix_acl_default named group",
                value: 100_000,
                ..
            }
        ),
        "{err}"
    );

    let mut truncated = named_acl(1, 2);
    truncated.pop();
    let err = unpack(access, &truncated, false);
    assert!(matches!(err, UnpackError::BadAcl { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("\"bad\": xattr system.posix_acl_access: not a version 2 ACL"),
        "{text}"
    );

    let err = unpack(default, &named_acl(1, 2), false);
    assert!(
        err.to_string()
            .contains("a default ACL on something that is not a directory"),
        "{err}"
    );
    w.check_contained();
}
