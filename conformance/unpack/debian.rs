//! The Debian image of the corpus: a `debootstrap --variant=minbase bookworm` tree as GNU tar
//! writes it (`--format=posix --xattrs --numeric-owner`, `/dev`, `/proc` and `/sys` left empty
//! as image builders leave them), then a docker-like layer changing it.
//!
//! The tree's tar is cached in `target/tmp/conformance/` (debootstrap needs the Debian mirror
//! and about a minute; `ENVBOX_DEBIAN_MIRROR` picks another mirror). The cache is written
//! staged and renamed, so an interrupted run leaves no half tarball.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::corpus::{acl, pattern, CAP_NET_RAW};
use super::layer::{meta, LayerTar, LongNames};

const SUITE: &str = "bookworm";
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

fn cache_path() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("conformance")
        .join(format!("debian-{SUITE}-minbase.tar"))
}

/// The minbase tree's tar, from the cache or made now.
pub fn minbase_tar() -> Vec<u8> {
    let cache = cache_path();
    if let Ok(tar) = std::fs::read(&cache) {
        return tar;
    }
    let dir = cache.parent().expect("cache dir");
    std::fs::create_dir_all(dir).expect("create the conformance cache dir");
    let work = tempfile::Builder::new()
        .prefix("envbox-debootstrap")
        .tempdir_in("/var/tmp")
        .expect("debootstrap work dir");
    let root = work.path().join("root");
    let mirror = std::env::var("ENVBOX_DEBIAN_MIRROR").unwrap_or_else(|_| DEFAULT_MIRROR.into());
    let out = Command::new("debootstrap")
        .args(["--variant=minbase", SUITE])
        .arg(&root)
        .arg(&mirror)
        .output()
        .expect("run debootstrap");
    if !out.status.success() {
        let log =
            std::fs::read_to_string(root.join("debootstrap/debootstrap.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        panic!(
            "debootstrap --variant=minbase {SUITE} from {mirror} failed: {}{}\nlog tail (last first):\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail.join("\n")
        );
    }
    let staged = dir.join(format!(
        ".debian-{SUITE}-minbase.tar.{}",
        std::process::id()
    ));
    let status = Command::new("tar")
        .arg("--create")
        .arg("--file")
        .arg(&staged)
        .args([
            "--format=posix",
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "--sort=name",
            "--exclude=./dev/*",
            "--exclude=./proc/*",
            "--exclude=./sys/*",
            "-C",
        ])
        .arg(&root)
        .arg(".")
        .status()
        .expect("run tar");
    assert!(status.success(), "tar of the debootstrap tree failed");
    std::fs::rename(&staged, &cache).expect("publish the cached tarball");
    std::fs::read(&cache).expect("read the cached tarball")
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
