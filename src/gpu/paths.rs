//! Lexical path arithmetic for planning: normalising `.`/`..` and moving a path from one
//! directory to another.
//!
//! Owns: pure string-level path operations. It never looks at the filesystem (no
//! canonicalize, no readlink): planning must stay pure and work on paths that do not exist here.

use std::path::{Component, Path, PathBuf};

/// Removes `.` and empty components and applies `..` to the previous component (`/..` stays
/// `/`). A relative path keeps leading `..` components it cannot resolve.
pub(super) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => pop_parent(&mut out),
            other => out.push(other),
        }
    }
    out
}

fn pop_parent(out: &mut PathBuf) {
    match out.components().next_back() {
        Some(Component::Normal(_)) => {
            out.pop();
        }
        Some(Component::RootDir | Component::Prefix(_)) => {}
        Some(Component::ParentDir | Component::CurDir) | None => out.push(".."),
    }
}

/// Where a symlink's target points, lexically: absolute targets as they are, relative ones
/// against the link's directory; normalised either way.
pub(super) fn link_destination(link: &Path, target: &Path) -> PathBuf {
    let base = link.parent().unwrap_or(Path::new("/"));
    normalize(&base.join(target))
}

/// `path` moved from under `from` to under `to`, if `path` is `from` or inside it.
pub(super) fn rebase(path: &Path, from: &Path, to: &Path) -> Option<PathBuf> {
    let relative = path.strip_prefix(from).ok()?;
    Some(if relative.as_os_str().is_empty() {
        to.to_path_buf()
    } else {
        to.join(relative)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_lexically() {
        assert_eq!(normalize(Path::new("/a/./b//c/../d")), Path::new("/a/b/d"));
        assert_eq!(normalize(Path::new("/../../x")), Path::new("/x"));
        assert_eq!(normalize(Path::new("a/../../b")), Path::new("../b"));
        assert_eq!(normalize(Path::new("/a/b/")), Path::new("/a/b"));
    }

    #[test]
    fn resolves_link_targets() {
        let link = Path::new("/lib/x/libfoo.so");
        assert_eq!(
            link_destination(link, Path::new("libfoo.so.1")),
            Path::new("/lib/x/libfoo.so.1")
        );
        assert_eq!(
            link_destination(link, Path::new("../y/l.so")),
            Path::new("/lib/y/l.so")
        );
        assert_eq!(
            link_destination(link, Path::new("/opt/./l.so")),
            Path::new("/opt/l.so")
        );
    }

    #[test]
    fn rebases_inside_only() {
        let (from, to) = (Path::new("/var/coder/usr/lib"), Path::new("/usr/lib64"));
        assert_eq!(
            rebase(Path::new("/var/coder/usr/lib/a/b.so"), from, to),
            Some(PathBuf::from("/usr/lib64/a/b.so"))
        );
        assert_eq!(rebase(from, from, to), Some(PathBuf::from("/usr/lib64")));
        assert_eq!(
            rebase(Path::new("/var/coder/usr/lib2/b.so"), from, to),
            None
        );
    }
}
