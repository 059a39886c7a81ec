//! What one tar entry asks for, decoded from its header and PAX records into plain values.
//!
//! Owns: turning an [`archive::Header`] into an [`Entry`]: its name lexically normalised into
//! components under the layer root (absolute names and `..` contained, as containerd does),
//! its kind (OCI whiteouts recognised by name), ownership (PAX `uid`/`gid` win over the ustar
//! fields; values at or above [`ID_RANGE`] refused), mode, mtime (PAX fractional `mtime` kept)
//! and the xattrs that may be set (POSIX ACLs checked and their named ids shifted, see `acl`).
//! It never touches the filesystem and never decides how a kind is written.

use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use nix::sys::time::TimeSpec;

use super::acl::{self, AclError};
use super::archive;
use super::{UnpackError, ID_RANGE};
use crate::digest::Digest;

/// The OCI whiteout prefix and opaque marker.
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// What an entry creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Dir,
    Symlink(OsString),
    /// Target components (normalised like names).
    Hardlink(Vec<OsString>),
    Fifo,
    /// A character or block device: never created.
    Device,
    /// `.wh.<name>`: `parts` ends with `<name>`.
    Whiteout,
    /// `.wh..wh..opq`: `parts` names the directory that is opaque.
    Opaque,
    /// A record that creates nothing (PAX global header, other `.wh..wh.` metadata).
    Skip,
}

/// One decoded entry.
#[derive(Debug)]
pub(crate) struct Entry {
    /// The name as written in the layer, for messages.
    pub path: PathBuf,
    /// The normalised components under the root; empty for the root itself.
    pub parts: Vec<OsString>,
    pub kind: Kind,
    /// Bytes of contents (a file's; other kinds have none).
    pub size: u64,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits including setuid, setgid and sticky.
    pub mode: u32,
    pub mtime: TimeSpec,
    /// xattrs to set (`security.capability`, `user.*`, POSIX ACLs with their ids shifted).
    pub xattrs: Vec<(CString, Vec<u8>)>,
    /// xattr names the layer carried that are not set.
    pub dropped_xattrs: Vec<String>,
}

impl Entry {
    /// Owned by `0:0` in the layer (`100000:100000` once shifted).
    pub(crate) fn is_root_owned(&self) -> bool {
        (self.uid, self.gid) == (0, 0)
    }
}

/// Decodes `header`, an entry of layer `layer`.
pub(crate) fn decode(layer: &Digest, header: archive::Header) -> Result<Entry, UnpackError> {
    let path = PathBuf::from(OsString::from_vec(header.path));
    let bad = |reason| UnpackError::BadEntry {
        layer: layer.clone(),
        path: path.clone(),
        reason,
    };
    let (mut uid, mut gid) = (header.uid, header.gid);
    let mut mtime = TimeSpec::new(
        i64::try_from(header.mtime).map_err(|_| bad("mtime out of range"))?,
        0,
    );
    let mode = (header.mode & 0o7777) as u32;
    let link = header.link;

    let mut xattrs = Vec::new();
    let mut dropped_xattrs = Vec::new();
    let mut text_acls: Vec<Vec<u8>> = Vec::new();
    for (key, value) in header.pax {
        match key.as_slice() {
            b"uid" => uid = parse_decimal(&value).ok_or_else(|| bad("malformed PAX uid"))?,
            b"gid" => gid = parse_decimal(&value).ok_or_else(|| bad("malformed PAX gid"))?,
            b"mtime" => mtime = parse_pax_time(&value).ok_or_else(|| bad("malformed PAX mtime"))?,
            _ => {
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    if keep_xattr(name) {
                        let mut value = value;
                        if acl::is_acl(name) {
                            shift_acl(layer, &path, name, &mut value)?;
                        }
                        let name = CString::new(name).map_err(|_| bad("NUL in an xattr name"))?;
                        xattrs.push((name, value));
                    } else {
                        dropped_xattrs.push(String::from_utf8_lossy(name).into_owned());
                    }
                } else if let Some(which) = key.strip_prefix(b"SCHILY.acl.") {
                    // GNU tar's text form (`--acls`); it writes the xattr form too when asked
                    // (`--xattrs`), and only that one is read (see `acl`).
                    text_acls.push(which.to_vec());
                }
            }
        }
    }

    for which in text_acls {
        let name = match which.as_slice() {
            b"access" => acl::ACCESS,
            b"default" => acl::DEFAULT,
            _ => b"".as_slice(),
        };
        if name.is_empty() || !xattrs.iter().any(|(n, _)| n.to_bytes() == name) {
            dropped_xattrs.push(format!(
                "SCHILY.acl.{} (GNU tar's text form of an ACL, which names users: only SCHILY.xattr.system.posix_acl_* is read)",
                String::from_utf8_lossy(&which)
            ));
        }
    }
    let uid = check_id(layer, &path, "uid", uid)?;
    let gid = check_id(layer, &path, "gid", gid)?;
    let mut parts = normalise(path.as_os_str().as_bytes());

    let last = parts.last().map(|p| p.as_bytes().to_vec());
    let kind = match last {
        Some(ref name) if name.as_slice() == OPAQUE_MARKER => {
            parts.pop();
            Kind::Opaque
        }
        Some(ref name) if name.starts_with(b".wh..wh.") => Kind::Skip,
        Some(ref name) if name.starts_with(WHITEOUT_PREFIX) => {
            let target = &name[WHITEOUT_PREFIX.len()..];
            if target.is_empty() || target == b"." || target == b".." {
                return Err(bad("whiteout of an empty, '.' or '..' name"));
            }
            if let Some(last) = parts.last_mut() {
                *last = OsStr::from_bytes(target).to_owned();
            }
            Kind::Whiteout
        }
        _ => match header.typeflag {
            // The pre-POSIX regular type with a trailing slash is a directory (as Go's
            // archive/tar reads it).
            b'\0' if path.as_os_str().as_bytes().ends_with(b"/") => Kind::Dir,
            // Regular (and its pre-POSIX spelling), contiguous, GNU sparse.
            b'0' | b'\0' | b'7' | b'S' => Kind::File,
            b'5' => Kind::Dir,
            b'2' => {
                if link.is_empty() {
                    return Err(bad("symlink without a target"));
                }
                Kind::Symlink(OsString::from_vec(link))
            }
            b'1' => {
                if link.is_empty() {
                    return Err(bad("hard link without a target"));
                }
                Kind::Hardlink(normalise(&link))
            }
            b'6' => Kind::Fifo,
            b'3' | b'4' => Kind::Device,
            // A PAX global header: nothing of it applies to the layer's tree.
            b'g' => Kind::Skip,
            other => {
                return Err(UnpackError::UnsupportedType {
                    layer: layer.clone(),
                    path,
                    kind: char::from(other),
                })
            }
        },
    };
    if parts.is_empty() && !matches!(kind, Kind::Dir | Kind::Opaque | Kind::Skip) {
        return Err(bad("names the layer root but is not a directory"));
    }
    if matches!(kind, Kind::File | Kind::Fifo)
        && xattrs.iter().any(|(n, _)| n.to_bytes() == acl::DEFAULT)
    {
        return Err(bad("a default ACL on something that is not a directory"));
    }
    Ok(Entry {
        path,
        parts,
        kind,
        size: header.size,
        uid,
        gid,
        mode,
        mtime,
        xattrs,
        dropped_xattrs,
    })
}

fn check_id(
    layer: &Digest,
    path: &std::path::Path,
    which: &'static str,
    value: u64,
) -> Result<u32, UnpackError> {
    match u32::try_from(value) {
        Ok(id) if value < ID_RANGE => Ok(id),
        _ => Err(UnpackError::IdOutOfRange {
            layer: layer.clone(),
            path: path.to_owned(),
            which,
            value,
        }),
    }
}

/// Checks and shifts the ACL xattr `name` (see [`acl::shift`]); its named ids at or above
/// [`ID_RANGE`] are refused as owners' are.
fn shift_acl(
    layer: &Digest,
    path: &std::path::Path,
    name: &[u8],
    value: &mut [u8],
) -> Result<(), UnpackError> {
    let access = name == acl::ACCESS;
    let xattr = if access {
        "system.posix_acl_access"
    } else {
        "system.posix_acl_default"
    };
    match acl::shift(value) {
        Ok(()) => Ok(()),
        Err(AclError::IdOutOfRange { which, id }) => Err(UnpackError::IdOutOfRange {
            layer: layer.clone(),
            path: path.to_owned(),
            which: match (access, which) {
                (true, "user") => "system.posix_acl_access named user",
                (true, _) => "system.posix_acl_access named group",
                (false, "user") => "system.posix_acl_default named user",
                (false, _) => "system.posix_acl_default named group",
            },
            value: u64::from(id),
        }),
        Err(e) => Err(UnpackError::BadAcl {
            layer: layer.clone(),
            path: path.to_owned(),
            name: xattr,
            reason: e.to_string(),
        }),
    }
}

/// Whether a layer's xattr is set: file capabilities, user xattrs and POSIX ACLs (their ids
/// shifted, see [`acl`]), never `trusted.*` or anything that overlayfs could read as its own.
pub(super) fn keep_xattr(name: &[u8]) -> bool {
    let overlay = name.windows(b"overlay".len()).any(|w| w == b"overlay");
    !overlay && (name == b"security.capability" || name.starts_with(b"user.") || acl::is_acl(name))
}

/// Lexically normalises a tar name into components under the root: empty and `.` components
/// dropped, `..` pops (never above the root), a leading `/` ignored.
pub(super) fn normalise(name: &[u8]) -> Vec<OsString> {
    let mut parts: Vec<OsString> = Vec::new();
    for part in name.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            _ => parts.push(OsStr::from_bytes(part).to_owned()),
        }
    }
    parts
}

/// Joins components into a relative path (`.` for the root: openat2 refuses an empty path).
pub(super) fn join(parts: &[OsString]) -> PathBuf {
    if parts.is_empty() {
        return PathBuf::from(".");
    }
    parts.iter().collect()
}

fn parse_decimal(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Parses a PAX time: `[-|+]seconds[.fraction]`.
fn parse_pax_time(value: &[u8]) -> Option<TimeSpec> {
    let text = std::str::from_utf8(value).ok()?;
    // One sign at most, as Go's `strconv.ParseInt` reads it.
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    // Digits only after the sign: `str::parse` would take a second one (`--1`), and its
    // negation could overflow.
    let digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
    if secs.is_empty() || !digits(secs) || !digits(frac) {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    let mut nanos: i64 = 0;
    for (i, digit) in frac.bytes().take(9).enumerate() {
        nanos += i64::from(digit - b'0') * 10_i64.pow(8 - i as u32);
    }
    Some(match (negative, nanos) {
        (false, _) => TimeSpec::new(secs, nanos),
        (true, 0) => TimeSpec::new(-secs, 0),
        (true, _) => TimeSpec::new(-secs - 1, 1_000_000_000 - nanos),
    })
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn names_are_contained() {
        let n = |s: &str| join(&normalise(s.as_bytes()));
        assert_eq!(n("../../etc/x"), PathBuf::from("etc/x"));
        assert_eq!(n("/etc/x"), PathBuf::from("etc/x"));
        assert_eq!(n("./a/./b/../c/"), PathBuf::from("a/c"));
        assert_eq!(n("./"), PathBuf::from("."));
    }

    #[test]
    fn xattr_filter() {
        assert!(keep_xattr(b"security.capability"));
        assert!(keep_xattr(b"user.foo"));
        assert!(!keep_xattr(b"user.overlay.x"));
        assert!(!keep_xattr(b"trusted.overlay.opaque"));
        assert!(!keep_xattr(b"trusted.foo"));
        assert!(!keep_xattr(b"security.selinux"));
    }

    fn decoded(typeflag: u8, path: &str, link: &str) -> Result<Entry, UnpackError> {
        let header = archive::Header {
            path: path.into(),
            link: link.into(),
            typeflag,
            mode: 0o100755,
            ..Default::default()
        };
        decode(&Digest::of(b"layer"), header)
    }

    #[test]
    fn kinds_by_type_flag() {
        let kind = |typeflag, path| decoded(typeflag, path, "t").expect("decoded").kind;
        assert_eq!(kind(b'0', "a"), Kind::File);
        assert_eq!(kind(b'7', "a"), Kind::File);
        assert_eq!(kind(b'S', "a"), Kind::File);
        // The pre-POSIX regular type with a trailing slash is a directory, as Go reads it.
        assert_eq!(kind(b'\0', "a"), Kind::File);
        assert_eq!(kind(b'\0', "a/"), Kind::Dir);
        assert_eq!(kind(b'0', "a/"), Kind::File);
        assert_eq!(kind(b'5', "a"), Kind::Dir);
        assert_eq!(kind(b'2', "a"), Kind::Symlink("t".into()));
        assert_eq!(kind(b'1', "a"), Kind::Hardlink(vec!["t".into()]));
        assert_eq!(kind(b'3', "a"), Kind::Device);
        assert_eq!(kind(b'g', "a"), Kind::Skip);
        assert_eq!(decoded(b'0', "a", "").expect("file").mode, 0o755);
        for typeflag in [b'1', b'2'] {
            let err = decoded(typeflag, "a", "").expect_err("a link needs a target");
            assert!(err.to_string().contains("without a target"), "{err}");
        }
        let err = decoded(b'V', "a", "").expect_err("volume label");
        assert!(
            matches!(err, UnpackError::UnsupportedType { kind: 'V', .. }),
            "{err}"
        );
    }

    #[test]
    fn pax_times() {
        assert_eq!(
            parse_pax_time(b"12.5"),
            Some(TimeSpec::new(12, 500_000_000))
        );
        assert_eq!(
            parse_pax_time(b"-1.25"),
            Some(TimeSpec::new(-2, 750_000_000))
        );
        assert_eq!(parse_pax_time(b"7"), Some(TimeSpec::new(7, 0)));
        assert_eq!(parse_pax_time(b"x"), None);
    }

    /// Found while writing the `tar` fuzz target (its seed `pax-mtime-two-signs.tar` crashed
    /// it): a second sign was read as part of the seconds, and `--9223372036854775808`
    /// overflowed on negation (a panic in debug builds, a wrapped mtime in release ones).
    #[test]
    fn pax_times_take_one_sign_only() {
        for bad in [
            &b"--9223372036854775808"[..],
            b"--1",
            b"-+1",
            b"+-1",
            b"1.-5",
        ] {
            assert_eq!(
                parse_pax_time(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            parse_pax_time(b"-9223372036854775807.5"),
            Some(TimeSpec::new(i64::MIN, 500_000_000))
        );
        assert_eq!(parse_pax_time(b"+7"), Some(TimeSpec::new(7, 0)));
    }
}
