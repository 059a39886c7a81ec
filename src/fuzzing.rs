//! Entry points for the fuzz targets (`fuzz/fuzz_targets/`), built only with `--cfg fuzzing`
//! (as `cargo fuzz` builds): one thin function per parser of untrusted bytes, taking the
//! fuzzer's input and checking the properties that must hold for any input.
//!
//! Owns: the one place that names the crate's internal parsers for fuzzing, so a module moved
//! elsewhere is repointed here alone. Every function panics on a broken property (libFuzzer
//! reports a panic as a crash) and returns normally on input the parser refuses. It must never
//! write outside the scratch directory of [`unpack_tree`], and is never part of a normal build.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::digest::Digest;

/// Most bytes read out of one decoder or one tar entry (decompression bombs and sparse holes
/// would otherwise turn into timeouts).
const READ_CAP: u64 = 8 << 20;

/// The input as text (invalid UTF-8 replaced: the parsers take `&str`).
fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// The tar reader (`unpack::archive`) and entry decoding (`unpack::header`), no filesystem:
/// every entry's contents read (up to [`READ_CAP`]) and its header decoded.
pub fn tar(data: &[u8]) {
    use crate::unpack::archive::Archive;
    use crate::unpack::header;
    let layer = Digest::of(b"fuzz layer");
    let mut archive = Archive::new(data);
    let mut budget = READ_CAP;
    loop {
        let raw = match archive.next() {
            Ok(Some(raw)) => raw,
            Ok(None) => break,
            Err(_) => return,
        };
        let size = raw.size;
        if size <= budget {
            let mut contents = Vec::new();
            match archive.contents().read_to_end(&mut contents) {
                // Contents are exactly the entry's size (holes of a sparse file included).
                Ok(n) => assert_eq!(n as u64, size, "contents of {:?}", raw.path),
                Err(_) => return,
            }
            budget -= size;
        }
        if let Ok(entry) = header::decode(&layer, raw) {
            for part in &entry.parts {
                let part = part.as_encoded_bytes();
                assert!(
                    !part.is_empty() && part != b"." && part != b".." && !part.contains(&b'/'),
                    "{:?} normalised to {:?}",
                    entry.path,
                    entry.parts
                );
            }
        }
    }
    let mut rest = Vec::new();
    let _ = archive.into_rest().read_to_end(&mut rest);
}

/// Scratch directories of [`unpack_tree`]: `outside/` (must never change), `work/` (the
/// target's parent: only the target may appear in it) and `blobs/` (the layers' bytes).
struct Scratch {
    base: PathBuf,
    outside: Snapshot,
}

/// A directory tree's names, kinds, modes, sizes and contents.
type Snapshot = BTreeMap<PathBuf, (u32, u64, Vec<u8>)>;

fn snapshot(dir: &Path) -> Snapshot {
    let mut out = Snapshot::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(dir) = todo.pop() {
        for entry in fs::read_dir(&dir).expect("listing scratch directory") {
            let path = entry.expect("scratch directory entry").path();
            let meta = fs::symlink_metadata(&path).expect("scratch entry metadata");
            let contents = if meta.is_file() {
                fs::read(&path).expect("reading scratch file")
            } else if meta.is_symlink() {
                fs::read_link(&path)
                    .expect("reading scratch link")
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                todo.push(path.clone());
                Vec::new()
            };
            out.insert(path, (meta.mode(), meta.size(), contents));
        }
    }
    out
}

fn scratch() -> &'static Scratch {
    static SCRATCH: OnceLock<Scratch> = OnceLock::new();
    SCRATCH.get_or_init(|| {
        let top = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let base = top.join(format!("envbox-fuzz-unpack-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let outside = base.join("outside");
        fs::create_dir_all(outside.join("dir")).expect("creating scratch directories");
        fs::create_dir_all(base.join("work")).expect("creating scratch directories");
        fs::create_dir_all(base.join("blobs")).expect("creating scratch directories");
        fs::write(outside.join("file"), b"must stay").expect("writing sentinel");
        fs::write(outside.join("dir/file"), b"must stay too").expect("writing sentinel");
        fs::set_permissions(outside.join("dir"), fs::Permissions::from_mode(0o755))
            .expect("chmod sentinel");
        // Removed when libFuzzer exits normally (a crash leaves it, beside the input).
        extern "C" fn remove_scratch() {
            if let Some(scratch) = SCRATCH.get() {
                let _ = fs::remove_dir_all(&scratch.base);
            }
        }
        // SAFETY: registers a function without arguments that only removes a directory.
        unsafe { libc::atexit(remove_scratch) };
        Scratch {
            outside: snapshot(&outside),
            base,
        }
    })
}

/// The tree writer (`unpack::flatten`, with the stream reader and entry decoding under it):
/// the input is one uncompressed layer, or two when its first byte is not zero (split after
/// that many 512-byte blocks of the rest), flattened into a fresh directory. Whatever the
/// layers hold, nothing outside the target may change, and the target exists exactly when
/// the flatten succeeded.
pub fn unpack_tree(data: &[u8]) {
    use crate::image::Compression;
    use crate::unpack::{flatten, Durability, LayerSource, Limits};
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let layers: Vec<&[u8]> = match usize::from(split) * 512 {
        0 => vec![rest],
        at => {
            let (a, b) = rest.split_at(at.min(rest.len()));
            vec![a, b]
        }
    };
    let scratch = scratch();
    let sources: Vec<LayerSource> = layers
        .iter()
        .enumerate()
        .map(|(i, bytes)| {
            let blob = scratch.base.join(format!("blobs/{i}"));
            fs::write(&blob, bytes).expect("writing layer blob");
            let diff_id = Digest::of(bytes);
            LayerSource {
                blob,
                compression: Compression::None,
                digest: diff_id.clone(),
                diff_id,
            }
        })
        .collect();
    let limits = Limits {
        max_uncompressed_bytes: READ_CAP,
        max_entries: 10_000,
    };
    let work = scratch.base.join("work");
    let target = work.join("root");
    let result = flatten(&sources, &target, &limits, Durability::Scratch);

    let left: Vec<_> = fs::read_dir(&work)
        .expect("listing work directory")
        .map(|e| e.expect("work directory entry").file_name())
        .collect();
    let expected: &[&str] = if result.is_ok() { &["root"] } else { &[] };
    assert_eq!(left, expected, "after {result:?}");
    let mut top: Vec<_> = fs::read_dir(&scratch.base)
        .expect("listing scratch directory")
        .map(|e| e.expect("scratch entry").file_name())
        .collect();
    top.sort();
    assert_eq!(top, ["blobs", "outside", "work"], "after {result:?}");
    assert_eq!(
        snapshot(&scratch.base.join("outside")),
        scratch.outside,
        "outside the target after {result:?}"
    );
    if result.is_ok() {
        fs::remove_dir_all(&target).expect("removing the flattened tree");
    }
}

/// Gzip member framing (`unpack::gzip`), read through a buffer of the first byte's size (so
/// headers and trailers straddle refills). What flate2's multi-member decoder reads, this reads
/// the same (it also takes zero padding after the last member, and checks no CRC).
pub fn gzip(data: &[u8]) {
    use crate::unpack::gzip::MultiGz;
    let Some((&capacity, blob)) = data.split_first() else {
        return;
    };
    let capacity = usize::from(capacity).max(1);
    let ours = read_capped(MultiGz::new(BufReader::with_capacity(capacity, blob)));
    if blob.is_empty() {
        return;
    }
    let theirs = read_capped(flate2::bufread::MultiGzDecoder::new(blob));
    if let Some(Ok(theirs)) = theirs {
        match ours {
            Some(Ok(ours)) => assert!(ours == theirs, "flate2 and envbox inflate differently"),
            Some(Err(e)) => panic!("flate2 reads it, envbox refuses it: {e}"),
            None => panic!("envbox inflates more than flate2"),
        }
    }
}

/// Everything `reader` yields, `None` past [`READ_CAP`].
fn read_capped(reader: impl Read) -> Option<io::Result<Vec<u8>>> {
    let mut out = Vec::new();
    match reader.take(READ_CAP + 1).read_to_end(&mut out) {
        Ok(_) if out.len() as u64 > READ_CAP => None,
        Ok(_) => Some(Ok(out)),
        Err(e) => Some(Err(e)),
    }
}

/// Image references (`image::reference`): a parsed reference parses again from its
/// normalised form to itself, and the hand-written parser of the common forms builds exactly
/// what oci-spec's grammar builds whenever it accepts a string.
pub fn reference(data: &[u8]) {
    use crate::image::reference::plain;
    use crate::image::{normalize_host, ImageRef};
    use oci_spec::distribution::Reference;
    let text = text(data);
    if let Some(plain) = plain::parse(&text) {
        let grammar = Reference::try_from(text.as_str());
        assert_eq!(grammar.as_ref().ok(), Some(&plain), "{text:?}: {grammar:?}");
    }
    if let Ok(image) = ImageRef::parse(&text) {
        let again = ImageRef::parse(&image.normalized());
        assert_eq!(again.as_ref().ok(), Some(&image), "{text:?}: {again:?}");
        let _ = (image.host(), image.normalized_repository(), image.digest());
        if let Some(digest) = image.digest() {
            assert_eq!(image.at(&digest).digest(), Some(digest));
        }
    }
    let _ = normalize_host(&text);
    // `--image` / CODER_INNER_IMAGE: a registry reference or a local layout or archive; what
    // envbox prints of it reads back as the same source.
    if let Ok(source) = crate::source::ImageSource::parse(&text) {
        let again = crate::source::ImageSource::parse(&source.to_string());
        assert_eq!(
            again.as_ref().ok(),
            Some(&source),
            "{text:?} shown as {source}"
        );
    }
}

/// The image's account and OS files as envbox reads them (`rootfs`): `/etc/passwd`,
/// `/etc/group` and `/etc/os-release` text. The input is a user name, a NUL, then the text.
pub fn image_files(data: &[u8]) {
    use crate::rootfs::{find_user, member_of, parse_os_release};
    let (name, rest) = match data.iter().position(|b| *b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&b"root"[..], data),
    };
    let (name, text) = (self::text(name), self::text(rest));
    if let Ok(Some(entry)) = find_user(&text, &name) {
        assert_eq!(entry.name, name);
        assert!(!entry.home.as_os_str().is_empty(), "{entry:?}");
    }
    let (groups, notes) = member_of(&text, &name);
    let mut gids: Vec<u32> = groups.iter().map(|g| g.gid).collect();
    gids.sort_unstable();
    gids.dedup();
    assert_eq!(gids.len(), groups.len(), "each gid once: {groups:?}");
    for group in &groups {
        let line = format!("{}:", group.name);
        assert!(
            text.lines().any(|l| l.starts_with(&line)),
            "{group:?} is a line of the text"
        );
    }
    assert!(notes.len() <= text.lines().count());
    let release = parse_os_release(&text);
    assert!(
        release
            .id_like
            .iter()
            .all(|w| !w.is_empty() && !w.contains(char::is_whitespace)),
        "{release:?}"
    );
}

/// Manifests, indexes and image configs (`image::manifest`, `image::describe`,
/// `image::config`): parsed as the first byte's content type says, then taken apart as a pull would.
pub fn manifest(data: &[u8]) {
    use crate::image::describe::{self, Target};
    use crate::image::manifest::{self, Manifest, ACCEPTED};
    use crate::image::Platform;
    use crate::image::{ImageConfig, ImageDocument};
    let Some((&which, json)) = data.split_first() else {
        return;
    };
    let content_type = ACCEPTED.get(usize::from(which) % (ACCEPTED.len() + 1));
    let reference = "fuzz.example/image:latest";
    match manifest::parse(json, content_type.copied(), reference) {
        Ok(Manifest::Index(index)) => {
            let platforms = [
                Platform::host(),
                Platform {
                    os: "linux".into(),
                    architecture: "arm64".into(),
                    variant: Some("v8".into()),
                },
            ];
            for wanted in &platforms {
                let _ = describe::platform_entry(&index.manifests, wanted, reference);
            }
        }
        Ok(Manifest::Image(image)) => {
            for layer in &image.layers {
                assert!(manifest::layer_compression(&layer.media_type).is_some());
            }
            let _ = describe::blobs_of(&image, reference);
            let entry = Target {
                digest: Digest::of(json),
                size: json.len() as u64,
                media_type: manifest::OCI_MANIFEST.into(),
            };
            assert!(describe::entry_manifest(json, &entry, reference).is_ok());
        }
        Err(_) => {}
    }
    let _ = ImageDocument::from_json(json, "fuzz");
    let _ = ImageConfig::from_json(&text(json), "fuzz");
}

/// The `WWW-Authenticate` challenge parser of the registry client.
pub fn www_authenticate(data: &[u8]) {
    let challenge = crate::registry::challenge::parse(&text(data));
    let _ = format!("{challenge:?}");
}

/// `/proc/self/mountinfo` (`mountinfo`): every parsed mount point holds itself.
pub fn mountinfo(data: &[u8]) {
    use crate::mountinfo::{locked_ms_flags, MountTable};
    let Ok(table) = MountTable::parse(&text(data)) else {
        return;
    };
    for entry in &table.entries {
        let _ = entry.is_read_only();
        let _ = locked_ms_flags(&entry.locked_flags());
        assert!(
            table.containing(&entry.mount_point).is_some(),
            "{:?} does not hold itself",
            entry.mount_point
        );
    }
}

/// The settings' value parsers (`config::value`), each given the whole input.
pub fn settings(data: &[u8]) {
    use crate::config::value::*;
    use std::path::Component;
    let text = text(data);
    let _ = parse_duration(&text);
    let _ = parse_bool(&text);
    if let Ok(Some(milli)) = parse_cpus(&text) {
        assert!(milli >= 10, "{text:?}: {milli}m");
    }
    if let Ok(Some(bytes)) = parse_memory(&text) {
        assert!(bytes >= MIN_MEMORY_BYTES, "{text:?}: {bytes}");
    }
    if let Ok(net) = parse_cidr(&text) {
        assert!((8..=30).contains(&net.prefix), "{text:?}: {net}");
        assert_eq!(parse_cidr(&net.to_string()), Ok(net));
        let _ = net.first_lease();
    }
    let clean = |path: &Path| {
        path.is_absolute()
            && path
                .components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
            && absolute_clean(&path.to_string_lossy()).as_deref() == Ok(path)
    };
    if let Ok(mounts) = parse_mounts(&text) {
        for mount in mounts {
            assert!(
                clean(&mount.source) && clean(&mount.destination),
                "{mount:?}"
            );
            assert_ne!(mount.destination, Path::new("/"));
        }
    }
    if let Ok(path) = absolute_clean(&text) {
        assert!(clean(&path), "{text:?}: {path:?}");
    }
    if let Ok(patterns) = parse_env_patterns(&text) {
        for pattern in patterns {
            if let EnvPattern::Exact(name) = &pattern {
                assert!(pattern.matches(name));
            }
        }
    }
    if let Ok(name) = parse_hostname(&text) {
        assert_eq!(name, text);
    }
    let _ = parse_hosts(&text);
    let _ = agent_subsystem(Some(&text));
}
