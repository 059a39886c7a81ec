//! The Debian image of the corpus: a `debootstrap --variant=minbase bookworm` tree as GNU tar
//! writes it (`--format=posix --xattrs --numeric-owner`, `/dev`, `/proc` and `/sys` left empty
//! as image builders leave them), then a docker-like layer changing it.
//!
//! The tree's tar is made by `support::debian` and cached in `target/tmp/conformance/`
//! (debootstrap needs the Debian mirror and about a minute; `ENVBOX_DEBIAN_MIRROR` picks
//! another mirror).

use std::path::{Path, PathBuf};

use super::corpus::{acl, pattern, CAP_NET_RAW};
use super::layer::{meta, LayerTar, LongNames};
use crate::support::debian::debootstrap_tar;

fn cache_path() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("conformance")
        .join("debian-bookworm-minbase.tar")
}

/// The minbase tree's tar, from the cache or made now (`support::debian`, as the launch
/// tests make theirs).
pub fn minbase_tar() -> Vec<u8> {
    let tar = debootstrap_tar(&cache_path(), "").unwrap_or_else(|message| panic!("{message}"));
    std::fs::read(tar).expect("read the cached tarball")
}

/// A layer as `RUN` steps leave them on top of the tree: every ancestor directory listed; a
/// tree deleted (`/usr/share/doc`); `/var/log` made opaque and refilled; `/usr/bin/perl`
/// replaced (its hard link `perl5.36.0` keeps the old file) and `/usr/bin/uncompress` deleted
/// (its hard link `gunzip` stays); new files with a capability, setuid bit, hard link and
/// symlink; a home directory owned by 1000; the journal directory with the POSIX ACLs systemd
/// gives it (the minbase tree itself carries no xattr: it has no systemd).
pub fn change_layer() -> Vec<u8> {
    let d = meta(0o755).mtime(1_700_000_000, 123_456_789);
    let f = meta(0o644);
    let journal_acl = acl("u::rwx,g::r-x,g:4:r-x,m::r-x,o::r-x");
    let journal = meta(0o2755)
        .owner(0, 101)
        .xattr("system.posix_acl_access", &journal_acl)
        .xattr("system.posix_acl_default", &journal_acl);
    let mut l = LayerTar::new(LongNames::Pax);
    l.dir("etc", &d)
        .file(
            "etc/passwd",
            &f,
            b"root:x:0:0:root:/root:/bin/bash\ncoder:x:1000:1000::/home/coder:/bin/bash\n",
        )
        .whiteout("etc/motd")
        .dir("usr", &meta(0o755))
        .dir("usr/bin", &d)
        .file("usr/bin/perl", &meta(0o755), b"#!/bin/sh\necho not perl\n")
        .whiteout("usr/bin/uncompress")
        .dir("usr/share", &d)
        .whiteout("usr/share/doc")
        .dir("usr/local", &meta(0o755))
        .dir("usr/local/bin", &d)
        .file(
            "usr/local/bin/tool",
            &meta(0o755).xattr("security.capability", &CAP_NET_RAW),
            &pattern(100_000),
        )
        .file("usr/local/bin/su-tool", &meta(0o4755), b"setuid")
        .hardlink("usr/local/bin/tool-again", "usr/local/bin/tool")
        .symlink("usr/local/bin/t", "/usr/local/bin/tool", &f)
        .dir("var", &meta(0o755))
        .dir("var/log", &d)
        .opaque("var/log")
        .file("var/log/new.log", &f, b"fresh log\n")
        .dir("var/log/apt", &d)
        // As systemd's tmpfiles leave the journal (group systemd-journal, adm may read).
        .dir("var/log/journal", &journal)
        .dir("var/log/journal/0123456789abcdef", &journal)
        .file(
            "var/log/journal/0123456789abcdef/system.journal",
            &meta(0o640).owner(0, 101).xattr(
                "system.posix_acl_access",
                &acl("u::rw-,g::r-x,g:4:r-x,m::r--,o::---"),
            ),
            b"LPKSHHRH",
        )
        .dir("home", &meta(0o755))
        .dir("home/coder", &meta(0o700).owner(1000, 1000))
        .file(
            "home/coder/.profile",
            &f.clone().owner(1000, 1000).xattr("user.origin", b"test"),
            b"export PATH\n",
        );
    l.finish()
}
