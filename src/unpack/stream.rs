//! The layer stream: blob file -> decompressor -> hashing, budgeted reader -> tar entries.
//!
//! Owns: opening the blob (or taking its bytes as they download, from a follower that may hash them
//! beside the uncompressed ones, see [`Compressed`]) with large buffered reads, choosing the
//! decoder (multi-member gzip, module `gzip`; zstd; or none), comparing the hash of every
//! uncompressed byte (the trailing padding after the tar's end included, by reading to EOF) with
//! the diff ID, and enforcing the byte and entry budgets. Decompressing and hashing run on a thread
//! of their own (module `decode`), the tar parsing (module `archive`, in place in the decoded
//! chunks) on the caller's, which hands each decoded entry and its contents to [`super::tree`].
//! It never writes to the filesystem itself.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::archive::Archive;
use super::decode;
use super::gzip;
use super::header::{self, Kind};
use super::settle::Pending;
use super::tree::{LayerDir, LayerTree, Mode, Tree};
use super::{LayerSource, Limits, UnpackError, UnpackReport};
use crate::cache::Follower;
use crate::digest::Hasher;
use crate::image::Compression;

/// Read size of the compressed blob file.
const BLOB_BUFFER: usize = 1 << 20;
/// Warnings kept in a report; the rest are counted.
const MAX_WARNINGS: usize = 200;

/// A layer's compressed bytes, buffered: its blob file, or a follower of its download.
pub(super) trait Compressed: BufRead + Send {
    /// Hashes `data`, uncompressed bytes of this stream, into `hasher`. A source that checks
    /// its own bytes' digest (a [`Follower`] that took its writer's check) hashes them beside,
    /// in the same pass ([`Hasher::update_beside`]).
    fn hash_beside(&mut self, hasher: &mut Hasher, data: &[u8]) {
        hasher.update(data);
    }
}

impl<R: Read + Send> Compressed for BufReader<R> {}

impl Compressed for Follower {
    fn hash_beside(&mut self, hasher: &mut Hasher, data: &[u8]) {
        Follower::hash_beside(self, hasher, data);
    }
}

/// A layer's compressed bytes, as [`Compressed`].
pub(super) type Input = Box<dyn Compressed>;

/// A layer's decompressor over its [`Input`].
pub(super) enum Decoder {
    Plain(Input),
    Gzip(gzip::MultiGz<Input>),
    Zstd(zstd::stream::read::Decoder<'static, Input>),
}

impl Decoder {
    /// The compressed input, until a gzip stream ended.
    pub(super) fn input(&mut self) -> Option<&mut Input> {
        match self {
            Decoder::Plain(input) => Some(input),
            Decoder::Gzip(gz) => gz.get_mut(),
            Decoder::Zstd(zstd) => Some(zstd.get_mut()),
        }
    }
}

impl Read for Decoder {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Plain(input) => input.read(out),
            Decoder::Gzip(gz) => gz.read(out),
            Decoder::Zstd(zstd) => zstd.read(out),
        }
    }
}

/// An error reading `source`'s blob.
fn blob_err(source: &LayerSource) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |e| UnpackError::Blob {
        layer: source.digest.clone(),
        path: source.blob.clone(),
        source: e,
    }
}

/// The layer's blob file, opened.
pub(super) fn open_blob(source: &LayerSource) -> Result<Input, UnpackError> {
    let file = File::open(&source.blob).map_err(blob_err(source))?;
    Ok(Box::new(BufReader::with_capacity(BLOB_BUFFER, file)))
}

fn decoder(source: &LayerSource, input: Input) -> Result<Decoder, UnpackError> {
    Ok(match source.compression {
        Compression::None => Decoder::Plain(input),
        Compression::Gzip => Decoder::Gzip(gzip::MultiGz::new(input)),
        Compression::Zstd => Decoder::Zstd(
            zstd::stream::read::Decoder::with_buffer(input).map_err(blob_err(source))?,
        ),
    })
}

/// Unpacks `input` (the bytes of `source`'s blob) into the (existing, empty) directory `root`
/// and checks the diff ID. Returns what is left to settle against the lower layers.
pub(super) fn unpack_stream(
    source: &LayerSource,
    input: Input,
    limits: &Limits,
    root: &Path,
) -> Result<(UnpackReport, Pending), UnpackError> {
    let mut tree = LayerTree::open(&source.digest, root, LayerDir::default()).map_err(|e| {
        UnpackError::Store {
            action: "opening staging directory",
            path: root.to_owned(),
            source: e,
        }
    })?;
    let report = apply_stream(source, input, limits, &mut tree)?;
    Ok((report, tree.into_pending()))
}

/// Applies `input` (the bytes of `source`'s blob) to `tree` (whose current layer is `source`)
/// and checks the diff ID. In flatten mode the caller applies the next layer to the same tree.
pub(super) fn apply_stream(
    source: &LayerSource,
    input: Input,
    limits: &Limits,
    tree: &mut Tree<'_, impl Mode>,
) -> Result<UnpackReport, UnpackError> {
    let input = decoder(source, input)?;
    let exceeded = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (reader, decoder) =
            decode::spawn(scope, input, limits.max_uncompressed_bytes, &exceeded);
        let mut report = read_entries(source, limits, tree, reader, &exceeded)?;
        let decoded = decoder
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        report.bytes = decoded.bytes;
        let actual = decoded.hasher.finish();
        if actual != source.diff_id {
            return Err(UnpackError::DiffIdMismatch {
                layer: source.digest.clone(),
                expected: source.diff_id.clone(),
                actual,
            });
        }
        Ok(report)
    })
}

/// Applies every entry of the decoded stream, then reads it to its end (so the decoder hashes
/// all of it). The report's `bytes` is left to the caller.
fn read_entries(
    source: &LayerSource,
    limits: &Limits,
    tree: &mut Tree<'_, impl Mode>,
    reader: decode::Reader,
    exceeded: &AtomicBool,
) -> Result<UnpackReport, UnpackError> {
    let layer = &source.digest;
    let mut archive = Archive::new(reader);
    let mut report = UnpackReport::default();
    let mut warnings = Vec::new();
    let mut last = PathBuf::new();
    let stream_err = |last: &Path, e: io::Error| {
        if exceeded.load(Ordering::Relaxed) {
            UnpackError::TooLarge {
                layer: layer.clone(),
                path: last.to_owned(),
                limit: limits.max_uncompressed_bytes,
            }
        } else {
            UnpackError::Stream {
                layer: layer.clone(),
                after: last.to_owned(),
                source: e,
            }
        }
    };

    while let Some(raw) = archive.next().map_err(|e| stream_err(&last, e))? {
        report.entries += 1;
        let decoded = header::decode(layer, raw)?;
        last.clone_from(&decoded.path);
        if report.entries > limits.max_entries {
            return Err(UnpackError::TooManyEntries {
                layer: layer.clone(),
                path: last,
                limit: limits.max_entries,
            });
        }
        if decoded.size > limits.max_uncompressed_bytes {
            return Err(UnpackError::TooLarge {
                layer: layer.clone(),
                path: last,
                limit: limits.max_uncompressed_bytes,
            });
        }
        for name in &decoded.dropped_xattrs {
            warnings.push(format!("{:?}: xattr {name} not set", decoded.path));
        }
        if decoded.kind == Kind::Device {
            warnings.push(format!("{:?}: device node not created", decoded.path));
        }
        tree.apply(&decoded, &mut archive.contents(), &mut warnings)
            .map_err(|e| e.into_unpack_error(|io| stream_err(&decoded.path, io)))?;
    }
    tree.finish()?;

    // Everything after the tar's end-of-archive block is part of the diff ID too.
    io::copy(&mut archive.into_rest(), &mut io::sink()).map_err(|e| stream_err(&last, e))?;
    if warnings.len() > MAX_WARNINGS {
        let more = warnings.len() - MAX_WARNINGS;
        warnings.truncate(MAX_WARNINGS);
        warnings.push(format!("... and {more} more warnings"));
    }
    report.warnings = warnings;
    Ok(report)
}
