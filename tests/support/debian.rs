//! A Debian workspace image built the way users build theirs, from Debian packages only: a
//! `debootstrap --variant=minbase --include=sudo,acl bookworm` tree, then layers made with
//! umoci (`unpack`, change the tree, `repack`) as `RUN` steps would make them: a user `coder`
//! (uid 1000) in groups `sudo`, `docker` (gid 102) and `farout` (gid 70000, beyond what maps into
//! the workspace), passwordless sudo for it, `/srv/docker-only` readable by group `docker` only,
//! and `/srv/shared` with access and default ACL
//! entries for uid 1000 and gid 102.
//!
//! The tree's tar is cached in `target/tmp/launch/` (debootstrap needs the Debian mirror and
//! about a minute; `ENVBOX_DEBIAN_MIRROR` picks another mirror); the cache is written staged
//! and renamed, so an interrupted run leaves no half tarball. The layout itself is rebuilt by
//! every run (some seconds). Needs root, debootstrap and umoci; without them, or when
//! debootstrap fails (no mirror), the test is skipped, except in CI (`CI` set), where it fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::host::root_and_tools_met;

const SUITE: &str = "bookworm";
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
const PACKAGES: &str = "sudo,acl";

/// The users, groups and sudo rule: one `RUN` step.
const USERS_STEP: &str = "\
groupadd --gid 102 docker
groupadd --gid 70000 farout
useradd --create-home --uid 1000 --user-group --groups sudo,docker,farout --shell /bin/bash coder
echo 'coder ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/coder
chmod 0440 /etc/sudoers.d/coder
echo docker-group-only > /srv/docker-only
chown root:docker /srv/docker-only
chmod 0640 /srv/docker-only
";

/// The directory with ACLs: a second `RUN` step.
const ACL_STEP: &str = "\
mkdir -p /srv/shared
setfacl -m u:1000:rwx,g:102:r-x,d:u:1000:rwx,d:g:102:r-x /srv/shared
";

fn cache_path() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("launch")
        .join(format!(
            "debian-{SUITE}-minbase-{}.tar",
            PACKAGES.replace(',', "-")
        ))
}

/// Packages installed with apt-get in the chroot, one `RUN` step each, for the warm-start
/// bench's image (issue 21: layers `umoci repack` commits after `apt-get install` write into
/// directories they do not list). Needs the Debian mirror from the chroot.
pub const APT_STEPS: [(&str, &str); 2] = [
    (
        "systemd",
        "apt-get update -qq\nDEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null\n",
    ),
    (
        "tools",
        "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends procps less ca-certificates >/dev/null\napt-get clean\nrm -rf /var/lib/apt/lists/*\n",
    ),
];

/// Writes the image as `tag` into a new OCI layout at `layout`, which must not exist yet (three
/// layers: the Debian tree, the users, the ACL'd directory). False when the test is to be
/// skipped (never in CI).
pub fn user_image_layout(layout: &Path, tag: &str) -> bool {
    layered_image_layout(layout, tag, &[])
}

/// [`user_image_layout`] with more `RUN` steps after the ACL step, each a layer (`extra`:
/// name and script; the host's `/etc/resolv.conf` is copied in first, for apt).
pub fn layered_image_layout(layout: &Path, tag: &str, extra: &[(&str, &str)]) -> bool {
    if !root_and_tools_met(
        "the Debian user image",
        &[("debootstrap", "debootstrap"), ("umoci", "umoci")],
    ) {
        return false;
    }
    let Some(tree) = tree_tar() else {
        return false;
    };
    let image = |tag: &str| format!("{}:{tag}", layout.display());
    run(
        "umoci",
        &["init", "--layout", &layout.display().to_string()],
    );
    run("umoci", &["new", "--image", &image("base")]);
    run(
        "umoci",
        &[
            "raw",
            "add-layer",
            "--image",
            &image("base"),
            &tree.display().to_string(),
        ],
    );
    let work = tempfile::Builder::new()
        .prefix("envbox-umoci")
        .tempdir_in("/var/tmp")
        .expect("umoci bundle dir");
    let bundle = work.path().join("bundle");
    let bundle_arg = bundle.display().to_string();
    run("umoci", &["unpack", "--image", &image("base"), &bundle_arg]);
    let rootfs = bundle.join("rootfs");
    let mut steps = vec![("users", USERS_STEP), ("acl", ACL_STEP)];
    steps.extend_from_slice(extra);
    let last = steps.len() - 1;
    for (i, (step, script)) in steps.into_iter().enumerate() {
        let next = if i == last { tag } else { step };
        if !extra.is_empty() {
            let resolv = rootfs.join("etc/resolv.conf");
            let _ = std::fs::remove_file(&resolv);
            std::fs::copy("/etc/resolv.conf", &resolv).expect("copy resolv.conf");
        }
        let out = Command::new("chroot")
            .arg(&rootfs)
            .args(["/bin/sh", "-euc", script])
            .output()
            .expect("run chroot");
        assert!(
            out.status.success(),
            "image step {step} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        run(
            "umoci",
            &[
                "repack",
                "--refresh-bundle",
                "--image",
                &image(next),
                &bundle_arg,
            ],
        );
    }
    true
}

/// Runs a command that must succeed.
fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The user image's tree: a minbase with [`PACKAGES`]. None when debootstrap failed outside
/// CI (the test is skipped); in CI that fails the test.
fn tree_tar() -> Option<PathBuf> {
    match debootstrap_tar(&cache_path(), PACKAGES) {
        Ok(tar) => Some(tar),
        Err(message) if std::env::var_os("CI").is_some() => panic!("{message}"),
        Err(message) => {
            eprintln!("SKIPPED: {message}");
            None
        }
    }
}

/// A `debootstrap --variant=minbase` tree of [`SUITE`] with the packages `include` names
/// (comma-separated; none when empty) as a tar (GNU tar, POSIX format with xattrs, numeric
/// owners, `/dev`, `/proc` and `/sys` empty, as image builders leave them), from the cache at
/// `cache` or made now and cached there (staged and renamed: an interrupted run leaves no half
/// tarball). Err says why debootstrap failed. Shared with the unpack conformance suite.
pub fn debootstrap_tar(cache: &Path, include: &str) -> Result<PathBuf, String> {
    if cache.is_file() {
        return Ok(cache.to_owned());
    }
    let dir = cache.parent().expect("cache dir");
    std::fs::create_dir_all(dir).expect("create the debootstrap cache dir");
    let work = tempfile::Builder::new()
        .prefix("envbox-debootstrap")
        .tempdir_in("/var/tmp")
        .expect("debootstrap work dir");
    let root = work.path().join("root");
    let mirror = std::env::var("ENVBOX_DEBIAN_MIRROR").unwrap_or_else(|_| DEFAULT_MIRROR.into());
    let mut args = vec!["--variant=minbase".to_owned()];
    if !include.is_empty() {
        args.push(format!("--include={include}"));
    }
    args.push(SUITE.to_owned());
    let out = Command::new("debootstrap")
        .args(&args)
        .arg(&root)
        .arg(&mirror)
        .output()
        .expect("run debootstrap");
    if !out.status.success() {
        let log =
            std::fs::read_to_string(root.join("debootstrap/debootstrap.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        return Err(format!(
            "debootstrap {} from {mirror} failed (is the Debian mirror reachable? \
             ENVBOX_DEBIAN_MIRROR picks another): {}{}\nlog tail (last first):\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail.join("\n")
        ));
    }
    let staged = dir.join(format!(
        ".{}.{}",
        cache.file_name().unwrap().to_string_lossy(),
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
    std::fs::rename(&staged, cache).expect("publish the cached tarball");
    Ok(cache.to_owned())
}
