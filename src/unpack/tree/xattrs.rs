//! Setting and clearing a layer entry's xattrs on an open descriptor.
//!
//! Owns: the `fsetxattr` that every xattr envbox writes goes through (a layer's own, filtered
//! by `header::keep_xattr`, and overlayfs' opaque marker), and dropping, when a directory is
//! listed again, the layer xattrs its new entry does not carry, and the POSIX ACLs a new layer
//! root inherits from the cache directory. It never touches an xattr outside `user.*`,
//! `security.capability` and the POSIX ACLs except the ones the caller names.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::unpack::header::{keep_xattr, Entry};

/// Sets xattr `name` of `fd` to `value` (also the layer store's own marker, see
/// `unpack::mark_implicit`).
pub(in crate::unpack) fn set_xattr(
    fd: BorrowedFd<'_>,
    name: &CStr,
    value: &[u8],
) -> io::Result<()> {
    // SAFETY: name is NUL-terminated, value is a valid slice; fsetxattr reads both only.
    let rc = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Removes the POSIX ACLs of `fd` (a layer root just created, which inherits the cache
/// directory's default ACL if it has one): the layer's tree gets only the modes it lists, and a
/// new inode's mode is then what was asked minus the umask (see `creds::exact_at_creation`).
pub(in crate::unpack) fn drop_acls(fd: BorrowedFd<'_>) -> io::Result<()> {
    for name in [c"system.posix_acl_default", c"system.posix_acl_access"] {
        // SAFETY: name is NUL-terminated; fremovexattr only reads it.
        if unsafe { libc::fremovexattr(fd.as_raw_fd(), name.as_ptr()) } != 0 {
            let e = io::Error::last_os_error();
            // None there, or a filesystem without ACLs.
            if !matches!(e.raw_os_error(), Some(libc::ENODATA | libc::EOPNOTSUPP)) {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Removes from `fd` the xattrs a layer may set (see `header::keep_xattr`) that `entry` does
/// not carry; anything else (overlayfs' own, security labels) stays.
pub(super) fn drop_layer_xattrs(fd: BorrowedFd<'_>, entry: &Entry) -> io::Result<()> {
    let mut names = vec![0u8; 64 << 10];
    // SAFETY: names is a writable buffer of the given length; flistxattr writes within it.
    let n = unsafe { libc::flistxattr(fd.as_raw_fd(), names.as_mut_ptr().cast(), names.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    names.truncate(n as usize);
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let carried = entry.xattrs.iter().any(|(x, _)| x.as_bytes() == name);
        if carried || !keep_xattr(name) {
            continue;
        }
        let name = std::ffi::CString::new(name).map_err(io::Error::other)?;
        // SAFETY: name is NUL-terminated; fremovexattr only reads it.
        if unsafe { libc::fremovexattr(fd.as_raw_fd(), name.as_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The names of `fd`'s xattrs.
fn list_xattrs(fd: BorrowedFd<'_>) -> io::Result<Vec<std::ffi::CString>> {
    let mut names = vec![0u8; 64 << 10];
    // SAFETY: names is a writable buffer of the given length; flistxattr writes within it.
    let n = unsafe { libc::flistxattr(fd.as_raw_fd(), names.as_mut_ptr().cast(), names.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    names.truncate(n as usize);
    names
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| std::ffi::CString::new(n).map_err(io::Error::other))
        .collect()
}

/// The value of xattr `name` of `fd`, `None` when it has none.
pub(in crate::unpack) fn get_xattr(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<Option<Vec<u8>>> {
    let mut value = vec![0u8; 64 << 10];
    // SAFETY: name is NUL-terminated; value is a writable buffer of its length.
    let n = unsafe {
        libc::fgetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA | libc::EOPNOTSUPP) => Ok(None),
            _ => Err(e),
        };
    }
    value.truncate(n as usize);
    Ok(Some(value))
}

/// Copies onto `to` (a fresh inode, its inherited ACLs dropped first) the xattrs of `from` a
/// layer may carry (see `header::keep_xattr`): a copy up from a lower layer, whose xattrs are
/// already as the layer store writes them (ACL ids shifted).
pub(in crate::unpack) fn copy_layer_xattrs(
    from: BorrowedFd<'_>,
    to: BorrowedFd<'_>,
) -> io::Result<()> {
    drop_acls(to)?;
    for name in list_xattrs(from)? {
        if !keep_xattr(name.as_bytes()) {
            continue;
        }
        if let Some(value) = get_xattr(from, &name)? {
            set_xattr(to, &name, &value)?;
        }
    }
    Ok(())
}
