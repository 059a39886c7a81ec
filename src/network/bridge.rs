//! Removing the workspace bridge when the workspace stops.
//!
//! The CNI bridge plugin creates the bridge on the first ADD and never deletes it. Inside a pod
//! that is harmless (the pod's network namespace goes with it), but on a machine that runs
//! envbox more than once (development, CI, `make demo`) a bridge left with one subnet makes the
//! next ADD with another fail. So a clean stop takes it down and deletes it, with the two
//! classic bridge ioctls (no netlink dependency). Only ever called on the bridge of our plan.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `SIOCBRDELBR` from `<linux/sockios.h>` (not in the libc crate).
const SIOCBRDELBR: libc::Ioctl = 0x89a1;

/// Takes `name` down and deletes it. `Ok(false)` when there is no such bridge.
pub(crate) fn delete(name: &str) -> io::Result<bool> {
    let cname = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(cname.as_bytes()) {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we own.
    unsafe {
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) < 0 {
            let error = io::Error::last_os_error();
            return match error.raw_os_error() {
                Some(libc::ENODEV) => Ok(false),
                _ => Err(error),
            };
        }
        request.ifr_ifru.ifru_flags &= !(libc::IFF_UP as libc::c_short);
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: SIOCBRDELBR takes the bridge's name as a C string.
        if libc::ioctl(socket.as_raw_fd(), SIOCBRDELBR, cname.as_ptr()) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_bridge_is_not_an_error() {
        assert!(!delete("envbox-nope0").unwrap());
    }

    #[test]
    fn overlong_names_are_refused() {
        assert!(delete("a-name-longer-than-ifnamsiz").is_err());
    }
}
