//! Unpacks one layer blob into a layer store, as the bottom layer of an image, and prints the
//! report and the time it took: a manual throughput check of `envbox::unpack` (time it on a
//! fresh filesystem, see shared/docs/benchmarking.md).
//!
//! Usage: `unpack_layer STATE_DIR BLOB none|gzip|zstd DIFF_ID`

use std::path::PathBuf;
use std::time::Instant;

use envbox::digest::Digest;
use envbox::image::Compression;
use envbox::unpack::{LayerSource, LayerStore, Limits, Stage, UnpackReport};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [state, blob, compression, diff_id] = args.as_slice() else {
        anyhow::bail!("usage: unpack_layer STATE_DIR BLOB none|gzip|zstd DIFF_ID");
    };
    let compression = match compression.as_str() {
        "none" => Compression::None,
        "gzip" => Compression::Gzip,
        "zstd" => Compression::Zstd,
        other => anyhow::bail!("unknown compression {other}"),
    };
    let blob = PathBuf::from(blob);
    let source = LayerSource {
        digest: Digest::of(blob.to_string_lossy().as_bytes()),
        blob,
        compression,
        diff_id: Digest::parse(diff_id)?,
    };
    let store = LayerStore::open(state.as_ref())?;
    let start = Instant::now();
    // A bottom layer's chain ID is its diff ID; it has no layers below.
    let report = match store.stage(&source, &source.diff_id, &Limits::default())? {
        Stage::Complete => UnpackReport {
            reused: true,
            ..UnpackReport::default()
        },
        Stage::Staged(staged) => store.publish(staged, &[])?,
    };
    println!(
        "{:.2} s: {} entries, {} bytes, {} warnings, reused {}",
        start.elapsed().as_secs_f64(),
        report.entries,
        report.bytes,
        report.warnings.len(),
        report.reused
    );
    Ok(())
}
