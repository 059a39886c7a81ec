//! POSIX ACLs as a layer carries them: the `system.posix_acl_access` and
//! `system.posix_acl_default` xattrs (PAX `SCHILY.xattr.system.posix_acl_*`, as Go's
//! archive/tar, buildkit and umoci write them), in the kernel's `posix_acl_xattr` format.
//!
//! Owns: checking such a value the way the kernel will (version 2 header, then 8-byte entries
//! `{le16 tag, le16 perm, le32 id}` in the canonical order, one owner, owning group and other
//! entry, a mask when a named entry is there, named ids strictly increasing, permissions
//! `rwx` only) and shifting the id of every named user and group entry by [`ID_SHIFT`] in
//! place, refusing ids at or above [`ID_RANGE`] as owners are refused. `setxattr` reads those
//! ids in the caller's user namespace (the host's), so the shifted ids are what the
//! workspace's user namespace shows as the image's. It never touches the filesystem, and never
//! reads GNU tar's text form (`SCHILY.acl.*`), which names users by name.

use super::{ID_RANGE, ID_SHIFT};

/// The access ACL's xattr name.
pub(super) const ACCESS: &[u8] = b"system.posix_acl_access";
/// The default ACL's xattr name (directories only).
pub(super) const DEFAULT: &[u8] = b"system.posix_acl_default";

const VERSION: u32 = 2;
const HEADER: usize = 4;
const ENTRY: usize = 8;

const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

/// Why an ACL value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum AclError {
    #[error("not a version 2 ACL of whole 8-byte entries ({len} bytes)")]
    Size { len: usize },
    #[error("version {0}, not 2")]
    Version(u32),
    #[error("entry {index}: unknown tag {tag:#x}")]
    Tag { index: usize, tag: u16 },
    #[error("entry {index}: permissions {perm:#o} beyond rwx")]
    Perm { index: usize, perm: u16 },
    #[error("entry {index}: {reason}")]
    Order { index: usize, reason: &'static str },
    #[error("{0}")]
    Incomplete(&'static str),
    /// A named user (`user`) or group (`group`) at or above [`ID_RANGE`].
    #[error("named {which} {id} is not below {ID_RANGE}")]
    IdOutOfRange { which: &'static str, id: u32 },
}

/// Whether `name` is one of the two ACL xattrs.
pub(super) fn is_acl(name: &[u8]) -> bool {
    name == ACCESS || name == DEFAULT
}

/// Checks the ACL `value` and shifts its named users' and groups' ids by [`ID_SHIFT`], in
/// place. On error `value` is left partly shifted: the caller drops it.
pub(super) fn shift(value: &mut [u8]) -> Result<(), AclError> {
    let len = value.len();
    if len < HEADER + ENTRY || !(len - HEADER).is_multiple_of(ENTRY) {
        return Err(AclError::Size { len });
    }
    let version = u32::from_le_bytes(value[..HEADER].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(AclError::Version(version));
    }
    let mut last_tag = 0u16;
    let mut last_id: Option<u32> = None;
    let mut seen = 0u16;
    for (index, entry) in value[HEADER..].chunks_exact_mut(ENTRY).enumerate() {
        let tag = u16::from_le_bytes([entry[0], entry[1]]);
        let perm = u16::from_le_bytes([entry[2], entry[3]]);
        if !matches!(tag, USER_OBJ | USER | GROUP_OBJ | GROUP | MASK | OTHER) {
            return Err(AclError::Tag { index, tag });
        }
        if perm & !0o7 != 0 {
            return Err(AclError::Perm { index, perm });
        }
        // The tags' values are their canonical order.
        if tag < last_tag {
            return Err(AclError::Order {
                index,
                reason: "out of order",
            });
        }
        if tag != last_tag {
            last_id = None;
        } else if !matches!(tag, USER | GROUP) {
            return Err(AclError::Order {
                index,
                reason: "a second owner, owning group, mask or other entry",
            });
        }
        last_tag = tag;
        seen |= tag;
        if !matches!(tag, USER | GROUP) {
            continue;
        }
        let id = u32::from_le_bytes([entry[4], entry[5], entry[6], entry[7]]);
        if last_id.is_some_and(|last| id <= last) {
            return Err(AclError::Order {
                index,
                reason: "named ids not strictly increasing",
            });
        }
        last_id = Some(id);
        if u64::from(id) >= ID_RANGE {
            let which = if tag == USER { "user" } else { "group" };
            return Err(AclError::IdOutOfRange { which, id });
        }
        entry[4..].copy_from_slice(&(id + ID_SHIFT).to_le_bytes());
    }
    if seen & (USER_OBJ | GROUP_OBJ | OTHER) != USER_OBJ | GROUP_OBJ | OTHER {
        return Err(AclError::Incomplete(
            "no owner, owning group or other entry",
        ));
    }
    if seen & (USER | GROUP) != 0 && seen & MASK == 0 {
        return Err(AclError::Incomplete("named entries but no mask"));
    }
    Ok(())
}

/// An ACL value of `entries` `(tag, perm, id)`, unchecked (tests build malformed ones too).
#[cfg(test)]
pub(super) fn encode(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = VERSION.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// A user, owning group and other ACL naming user `user` and group `group` (both `r-x`).
#[cfg(test)]
pub(super) fn named(user: u32, group: u32) -> Vec<(u16, u16, u32)> {
    const UNDEFINED: u32 = u32::MAX;
    vec![
        (USER_OBJ, 7, UNDEFINED),
        (USER, 5, user),
        (GROUP_OBJ, 5, UNDEFINED),
        (GROUP, 5, group),
        (MASK, 7, UNDEFINED),
        (OTHER, 5, UNDEFINED),
    ]
}

#[cfg(test)]
mod unit {
    use super::*;

    const UNDEFINED: u32 = u32::MAX;

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        encode(entries)
    }

    #[test]
    fn named_ids_are_shifted_and_nothing_else() {
        let mut value = acl(&named(1000, 0));
        shift(&mut value).expect("valid");
        assert_eq!(value, acl(&named(101_000, 100_000)));

        // The minimal ACL (what chmod alone means) has no id to shift.
        let minimal = [
            (USER_OBJ, 6, UNDEFINED),
            (GROUP_OBJ, 4, UNDEFINED),
            (OTHER, 4, UNDEFINED),
        ];
        let mut value = acl(&minimal);
        shift(&mut value).expect("valid");
        assert_eq!(value, acl(&minimal));
    }

    #[test]
    fn ids_outside_the_mapping_are_refused() {
        let mut value = acl(&named(65_535, 65_536));
        assert_eq!(
            shift(&mut value),
            Err(AclError::IdOutOfRange {
                which: "group",
                id: 65_536
            })
        );
        let mut value = acl(&named(u32::MAX - 1, 1));
        let err = shift(&mut value).expect_err("refused");
        assert_eq!(err.to_string(), "named user 4294967294 is not below 65536");
    }

    #[test]
    fn malformed_values_are_refused() {
        let check = |value: Vec<u8>, want: &str| {
            let mut value = value;
            let err = shift(&mut value).expect_err(want);
            assert!(err.to_string().contains(want), "{err} should say {want}");
        };
        check(Vec::new(), "0 bytes");
        check(acl(&[]), "4 bytes");
        let mut ragged = acl(&named(1, 1));
        ragged.push(0);
        check(ragged, "53 bytes");
        let mut v1 = acl(&named(1, 1));
        v1[0] = 1;
        check(v1, "version 1");
        let mut tags = named(1, 1);
        tags[1].0 = 0x40;
        check(acl(&tags), "entry 1: unknown tag 0x40");
        let mut perms = named(1, 1);
        perms[2].1 = 0o10;
        check(acl(&perms), "entry 2: permissions 0o10");
        let mut order = named(1, 1);
        order.swap(0, 1);
        check(acl(&order), "entry 1: out of order");
        let mut twice = named(1, 1);
        twice.insert(4, (MASK, 7, UNDEFINED));
        check(acl(&twice), "entry 5: a second");
        let mut dup = named(1, 1);
        dup.insert(2, (USER, 5, 1));
        check(acl(&dup), "entry 2: named ids not strictly increasing");
        check(
            acl(&[(USER_OBJ, 6, UNDEFINED), (OTHER, 4, UNDEFINED)]),
            "no owner, owning group or other",
        );
        let mut no_mask = named(1, 1);
        no_mask.remove(4);
        check(acl(&no_mask), "named entries but no mask");
    }

    #[test]
    fn names() {
        assert!(is_acl(b"system.posix_acl_access"));
        assert!(is_acl(b"system.posix_acl_default"));
        assert!(!is_acl(b"system.posix_acl_other"));
        assert!(!is_acl(b"user.posix_acl_access"));
    }
}
