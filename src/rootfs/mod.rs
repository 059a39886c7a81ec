//! Facts read from an unpacked image root filesystem: the workspace user's passwd entry and the
//! groups `/etc/group` lists them in, whether the image boots with `/sbin/init` (and whether that is systemd), and its os-release.
//!
//! Owns: reading files *inside* a rootfs safely. Every path is resolved within the rootfs
//! (`openat2` with `RESOLVE_IN_ROOT`), so an absolute symlink such as `/etc/passwd ->
//! /host/etc/passwd` planted by an image can never make envbox read a file of the outer
//! container. It never writes.

mod group;
pub(crate) mod inroot;
mod os_release;
mod passwd;

#[cfg(fuzzing)]
pub(crate) use {group::member_of, os_release::parse as parse_os_release, passwd::find_user};

use std::io;
use std::path::{Path, PathBuf};

use inroot::InRoot;

/// A user's `/etc/passwd` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pub shell: String,
}

/// A group of `/etc/group` that lists the user as a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
}

/// The parts of `/etc/os-release` (or `/usr/lib/os-release`) that matter to us.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OsRelease {
    /// `ID`, lower-case, quotes removed (`ubuntu`, `rhel`, ...).
    pub id: String,
    /// `ID_LIKE`, split on whitespace.
    pub id_like: Vec<String>,
}

/// What the spec generator needs from the rootfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsFacts {
    pub user: PasswdEntry,
    /// The user's supplementary groups: those `/etc/group` lists them in, in file order, each gid
    /// once (the primary group only when listed). Empty when the image has no `/etc/group`.
    pub groups: Vec<GroupEntry>,
    /// `/sbin/init` exists (after in-root symlink resolution) and is an executable regular file.
    pub has_init: bool,
    pub os_release: Option<OsRelease>,
    /// What was skipped while reading (a malformed `/etc/group` line listing the user).
    pub warnings: Vec<String>,
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error(
        "user {username:?} (CODER_INNER_USERNAME) not found in the image's /etc/passwd ({rootfs})"
    )]
    UserNotFound { username: String, rootfs: PathBuf },
    #[error("the image has no /etc/passwd ({rootfs}): cannot look up user {username:?} (CODER_INNER_USERNAME)")]
    NoPasswd { username: String, rootfs: PathBuf },
    #[error("{path} in the image ({rootfs}), line {line}: {reason}")]
    Malformed {
        rootfs: PathBuf,
        path: &'static str,
        line: usize,
        reason: String,
    },
    #[error("reading {path} in rootfs {rootfs}: {source}")]
    Read {
        rootfs: PathBuf,
        path: String,
        source: std::io::Error,
    },
}

/// Reads the facts for `username` from the rootfs at `rootfs`.
pub fn read_facts(rootfs: &Path, username: &str) -> Result<RootfsFacts, RootfsError> {
    let root = InRoot::open(rootfs).map_err(|source| read_error(rootfs, "/", source))?;
    let user = read_user(&root, rootfs, username)?;
    let (groups, warnings) = read_groups(&root, rootfs, username);
    Ok(RootfsFacts {
        user,
        groups,
        has_init: has_init(&root, rootfs)?,
        os_release: read_os_release(&root, rootfs)?,
        warnings,
    })
}

/// Whether the init `init` (a path inside the image, e.g. `/sbin/init`) is systemd: the path,
/// or what it resolves to in-root (`/sbin/init` -> `/lib/systemd/systemd`), names it. A path
/// that cannot be resolved is judged by its name alone.
pub fn init_is_systemd(rootfs: &Path, init: &str) -> bool {
    let names_systemd = |path: &Path| path.to_string_lossy().contains("systemd");
    names_systemd(Path::new(init))
        || InRoot::open(rootfs)
            .and_then(|root| root.resolve(Path::new(init)))
            .is_ok_and(|resolved| names_systemd(&resolved))
}

const PASSWD: &str = "/etc/passwd";
const GROUP: &str = "/etc/group";
const INIT: &str = "/sbin/init";
const OS_RELEASE_PATHS: [&str; 2] = ["/etc/os-release", "/usr/lib/os-release"];

/// root where the image's `/etc/passwd` is missing or does not list it, as runc and Docker
/// take it: uid 0, gid 0, home `/root`.
fn implicit_root() -> PasswdEntry {
    PasswdEntry {
        name: "root".to_owned(),
        uid: 0,
        gid: 0,
        home: PathBuf::from("/root"),
        shell: "/bin/sh".to_owned(),
    }
}

fn read_user(root: &InRoot, rootfs: &Path, username: &str) -> Result<PasswdEntry, RootfsError> {
    let text = match root.read_to_string(Path::new(PASSWD)) {
        Ok(text) => text,
        Err(e) if is_absent(&e) && username == "root" => return Ok(implicit_root()),
        Err(e) if is_absent(&e) => {
            return Err(RootfsError::NoPasswd {
                username: username.to_owned(),
                rootfs: rootfs.to_owned(),
            })
        }
        Err(source) => return Err(read_error(rootfs, PASSWD, source)),
    };
    match passwd::find_user(&text, username) {
        Ok(Some(user)) => Ok(user),
        Ok(None) if username == "root" => Ok(implicit_root()),
        Ok(None) => Err(RootfsError::UserNotFound {
            username: username.to_owned(),
            rootfs: rootfs.to_owned(),
        }),
        Err(e) => Err(RootfsError::Malformed {
            rootfs: rootfs.to_owned(),
            path: PASSWD,
            line: e.line,
            reason: e.reason,
        }),
    }
}

/// The groups `/etc/group` lists `username` in, with notes on what was skipped. No `/etc/group`
/// means no supplementary groups; one that cannot be read (a FIFO, a directory) too, with a
/// note: the groups are what `su` would give, never a reason to refuse the workspace.
fn read_groups(root: &InRoot, rootfs: &Path, username: &str) -> (Vec<GroupEntry>, Vec<String>) {
    match root.read_to_string(Path::new(GROUP)) {
        Ok(text) => group::member_of(&text, username),
        Err(e) if is_absent(&e) => (Vec::new(), Vec::new()),
        Err(e) => (
            Vec::new(),
            vec![format!(
                "reading {GROUP} in rootfs {}: {e}; user {username:?} gets no supplementary groups",
                rootfs.display()
            )],
        ),
    }
}

/// `/sbin/init`, symlinks resolved in-root, is a regular file with an execute bit.
fn has_init(root: &InRoot, rootfs: &Path) -> Result<bool, RootfsError> {
    match root.stat(Path::new(INIT)) {
        Ok(st) => Ok(inroot::is_regular(&st) && st.st_mode & 0o111 != 0),
        Err(e) if is_absent(&e) => Ok(false),
        Err(source) => Err(read_error(rootfs, INIT, source)),
    }
}

fn read_os_release(root: &InRoot, rootfs: &Path) -> Result<Option<OsRelease>, RootfsError> {
    for path in OS_RELEASE_PATHS {
        match root.read_to_string(Path::new(path)) {
            Ok(text) => return Ok(Some(os_release::parse(&text))),
            Err(e) if is_absent(&e) => continue,
            Err(source) => return Err(read_error(rootfs, path, source)),
        }
    }
    Ok(None)
}

/// The path does not exist in the image: missing, a dangling or looping symlink, or a
/// component that is not a directory.
fn is_absent(e: &io::Error) -> bool {
    use nix::errno::Errno;
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP)
    )
}

fn read_error(rootfs: &Path, path: &str, source: io::Error) -> RootfsError {
    RootfsError::Read {
        rootfs: rootfs.to_owned(),
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests;
