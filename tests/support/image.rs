//! Deterministic OCI image layouts written by hand (`oci-layout`, `index.json`,
//! `blobs/sha256/..`): layers from explicit entries (files, dirs, symlinks, hardlinks, whiteouts,
//! opaque dirs) or from a tar written elsewhere ([`Layer::from_tar`]), compressed with gzip,
//! multi-member gzip, zstd or nothing; one image per tag or a multi-platform image index; a
//! busybox image and large benchmark images. Same input, same digests: tar headers carry
//! mtime 0 and uid/gid 0, data comes from a seeded PRNG.

use std::fs;
use std::io::Write;
use std::path::Path;

use serde_json::{json, Value};

use super::server::sha256_digest;

pub const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MT_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const MT_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// One entry of a layer tar. Paths are absolute or relative; the leading `/` is dropped.
#[derive(Clone, Debug)]
pub enum Entry {
    File {
        path: String,
        mode: u32,
        contents: Vec<u8>,
    },
    Dir {
        path: String,
        mode: u32,
    },
    Symlink {
        path: String,
        target: String,
    },
    Hardlink {
        path: String,
        target: String,
    },
    /// `dir/.wh.name`: deletes `path` from lower layers.
    Whiteout {
        path: String,
    },
    /// `path/.wh..wh..opq`: hides everything lower layers have in `path`.
    OpaqueDir {
        path: String,
    },
}

impl Entry {
    pub fn file(path: &str, mode: u32, contents: impl Into<Vec<u8>>) -> Entry {
        Entry::File {
            path: path.to_owned(),
            mode,
            contents: contents.into(),
        }
    }
    pub fn dir(path: &str, mode: u32) -> Entry {
        Entry::Dir {
            path: path.to_owned(),
            mode,
        }
    }
    pub fn symlink(path: &str, target: &str) -> Entry {
        Entry::Symlink {
            path: path.to_owned(),
            target: target.to_owned(),
        }
    }
    pub fn hardlink(path: &str, target: &str) -> Entry {
        Entry::Hardlink {
            path: path.to_owned(),
            target: target.to_owned(),
        }
    }
    pub fn whiteout(path: &str) -> Entry {
        Entry::Whiteout {
            path: path.to_owned(),
        }
    }
    pub fn opaque_dir(path: &str) -> Entry {
        Entry::OpaqueDir {
            path: path.to_owned(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// One gzip member (fast level; deterministic).
    Gzip,
    /// Several concatenated gzip members, one per 64 KiB of tar (like pigz): a decoder that
    /// stops after the first member silently truncates the layer.
    GzipMultiMember,
    Zstd,
    /// Uncompressed tar.
    None,
}

#[derive(Clone, Debug)]
pub struct Layer {
    pub entries: Vec<Entry>,
    pub compression: Compression,
    /// Media type written into the manifest instead of the one matching `compression`.
    pub media_type_override: Option<String>,
    /// The layer's uncompressed tar, written elsewhere (then `entries` is not used).
    pub raw_tar: Option<Vec<u8>>,
}

impl Layer {
    /// A gzip layer.
    pub fn new(entries: Vec<Entry>) -> Layer {
        Layer {
            entries,
            compression: Compression::Gzip,
            media_type_override: None,
            raw_tar: None,
        }
    }
    /// A gzip layer whose uncompressed tar is `tar` as given (PAX records, GNU long names,
    /// ownership, xattrs: whatever the caller's tar writer put there).
    pub fn from_tar(tar: Vec<u8>) -> Layer {
        Layer {
            raw_tar: Some(tar),
            ..Layer::new(Vec::new())
        }
    }
    pub fn compression(mut self, compression: Compression) -> Layer {
        self.compression = compression;
        self
    }
    pub fn media_type(mut self, media_type: &str) -> Layer {
        self.media_type_override = Some(media_type.to_owned());
        self
    }
    fn media_type_str(&self) -> String {
        if let Some(mt) = &self.media_type_override {
            return mt.clone();
        }
        match self.compression {
            Compression::Gzip | Compression::GzipMultiMember => MT_LAYER_GZIP,
            Compression::Zstd => MT_LAYER_ZSTD,
            Compression::None => MT_LAYER_TAR,
        }
        .to_owned()
    }
}

#[derive(Clone, Debug)]
pub struct ImageSpec {
    pub layers: Vec<Layer>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub stop_signal: Option<String>,
    pub user: Option<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub labels: Vec<(String, String)>,
    pub os: String,
    /// `amd64` or `arm64` (any GOARCH string goes).
    pub architecture: String,
    pub variant: Option<String>,
}

impl ImageSpec {
    /// A linux image for `arch` with no layers (`arm64` gets variant `v8`).
    pub fn new(arch: &str) -> ImageSpec {
        ImageSpec {
            layers: Vec::new(),
            env: vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
            ],
            working_dir: None,
            stop_signal: None,
            user: None,
            entrypoint: None,
            cmd: None,
            labels: Vec::new(),
            os: "linux".to_owned(),
            architecture: arch.to_owned(),
            variant: (arch == "arm64").then(|| "v8".to_owned()),
        }
    }
    pub fn layer(mut self, layer: Layer) -> ImageSpec {
        self.layers.push(layer);
        self
    }

    /// `layers` more layers, each one file `/s<seed>-l<n>.bin` of `kib` KiB of pseudo-random
    /// bytes (they do not compress) unique to `seed`.
    pub fn random_layers(mut self, seed: u64, layers: usize, kib: usize) -> ImageSpec {
        for l in 0..layers {
            let bytes = prng_bytes(seed << 16 | l as u64, kib << 10);
            self = self.layer(Layer::new(vec![Entry::file(
                &format!("/s{seed}-l{l}.bin"),
                0o644,
                bytes,
            )]));
        }
        self
    }
}

/// What [`write_layout`] wrote.
#[derive(Clone, Debug, Default)]
pub struct LayoutInfo {
    /// One per image, in order.
    pub manifest_digests: Vec<String>,
    pub manifest_sizes: Vec<u64>,
    pub config_digests: Vec<String>,
    /// The image index, when several images were given.
    pub index_digest: Option<String>,
    /// Per image, the layer (compressed blob) digests in order.
    pub layer_digests: Vec<Vec<String>>,
    /// Per image, the uncompressed tar digests (config `rootfs.diff_ids`).
    pub diff_ids: Vec<Vec<String>>,
    /// Sum of all layers' blob sizes (a layer shared by two images counts twice).
    pub total_layer_bytes: u64,
}

impl LayoutInfo {
    /// The digest a registry serves for the tag: the index, else the single manifest.
    pub fn top_digest(&self) -> String {
        self.index_digest
            .clone()
            .unwrap_or_else(|| self.manifest_digests[0].clone())
    }
}

/// Writes `images` into the OCI layout at `dir` (created if needed; other tags kept) under
/// `tag`: one image -> `index.json` points at its manifest; several -> at an image index.
pub fn write_layout(dir: &Path, tag: &str, images: &[ImageSpec]) -> LayoutInfo {
    assert!(!images.is_empty(), "write_layout needs at least one image");
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).expect("create layout blobs dir");
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("write oci-layout");

    let mut info = LayoutInfo::default();
    let mut descriptors = Vec::new();
    for image in images {
        let built = build_layers(&image.layers);
        let mut layer_descs = Vec::new();
        let mut layer_digests = Vec::new();
        let mut diff_ids = Vec::new();
        for (layer, b) in image.layers.iter().zip(&built) {
            let digest = write_blob(dir, &b.blob);
            info.total_layer_bytes += b.blob.len() as u64;
            layer_descs.push(json!({
                "mediaType": layer.media_type_str(),
                "digest": digest,
                "size": b.blob.len(),
            }));
            layer_digests.push(digest);
            diff_ids.push(b.diff_id.clone());
        }
        let config = image_config(image, &diff_ids);
        let config_bytes = serde_json::to_vec(&config).expect("serialize config");
        let config_digest = write_blob(dir, &config_bytes);
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": {"mediaType": MT_CONFIG, "digest": config_digest, "size": config_bytes.len()},
            "layers": layer_descs,
        });
        let manifest_bytes = serde_json::to_vec(&manifest).expect("serialize manifest");
        let manifest_digest = write_blob(dir, &manifest_bytes);
        let mut platform = json!({"architecture": image.architecture, "os": image.os});
        if let Some(variant) = &image.variant {
            platform["variant"] = json!(variant);
        }
        descriptors.push(json!({
            "mediaType": MT_MANIFEST,
            "digest": manifest_digest,
            "size": manifest_bytes.len(),
            "platform": platform,
        }));
        info.manifest_digests.push(manifest_digest);
        info.manifest_sizes.push(manifest_bytes.len() as u64);
        info.config_digests.push(config_digest);
        info.layer_digests.push(layer_digests);
        info.diff_ids.push(diff_ids);
    }

    let mut top = if images.len() == 1 {
        descriptors.remove(0)
    } else {
        let index = json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": descriptors});
        let bytes = serde_json::to_vec(&index).expect("serialize image index");
        let digest = write_blob(dir, &bytes);
        info.index_digest = Some(digest.clone());
        json!({"mediaType": MT_INDEX, "digest": digest, "size": bytes.len()})
    };
    top["annotations"] = json!({"org.opencontainers.image.ref.name": tag});

    let index_path = dir.join("index.json");
    let mut manifests: Vec<Value> = fs::read(&index_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["manifests"].as_array().cloned())
        .unwrap_or_default();
    manifests.retain(|m| m["annotations"]["org.opencontainers.image.ref.name"] != json!(tag));
    manifests.push(top);
    let index = json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": manifests});
    fs::write(
        &index_path,
        serde_json::to_vec(&index).expect("serialize index.json"),
    )
    .expect("write index.json");
    info
}

fn image_config(image: &ImageSpec, diff_ids: &[String]) -> Value {
    let mut config = json!({"Env": image.env});
    if let Some(v) = &image.working_dir {
        config["WorkingDir"] = json!(v);
    }
    if let Some(v) = &image.stop_signal {
        config["StopSignal"] = json!(v);
    }
    if let Some(v) = &image.user {
        config["User"] = json!(v);
    }
    if let Some(v) = &image.entrypoint {
        config["Entrypoint"] = json!(v);
    }
    if let Some(v) = &image.cmd {
        config["Cmd"] = json!(v);
    }
    if !image.labels.is_empty() {
        let labels: serde_json::Map<String, Value> = image
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        config["Labels"] = Value::Object(labels);
    }
    let mut out = json!({
        "created": "1970-01-01T00:00:00Z",
        "architecture": image.architecture,
        "os": image.os,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    if let Some(variant) = &image.variant {
        out["variant"] = json!(variant);
    }
    out
}

fn write_blob(dir: &Path, bytes: &[u8]) -> String {
    let digest = sha256_digest(bytes);
    let path = dir
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").expect("sha256 prefix"));
    if !path.exists() {
        fs::write(&path, bytes).expect("write layout blob");
    }
    digest
}

struct BuiltLayer {
    blob: Vec<u8>,
    diff_id: String,
}

/// Builds all layers, as many in parallel as there are CPUs.
fn build_layers(layers: &[Layer]) -> Vec<BuiltLayer> {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut built = Vec::with_capacity(layers.len());
    for batch in layers.chunks(cpus) {
        std::thread::scope(|scope| {
            let handles: Vec<_> = batch
                .iter()
                .map(|layer| scope.spawn(move || build_layer(layer)))
                .collect();
            for handle in handles {
                built.push(handle.join().expect("layer build thread"));
            }
        });
    }
    built
}

/// The uncompressed tar of `entries`.
pub fn layer_tar(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        let result = match entry {
            Entry::File {
                path,
                mode,
                contents,
            } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(contents.len() as u64);
                builder.append_data(&mut header, rel(path), contents.as_slice())
            }
            Entry::Dir { path, mode } => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(*mode);
                header.set_size(0);
                builder.append_data(
                    &mut header,
                    format!("{}/", rel(path).trim_end_matches('/')),
                    &[][..],
                )
            }
            Entry::Symlink { path, target } => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder.append_link(&mut header, rel(path), target)
            }
            Entry::Hardlink { path, target } => {
                header.set_entry_type(tar::EntryType::Link);
                header.set_mode(0o644);
                header.set_size(0);
                builder.append_link(&mut header, rel(path), rel(target))
            }
            Entry::Whiteout { path } => {
                let p = Path::new(rel(path));
                let name = p
                    .file_name()
                    .expect("whiteout path has a name")
                    .to_string_lossy();
                let wh = match p.parent().filter(|d| !d.as_os_str().is_empty()) {
                    Some(parent) => format!("{}/.wh.{name}", parent.display()),
                    None => format!(".wh.{name}"),
                };
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o644);
                header.set_size(0);
                builder.append_data(&mut header, wh, &[][..])
            }
            Entry::OpaqueDir { path } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o644);
                header.set_size(0);
                let dir = rel(path).trim_end_matches('/');
                builder.append_data(&mut header, format!("{dir}/.wh..wh..opq"), &[][..])
            }
        };
        result.expect("append tar entry");
    }
    builder.into_inner().expect("finish layer tar")
}

fn rel(path: &str) -> &str {
    path.trim_start_matches('/')
}

fn build_layer(layer: &Layer) -> BuiltLayer {
    let built;
    let tar = match &layer.raw_tar {
        Some(tar) => tar,
        None => {
            built = layer_tar(&layer.entries);
            &built
        }
    };
    let diff_id = sha256_digest(tar);
    BuiltLayer {
        blob: compress(tar, layer.compression),
        diff_id,
    }
}

/// `data` compressed as a layer blob would be.
pub fn compress(data: &[u8], compression: Compression) -> Vec<u8> {
    match compression {
        Compression::None => data.to_vec(),
        Compression::Gzip => gzip(data),
        Compression::GzipMultiMember => {
            let mut out = Vec::new();
            for chunk in data.chunks(64 * 1024) {
                out.extend(gzip(chunk));
            }
            if data.is_empty() {
                out.extend(gzip(data));
            }
            out
        }
        Compression::Zstd => zstd::encode_all(data, 3).expect("zstd compress"),
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).expect("gzip write");
    encoder.finish().expect("gzip finish")
}

/// `len` deterministic pseudo-random (incompressible) bytes for `seed` (splitmix64).
pub fn prng_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Applets linked to `/bin/busybox` in [`busybox_image`].
pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "ls", "cat", "sleep", "id", "echo", "env", "true", "false", "test", "grep", "mkdir",
    "touch", "stat", "head", "tr", "hostname", "ps", "kill", "rm", "wc",
];

/// Busybox for `arch` (the binary is this machine's `/bin/busybox` whatever `arch` says):
/// layer 1 `/bin/busybox` + applet symlinks; layer 2 `/etc/passwd` (root, coder 1000 with home
/// `/home/coder`), `/etc/group`, `/home/coder`, `/etc/envbox-test-arch`; layer 3 4 MiB of
/// incompressible data in `/data/random.bin`.
pub fn busybox_image(arch: &str) -> ImageSpec {
    let busybox =
        fs::read("/bin/busybox").expect("read /bin/busybox (apt-get install busybox-static)");
    let mut bin = vec![
        Entry::dir("/bin", 0o755),
        Entry::file("/bin/busybox", 0o755, busybox),
    ];
    for applet in BUSYBOX_APPLETS {
        bin.push(Entry::symlink(&format!("/bin/{applet}"), "busybox"));
    }
    let etc = vec![
        Entry::dir("/etc", 0o755),
        Entry::file(
            "/etc/passwd",
            0o644,
            "root:x:0:0:root:/root:/bin/sh\ncoder:x:1000:1000:coder:/home/coder:/bin/sh\n",
        ),
        Entry::file("/etc/group", 0o644, "root:x:0:\ncoder:x:1000:\n"),
        Entry::file("/etc/envbox-test-arch", 0o644, format!("{arch}\n")),
        Entry::dir("/root", 0o700),
        Entry::dir("/home", 0o755),
        Entry::dir("/home/coder", 0o755),
        Entry::dir("/tmp", 0o1777),
    ];
    let data = vec![
        Entry::dir("/data", 0o755),
        Entry::file("/data/random.bin", 0o644, prng_bytes(1, 4 << 20)),
    ];
    let mut image = ImageSpec::new(arch)
        .layer(Layer::new(bin))
        .layer(Layer::new(etc))
        .layer(Layer::new(data));
    image.working_dir = Some("/".to_owned());
    image.cmd = Some(vec!["/bin/sh".to_owned()]);
    image
}

/// A benchmark image of about `total_mb` MiB in `layers` gzip layers: files of 16 KiB..2 MiB in
/// a few directories, each file 3/4 pseudo-random and 1/4 zeros (compresses to ~75%).
pub fn big_image(total_mb: u64, layers: usize) -> ImageSpec {
    assert!(layers > 0, "big_image needs at least one layer");
    let per_layer = (total_mb << 20) / layers as u64;
    let mut image = ImageSpec::new("amd64");
    for l in 0..layers {
        // Every layer lists its directories, as image builders write them.
        let mut entries = vec![
            Entry::dir("/big", 0o755),
            Entry::dir(&format!("/big/l{l}"), 0o755),
        ];
        let mut written = 0u64;
        let mut n = 0u64;
        while written < per_layer {
            let seed = ((l as u64) << 32) | n;
            let size_pick = prng_bytes(seed ^ 0xabcdef, 8);
            let size = 16 * 1024
                + (u64::from_le_bytes(size_pick.try_into().expect("8 bytes")) % (2 << 20));
            let size = size.min(per_layer - written).max(1);
            let mut contents = prng_bytes(seed, size as usize);
            for block in contents.chunks_mut(4096) {
                let zeros = block.len() / 4;
                let len = block.len();
                block[len - zeros..].fill(0);
            }
            if n.is_multiple_of(64) {
                entries.push(Entry::dir(&format!("/big/l{l}/d{}", n / 64), 0o755));
            }
            entries.push(Entry::file(
                &format!("/big/l{l}/d{}/f{n}.bin", n / 64),
                0o644,
                contents,
            ));
            written += size;
            n += 1;
        }
        image = image.layer(Layer::new(entries));
    }
    image
}

/// A benchmark image shaped like a distribution image: `files` files (about 14 KB on average,
/// ~550 MB for 40k: 75% of 256 B..8 KB, 22% of 8..32 KB, 2.8% of 32..256 KB, 0.2% of
/// 256 KB..2 MB) in directories of ~40 files three levels deep, one symlink per 50 files,
/// over 5 gzip layers of 35/30/15/15/5% of the files. Contents are 40% pseudo-random and 60%
/// text per 4 KiB block (gzip gets them to ~45%).
pub fn many_files_image(files: usize) -> ImageSpec {
    const SHARES: [usize; 5] = [35, 30, 15, 15, 5];
    let mut image = ImageSpec::new("amd64");
    let mut n = 0usize;
    for (l, share) in SHARES.iter().enumerate() {
        let count = files * share / 100;
        let mut entries = vec![Entry::dir(&format!("/l{l}"), 0o755)];
        for i in 0..count {
            let (a, b) = (i / 1600, i / 40);
            if i % 1600 == 0 {
                entries.push(Entry::dir(&format!("/l{l}/a{a}"), 0o755));
            }
            if i % 40 == 0 {
                entries.push(Entry::dir(&format!("/l{l}/a{a}/b{b}"), 0o755));
            }
            let path = format!("/l{l}/a{a}/b{b}/f{i}.dat");
            let pick = u64::from_le_bytes(
                prng_bytes(n as u64 ^ 0x5eed, 8)
                    .try_into()
                    .expect("8 bytes"),
            );
            let (lo, hi) = match pick % 1000 {
                0..=749 => (256, 8 << 10),
                750..=969 => (8 << 10, 32 << 10),
                970..=997 => (32 << 10, 256 << 10),
                _ => (256 << 10, 2 << 20),
            };
            let size = lo + (pick / 1000) % (hi - lo);
            entries.push(Entry::file(
                &path,
                0o644,
                mixed_bytes(n as u64, size as usize),
            ));
            if i % 50 == 49 {
                entries.push(Entry::symlink(
                    &format!("/l{l}/a{a}/b{b}/link{i}"),
                    &format!("f{i}.dat"),
                ));
            }
            n += 1;
        }
        image = image.layer(Layer::new(entries));
    }
    image
}

/// `len` bytes: per 4 KiB block, 40% pseudo-random then 60% text.
fn mixed_bytes(seed: u64, len: usize) -> Vec<u8> {
    const TEXT: &[u8] =
        b"The quick brown fox jumps over the lazy dog; lorem ipsum dolor sit amet. ";
    let mut out = prng_bytes(seed, len);
    for block in out.chunks_mut(4096) {
        let random = block.len() * 2 / 5;
        for (i, byte) in block[random..].iter_mut().enumerate() {
            *byte = TEXT[i % TEXT.len()];
        }
    }
    out
}
