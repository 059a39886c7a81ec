//! A root filesystem read back entry by entry, and the differences between two of them.
//!
//! A [`Snapshot`] holds, for every path under a root (the root itself left out): type, mode
//! with the special bits, owner with a given shift taken off, size and sha256 of regular
//! files, symlink target, device numbers, xattrs (but `trusted.overlay.*`, which is overlayfs
//! bookkeeping; POSIX ACLs with the shift taken off their named ids, like owners) and mtime to
//! the nanosecond; plus which paths are one inode (hard links). It only reads: symlinks are
//! never followed, FIFOs never opened.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::CString;
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// One entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// `dir`, `file`, `symlink`, `fifo`, `socket`, `char M:m` or `block M:m`.
    pub kind: String,
    /// Permission and special bits (0 for symlinks, whose mode means nothing).
    pub mode: u32,
    pub uid: i64,
    pub gid: i64,
    /// Regular files only.
    pub size: Option<u64>,
    pub sha256: Option<String>,
    pub target: Option<PathBuf>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    pub mtime: (i64, i64),
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:04o} {}:{}",
            self.kind, self.mode, self.uid, self.gid
        )?;
        if let Some(size) = self.size {
            write!(f, " {size} bytes")?;
        }
        if let Some(target) = &self.target {
            write!(f, " -> {}", target.display())?;
        }
        Ok(())
    }
}

/// A whole tree.
#[derive(Debug)]
pub struct Snapshot {
    pub nodes: BTreeMap<PathBuf, Node>,
    /// Paths (two or more) that are one inode.
    pub links: BTreeSet<Vec<PathBuf>>,
    /// When the tree was written, seconds since the epoch: an mtime in it is the writer's own,
    /// not one it preserved from the layers.
    pub written: Option<(i64, i64)>,
}

impl Snapshot {
    /// How many entries carry the writer's own mtime (see `written`): those are not compared.
    pub fn own_mtimes(&self) -> usize {
        let Some((from, to)) = self.written else {
            return 0;
        };
        let own = |n: &&Node| (from..=to).contains(&n.mtime.0);
        self.nodes.values().filter(own).count()
    }
}

/// Reads the tree under `root`, taking `shift` off every uid and gid.
pub fn snapshot(root: &Path, shift: i64) -> Snapshot {
    let mut nodes = BTreeMap::new();
    let mut inodes: HashMap<u64, Vec<PathBuf>> = HashMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("listing {dir:?}: {e}"));
        for entry in entries {
            let path = entry
                .unwrap_or_else(|e| panic!("listing {dir:?}: {e}"))
                .path();
            let rel = path.strip_prefix(root).expect("under root").to_owned();
            let m = fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("lstat {path:?}: {e}"));
            let ft = m.file_type();
            let mut node = Node {
                kind: String::new(),
                mode: m.mode() & 0o7777,
                uid: i64::from(m.uid()) - shift,
                gid: i64::from(m.gid()) - shift,
                size: None,
                sha256: None,
                target: None,
                xattrs: xattrs(&path, shift),
                mtime: (m.mtime(), m.mtime_nsec()),
            };
            let dev = || format!("{}:{}", libc::major(m.rdev()), libc::minor(m.rdev()));
            node.kind = if ft.is_dir() {
                stack.push(path.clone());
                "dir".into()
            } else if ft.is_symlink() {
                node.mode = 0;
                node.target = Some(fs::read_link(&path).expect("readlink"));
                "symlink".into()
            } else if ft.is_file() {
                node.size = Some(m.len());
                node.sha256 = Some(sha256_file(&path));
                "file".into()
            } else if ft.is_fifo() {
                "fifo".into()
            } else if ft.is_socket() {
                "socket".into()
            } else if ft.is_char_device() {
                format!("char {}", dev())
            } else {
                format!("block {}", dev())
            };
            if !ft.is_dir() {
                inodes.entry(m.ino()).or_default().push(rel.clone());
            }
            nodes.insert(rel, node);
        }
    }
    let links = inodes
        .into_values()
        .filter(|paths| paths.len() > 1)
        .map(|mut paths| {
            paths.sort();
            paths
        })
        .collect();
    Snapshot {
        nodes,
        links,
        written: None,
    }
}

fn sha256_file(path: &Path) -> String {
    let mut hasher = Sha256::new();
    let mut file = File::open(path).unwrap_or_else(|e| panic!("open {path:?}: {e}"));
    io::copy(&mut file, &mut hasher).unwrap_or_else(|e| panic!("read {path:?}: {e}"));
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The xattrs of `path` itself (not what a symlink points to), but `trusted.overlay.*`; the
/// named ids of POSIX ACLs with `shift` taken off, as owners.
fn xattrs(path: &Path, shift: i64) -> BTreeMap<String, Vec<u8>> {
    let c = CString::new(path.as_os_str().as_bytes()).expect("no NUL in a path");
    let mut names = vec![0u8; 64 << 10];
    // SAFETY: c is NUL-terminated; names is a writable buffer of the given length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(
        n >= 0,
        "llistxattr {path:?}: {}",
        io::Error::last_os_error()
    );
    names.truncate(n as usize);
    let mut out = BTreeMap::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let text = String::from_utf8_lossy(name).into_owned();
        if text.starts_with("trusted.overlay.") {
            continue;
        }
        let cname = CString::new(name).expect("xattr name");
        let mut value = vec![0u8; 64 << 10];
        // SAFETY: both strings are NUL-terminated; value is a writable buffer of its length.
        let len = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        assert!(
            len >= 0,
            "lgetxattr {path:?} {text}: {}",
            io::Error::last_os_error()
        );
        value.truncate(len as usize);
        if is_acl(&text) {
            unshift_acl(path, &mut value, shift);
        }
        out.insert(text, value);
    }
    out
}

fn is_acl(name: &str) -> bool {
    name == "system.posix_acl_access" || name == "system.posix_acl_default"
}

/// ACL entries of a `posix_acl_xattr` value: `(tag, perm, id)`.
fn acl_entries(value: &[u8]) -> Option<Vec<(u16, u16, u32)>> {
    let body = value.strip_prefix(&2u32.to_le_bytes())?;
    if body.len() % 8 != 0 {
        return None;
    }
    let entries = body.chunks_exact(8).map(|e| {
        (
            u16::from_le_bytes([e[0], e[1]]),
            u16::from_le_bytes([e[2], e[3]]),
            u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
        )
    });
    Some(entries.collect())
}

/// Takes `shift` off the ids of an ACL's named users (tag 2) and groups (tag 8).
fn unshift_acl(path: &Path, value: &mut [u8], shift: i64) {
    let entries = acl_entries(value).unwrap_or_else(|| panic!("{path:?}: malformed ACL"));
    for (i, (tag, _, id)) in entries.into_iter().enumerate() {
        if matches!(tag, 0x02 | 0x08) {
            let id = u32::try_from(i64::from(id) - shift)
                .unwrap_or_else(|_| panic!("{path:?}: ACL id {id} below the shift {shift}"));
            value[4 + i * 8 + 4..4 + i * 8 + 8].copy_from_slice(&id.to_le_bytes());
        }
    }
}

/// An ACL as `getfacl` writes it, on one line.
fn show_acl(value: &[u8]) -> String {
    let Some(entries) = acl_entries(value) else {
        return format!("malformed ACL {value:02x?}");
    };
    let items: Vec<String> = entries
        .into_iter()
        .map(|(tag, perm, id)| {
            let kind = match tag {
                0x01 | 0x02 => "user",
                0x04 | 0x08 => "group",
                0x10 => "mask",
                0x20 => "other",
                _ => "tag?",
            };
            let id = if matches!(tag, 0x02 | 0x08) {
                id.to_string()
            } else {
                String::new()
            };
            let rwx: String = [(4, 'r'), (2, 'w'), (1, 'x')]
                .iter()
                .map(|(bit, c)| if perm & bit != 0 { *c } else { '-' })
                .collect();
            format!("{kind}:{id}:{rwx}")
        })
        .collect();
    items.join(",")
}

fn show_xattrs(xattrs: &BTreeMap<String, Vec<u8>>) -> String {
    let items: Vec<String> = xattrs
        .iter()
        .map(|(k, v)| match is_acl(k) {
            true => format!("{k}={}", show_acl(v)),
            false => format!("{k}={}", String::from_utf8_lossy(v).escape_debug()),
        })
        .collect();
    format!("{{{}}}", items.join(", "))
}

/// Every difference between `ours` and `theirs`, one line each, path first; empty when equal.
/// An mtime is compared only where `theirs` preserved it (it is outside `theirs.written`).
pub fn differences(
    ours: &Snapshot,
    theirs: &Snapshot,
    ours_name: &str,
    theirs_name: &str,
) -> Vec<String> {
    let mut out = Vec::new();
    let paths: BTreeSet<&PathBuf> = ours.nodes.keys().chain(theirs.nodes.keys()).collect();
    for path in paths {
        let p = path.display();
        match (ours.nodes.get(path), theirs.nodes.get(path)) {
            (Some(a), None) => out.push(format!("{p}: only in {ours_name} ({a})")),
            (None, Some(b)) => out.push(format!("{p}: only in {theirs_name} ({b})")),
            (Some(a), Some(b)) => {
                let mut field = |what: &str, x: String, y: String| {
                    if x != y {
                        out.push(format!("{p}: {what}: {ours_name} {x}, {theirs_name} {y}"));
                    }
                };
                field("type", a.kind.clone(), b.kind.clone());
                field("mode", format!("{:04o}", a.mode), format!("{:04o}", b.mode));
                field("uid", a.uid.to_string(), b.uid.to_string());
                field("gid", a.gid.to_string(), b.gid.to_string());
                field("size", format!("{:?}", a.size), format!("{:?}", b.size));
                field(
                    "content sha256",
                    format!("{:?}", a.sha256),
                    format!("{:?}", b.sha256),
                );
                field(
                    "link target",
                    format!("{:?}", a.target),
                    format!("{:?}", b.target),
                );
                field("xattrs", show_xattrs(&a.xattrs), show_xattrs(&b.xattrs));
                let own = theirs
                    .written
                    .is_some_and(|(from, to)| (from..=to).contains(&b.mtime.0));
                if !own {
                    field(
                        "mtime",
                        format!("{}.{:09}", a.mtime.0, a.mtime.1),
                        format!("{}.{:09}", b.mtime.0, b.mtime.1),
                    );
                }
            }
            (None, None) => unreachable!("a path of one of the two"),
        }
    }
    for group in ours.links.difference(&theirs.links) {
        out.push(format!(
            "hard links {group:?}: one inode in {ours_name} only"
        ));
    }
    for group in theirs.links.difference(&ours.links) {
        out.push(format!(
            "hard links {group:?}: one inode in {theirs_name} only"
        ));
    }
    out
}
