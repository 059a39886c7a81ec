//! A blob's bytes on their way from the network into the store.
//!
//! Owns: batching the body's chunks (by reference, never copied: the vectored write goes
//! straight from them into the staging file) and writing each batch, hashed, on a blocking
//! thread while the next batch is received, so a transfer never stops reading the socket to
//! hash and write. At most one batch is being written while one fills (about 2 MiB per
//! transfer). It never checks sizes or digests itself (the [`BlobWriter`] does) and never
//! talks to the network.

use bytes::Bytes;
use tokio::task::JoinHandle;

use crate::cache::{BlobWriter, CacheError};

/// Bytes per batch: enough that the blocking hand-off costs nothing next to hashing them.
const BATCH: usize = 1 << 20;

type Written = (BlobWriter, Vec<Bytes>, Result<(), CacheError>);

/// The receiving end of one transfer into a [`BlobWriter`].
pub(super) struct Sink {
    /// With the sink while no batch is being written.
    writer: Option<BlobWriter>,
    /// The batch being written, with the writer.
    writing: Option<JoinHandle<Written>>,
    batch: Vec<Bytes>,
    batched: usize,
    /// The last batch written, emptied, for the next one.
    spare: Vec<Bytes>,
}

impl Sink {
    pub(super) fn new(writer: BlobWriter) -> Sink {
        Sink {
            writer: Some(writer),
            writing: None,
            batch: Vec::new(),
            batched: 0,
            spare: Vec::new(),
        }
    }

    /// Takes a chunk; writes the batch once it is full. An error is the writer's: the
    /// transfer cannot go on (the writer is poisoned).
    pub(super) async fn push(&mut self, chunk: Bytes) -> Result<(), CacheError> {
        self.batched += chunk.len();
        self.batch.push(chunk);
        if self.batched >= BATCH {
            self.send().await?;
        }
        Ok(())
    }

    /// Writes what is batched and hands the writer back once everything is written.
    pub(super) async fn finish(mut self) -> Result<BlobWriter, CacheError> {
        self.send().await?;
        self.settle().await?;
        Ok(self.writer.take().expect("settled"))
    }

    /// Starts writing the batch, once the previous one is written.
    async fn send(&mut self) -> Result<(), CacheError> {
        self.settle().await?;
        if self.batch.is_empty() {
            return Ok(());
        }
        let mut writer = self.writer.take().expect("settled");
        let mut batch = std::mem::replace(&mut self.batch, std::mem::take(&mut self.spare));
        self.batched = 0;
        self.writing = Some(tokio::task::spawn_blocking(move || {
            let result = writer.write_chunks(&batch);
            batch.clear();
            (writer, batch, result)
        }));
        Ok(())
    }

    /// Waits for the batch being written, if any: the writer is back with the sink after.
    async fn settle(&mut self) -> Result<(), CacheError> {
        let Some(writing) = self.writing.take() else {
            return Ok(());
        };
        let (writer, spare, result) = writing
            .await
            .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()));
        self.writer = Some(writer);
        self.spare = spare;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::BlobStore;
    use crate::digest::Digest;

    /// Chunks of odd sizes across several batches arrive whole, in order, and verified.
    #[tokio::test]
    async fn chunks_across_batches_are_written_whole_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let content: Vec<u8> = (0..3 * BATCH + 12_345).map(|i| (i % 251) as u8).collect();
        let digest = Digest::of(&content);
        let mut sink = Sink::new(store.writer(&digest, content.len() as u64).unwrap());
        for chunk in content.chunks(70_001) {
            sink.push(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        let writer = sink.finish().await.unwrap();
        assert_eq!(writer.written(), content.len() as u64);
        writer.commit().unwrap();
        assert_eq!(store.read(&digest).unwrap(), content);
    }

    /// Bytes past the expected size fail the batch that carries them; nothing is stored.
    #[tokio::test]
    async fn a_batch_past_the_expected_size_fails_and_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let content = vec![7u8; BATCH + 10];
        let digest = Digest::of(&content);
        let mut sink = Sink::new(store.writer(&digest, BATCH as u64).unwrap());
        let pushed = sink.push(Bytes::from(content)).await;
        let failed = match pushed {
            Err(e) => Err(e),
            Ok(()) => sink.finish().await.map(|_| ()),
        };
        assert!(
            matches!(failed, Err(CacheError::SizeMismatch { .. })),
            "{failed:?}"
        );
        assert_eq!(store.size_of(&digest), None);
    }
}
