//! The outer container's mount table (`/proc/self/mountinfo`), parsed into plain structs.
//!
//! Owns: parsing the mountinfo format (octal escapes, optional fields, per-mount and
//! per-superblock options) and answering "which mount holds this path" and "which flags does
//! that mount lock". It never reads the file itself except in [`MountTable::read_self`], and
//! never mounts or unmounts anything.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// Where [`MountTable::read_self`] reads from.
const SELF_MOUNTINFO: &str = "/proc/self/mountinfo";

/// Per-mount flags a bind must repeat, in the order [`MountEntry::locked_flags`] reports them.
const LOCKED_FLAGS: [&str; 6] = [
    "nosuid",
    "nodev",
    "noexec",
    "noatime",
    "nodiratime",
    "strictatime",
];

/// The `mount(2)` flags of locked flag names as [`MountEntry::locked_flags`] reports them (for
/// a bind remount that must repeat them); other names add nothing.
pub fn locked_ms_flags<S: AsRef<str>>(flags: &[S]) -> nix::mount::MsFlags {
    use nix::mount::MsFlags;
    flags
        .iter()
        .map(|flag| match flag.as_ref() {
            "nosuid" => MsFlags::MS_NOSUID,
            "nodev" => MsFlags::MS_NODEV,
            "noexec" => MsFlags::MS_NOEXEC,
            "noatime" => MsFlags::MS_NOATIME,
            "nodiratime" => MsFlags::MS_NODIRATIME,
            "strictatime" => MsFlags::MS_STRICTATIME,
            _ => MsFlags::empty(),
        })
        .fold(MsFlags::empty(), |all, flag| all | flag)
}

/// Fields before the optional fields: id, parent id, major:minor, root, mount point, options.
const FIXED_FIELDS: usize = 6;

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Field 5: where the mount is, in this mount namespace.
    pub mount_point: PathBuf,
    /// Field 4: the root of the mount within its filesystem.
    pub root: PathBuf,
    /// Filesystem type (after the ` - ` separator).
    pub fs_type: String,
    /// Mount source (after the filesystem type).
    pub source: String,
    /// Field 6: per-mount options (`rw`/`ro`, `nosuid`, `nodev`, `noexec`, atime flags).
    pub mount_options: Vec<String>,
    /// Per-superblock options (last field).
    pub super_options: Vec<String>,
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum MountInfoError {
    /// A line that does not have the mountinfo shape.
    #[error("mountinfo line {line}: {reason}: {text:?}")]
    Malformed {
        line: usize,
        reason: &'static str,
        text: String,
    },
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl MountEntry {
    /// True when the mount is read-only (`ro` in the per-mount options).
    pub fn is_read_only(&self) -> bool {
        self.has_mount_option("ro")
    }

    /// Flags a bind of something under this mount must repeat, or the kernel refuses the
    /// remount inside a user namespace (EPERM): `nosuid`, `nodev`, `noexec`, and the atime flag
    /// when it is not the default `relatime` (`noatime`, `nodiratime`, `strictatime`).
    /// Read-only is reported by [`MountEntry::is_read_only`], not here.
    pub fn locked_flags(&self) -> Vec<&'static str> {
        LOCKED_FLAGS
            .into_iter()
            .filter(|flag| self.has_mount_option(flag))
            .collect()
    }

    fn has_mount_option(&self, option: &str) -> bool {
        self.mount_options.iter().any(|o| o == option)
    }
}

/// The whole table, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountTable {
    pub entries: Vec<MountEntry>,
}

impl MountTable {
    /// Parses mountinfo text.
    pub fn parse(text: &str) -> Result<Self, MountInfoError> {
        let entries = text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(index, line)| {
                parse_line(line).map_err(|reason| malformed(index + 1, reason, line))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { entries })
    }

    /// Reads and parses `/proc/self/mountinfo`.
    pub fn read_self() -> Result<Self, MountInfoError> {
        Self::read(Path::new(SELF_MOUNTINFO))
    }

    fn read(path: &Path) -> Result<Self, MountInfoError> {
        let text = std::fs::read_to_string(path).map_err(|source| MountInfoError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text)
    }

    /// The mount that holds `path`: the last entry (later mounts stack on top) whose mount point
    /// is `path` or a parent directory of it, compared component-wise (`/usr/local/nvidia`
    /// holds `/usr/local/nvidia/lib64/x` but not `/usr/local/nvidia2`).
    pub fn containing(&self, path: &Path) -> Option<&MountEntry> {
        self.entries
            .iter()
            .rev()
            .find(|entry| path.starts_with(&entry.mount_point))
    }
}

fn malformed(line: usize, reason: &'static str, text: &str) -> MountInfoError {
    MountInfoError::Malformed {
        line,
        reason,
        text: text.to_string(),
    }
}

/// Parses one non-empty line; the error is the reason it is malformed.
fn parse_line(line: &str) -> Result<MountEntry, &'static str> {
    let fields: Vec<&str> = line.trim_end().split(' ').collect();
    let separator = fields
        .iter()
        .skip(FIXED_FIELDS)
        .position(|field| *field == "-")
        .map(|offset| offset + FIXED_FIELDS)
        .ok_or("no \" - \" separator after the six fixed fields")?;
    let [id, parent, device, root, mount_point, options] = fields[..FIXED_FIELDS] else {
        return Err("fewer than six fields before the separator");
    };
    let [fs_type, source, super_options] = fields[separator + 1..] else {
        return Err("not exactly three fields after the separator");
    };
    check_ids(id, parent, device)?;
    if fs_type.is_empty() {
        return Err("empty filesystem type");
    }
    Ok(MountEntry {
        mount_point: decode_path(mount_point),
        root: decode_path(root),
        fs_type: fs_type.to_string(),
        source: String::from_utf8_lossy(&decode_octal(source)).into_owned(),
        mount_options: split_options(options),
        super_options: split_options(super_options),
    })
}

/// Checks the mount id, parent id and `major:minor` fields are numbers.
fn check_ids(id: &str, parent: &str, device: &str) -> Result<(), &'static str> {
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !numeric(id) || !numeric(parent) {
        return Err("mount id or parent id is not a number");
    }
    match device.split_once(':') {
        Some((major, minor)) if numeric(major) && numeric(minor) => Ok(()),
        _ => Err("device is not major:minor"),
    }
}

fn split_options(field: &str) -> Vec<String> {
    field
        .split(',')
        .filter(|option| !option.is_empty())
        .map(str::to_string)
        .collect()
}

fn decode_path(field: &str) -> PathBuf {
    PathBuf::from(OsString::from_vec(decode_octal(field)))
}

/// Undoes the kernel's escaping of space, tab, newline and backslash as `\ooo` (three octal
/// digits). A backslash not followed by three octal digits is kept as is.
fn decode_octal(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match octal_escape(&bytes[i..]) {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

/// The byte of a `\ooo` escape at the start of `bytes`, if there is one.
fn octal_escape(bytes: &[u8]) -> Option<u8> {
    let [b'\\', digits @ ..] = bytes else {
        return None;
    };
    let digits = digits.get(..3)?;
    if !digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
        return None;
    }
    let value = digits
        .iter()
        .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
    u8::try_from(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/gpu-h100/mountinfo.txt"
    );

    fn fixture() -> MountTable {
        let text = std::fs::read_to_string(FIXTURE).expect("read fixture");
        MountTable::parse(&text).expect("parse fixture")
    }

    #[test]
    fn parses_the_kernel_doc_example() {
        let line = "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue";
        let table = MountTable::parse(line).unwrap();
        assert_eq!(
            table.entries,
            vec![MountEntry {
                mount_point: PathBuf::from("/mnt2"),
                root: PathBuf::from("/mnt1"),
                fs_type: "ext3".into(),
                source: "/dev/root".into(),
                mount_options: vec!["rw".into(), "noatime".into()],
                super_options: vec!["rw".into(), "errors=continue".into()],
            }]
        );
        assert!(!table.entries[0].is_read_only());
        assert_eq!(table.entries[0].locked_flags(), vec!["noatime"]);
    }

    #[test]
    fn several_or_no_optional_fields() {
        let text = "1 0 8:1 / / rw shared:1 master:2 propagate_from:3 - ext4 /dev/sda1 rw\n\
                    2 1 0:5 / /x ro - tmpfs tmpfs ro\n";
        let table = MountTable::parse(text).unwrap();
        assert_eq!(table.entries.len(), 2);
        assert_eq!(table.entries[0].fs_type, "ext4");
        assert!(table.entries[1].is_read_only());
    }

    #[test]
    fn decodes_octal_escapes() {
        let line = r"40 1 0:50 /a\134b /mnt/with\040space\011tab\012nl ro - fuse my\040src rw";
        let entry = &MountTable::parse(line).unwrap().entries[0];
        assert_eq!(entry.mount_point, Path::new("/mnt/with space\ttab\nnl"));
        assert_eq!(entry.root, Path::new(r"/a\b"));
        assert_eq!(entry.source, "my src");
    }

    #[test]
    fn keeps_a_backslash_that_is_not_an_escape() {
        assert_eq!(decode_octal(r"a\9b\04"), br"a\9b\04".to_vec());
        assert_eq!(decode_octal(r"\777"), br"\777".to_vec());
    }

    #[test]
    fn empty_source_is_kept() {
        let entry = &MountTable::parse("5 1 0:9 / /t rw - tmpfs  rw")
            .unwrap()
            .entries[0];
        assert_eq!(entry.source, "");
        assert_eq!(entry.fs_type, "tmpfs");
    }

    #[test]
    fn ignores_empty_lines() {
        let text = "\n1 0 8:1 / / rw - ext4 /dev/sda1 rw\n\n   \n";
        assert_eq!(MountTable::parse(text).unwrap().entries.len(), 1);
    }

    #[test]
    fn malformed_lines_name_their_line_number() {
        let cases = [
            "1 0 8:1 / / rw ext4 /dev/sda1 rw",
            "1 0 8:1 / - ext4 /dev/sda1 rw",
            "1 0 8:1 / / rw - ext4 /dev/sda1",
            "x 0 8:1 / / rw - ext4 /dev/sda1 rw",
            "1 0 81 / / rw - ext4 /dev/sda1 rw",
        ];
        for case in cases {
            let text = format!("1 0 8:1 / / rw - ext4 /dev/sda1 rw\n\n{case}\n");
            match MountTable::parse(&text) {
                Err(MountInfoError::Malformed { line, text, .. }) => {
                    assert_eq!(line, 3, "{case}");
                    assert_eq!(text, case);
                }
                other => panic!("{case}: {other:?}"),
            }
        }
    }

    #[test]
    fn locked_flags_in_fixed_order_without_relatime() {
        let line =
            "1 0 8:1 / /m ro,strictatime,noexec,relatime,nodev,nosuid,nodiratime - ext4 d rw";
        let entry = &MountTable::parse(line).unwrap().entries[0];
        assert_eq!(
            entry.locked_flags(),
            vec!["nosuid", "nodev", "noexec", "nodiratime", "strictatime"]
        );
    }

    #[test]
    fn super_options_do_not_make_a_mount_read_only() {
        let entry = &MountTable::parse("1 0 8:1 / /m rw - ext4 d ro,nosuid")
            .unwrap()
            .entries[0];
        assert!(!entry.is_read_only());
        assert!(entry.locked_flags().is_empty());
    }

    #[test]
    fn fixture_driver_tree_is_read_only_and_locks_nosuid_nodev() {
        let table = fixture();
        assert_eq!(table.entries.len(), 10);
        let lib = Path::new("/usr/local/nvidia/lib64/libcuda.so.1");
        let entry = table.containing(lib).unwrap();
        assert_eq!(entry.mount_point, Path::new("/usr/local/nvidia"));
        assert_eq!(entry.fs_type, "squashfs");
        assert_eq!(entry.source, "/dev/vdb");
        assert!(entry.is_read_only());
        assert_eq!(entry.locked_flags(), vec!["nosuid", "nodev"]);
    }

    #[test]
    fn containing_compares_components_and_prefers_the_last_mount() {
        let table = fixture();
        let root = |p: &str| table.containing(Path::new(p)).unwrap().mount_point.clone();
        assert_eq!(root("/usr/local/nvidia2/x"), Path::new("/"));
        assert_eq!(root("/usr/local/nvidia"), Path::new("/usr/local/nvidia"));
        assert_eq!(root("/usr/lib/libc.so.6"), Path::new("/"));
        // Entries 26 and 30 are both /dev/pts: the later one stacks on top.
        let pts = table.containing(Path::new("/dev/pts/0")).unwrap();
        assert_eq!(pts.mount_point, Path::new("/dev/pts"));
        assert!(std::ptr::eq(pts, &table.entries[7]));
        assert!(MountTable::default().containing(Path::new("/x")).is_none());
    }

    #[test]
    fn read_reports_the_path() {
        let err = MountTable::read(Path::new("/nonexistent/mountinfo")).unwrap_err();
        assert!(
            matches!(err, MountInfoError::Read { ref path, .. } if path == Path::new("/nonexistent/mountinfo"))
        );
    }

    #[test]
    fn reads_its_own_mount_table() {
        let table = MountTable::read_self().unwrap();
        assert!(table.containing(Path::new("/")).is_some());
    }
}
