//! A layer's decoding thread: blob file -> decompressor -> byte budget and diff-ID hash, in
//! chunks handed to the thread that writes the tree. The diff-ID hash runs beside the
//! compressed input's own digest check when the input does one (`super::stream::Compressed`).
//!
//! Owns: the split of one layer's unpack over two threads, so that a layer alone (a one-layer
//! image, or the last layer of a big image) keeps two cores busy: decompressing and hashing
//! here, tar parsing and file writing in the caller. Chunks go through a bounded channel (a few
//! MiB in flight per layer) and come back to be refilled, so the steady state allocates
//! nothing. It decodes and hashes to the end of the stream whatever the reader takes (the
//! trailing padding after the tar's end is part of the diff ID), stops as soon as the reader
//! is dropped, and never touches the filesystem beyond reading the blob.

use std::io::{self, BufRead, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread::{Scope, ScopedJoinHandle};

use super::stream::Decoder;
use crate::digest::Hasher;

/// Bytes per chunk: large enough that the channel costs nothing next to inflating it.
const CHUNK: usize = 256 << 10;
/// Chunks waiting for the reader at most.
const DEPTH: usize = 4;

type Chunk = (Vec<u8>, usize);

/// What the decoding thread saw once the stream ended.
pub(super) struct Decoded {
    pub hasher: Hasher,
    /// Uncompressed bytes, all of them hashed.
    pub bytes: u64,
}

/// The decoded stream, read on the writing thread.
pub(super) struct Reader {
    chunks: Receiver<io::Result<Chunk>>,
    spent: Sender<Vec<u8>>,
    current: Option<Vec<u8>>,
    len: usize,
    pos: usize,
}

/// The chunks themselves are the buffer: the tar reader parses them and hands file contents
/// out of them in place.
impl BufRead for Reader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.pos == self.len {
            if let Some(buf) = self.current.take() {
                let _ = self.spent.send(buf);
            }
            match self.chunks.recv() {
                Ok(Ok((buf, len))) => {
                    self.current = Some(buf);
                    (self.len, self.pos) = (len, 0);
                }
                Ok(Err(e)) => return Err(e),
                // The decoder finished: the end of the stream.
                Err(_) => return Ok(&[]),
            }
        }
        let buf = self.current.as_deref().unwrap_or_default();
        Ok(&buf[self.pos..self.len])
    }

    fn consume(&mut self, amount: usize) {
        self.pos = (self.pos + amount).min(self.len);
    }
}

impl Read for Reader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let buf = self.fill_buf()?;
        let n = out.len().min(buf.len());
        out[..n].copy_from_slice(&buf[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// Starts decoding `input` on a thread of `scope`. Reading the returned [`Reader`] gives the
/// stream; a read fails once more than `limit` bytes came out (and `exceeded` is set). The
/// thread's result is the hash of every byte when the stream ended or the reader was dropped.
pub(super) fn spawn<'scope>(
    scope: &'scope Scope<'scope, '_>,
    input: Decoder,
    limit: u64,
    exceeded: &'scope AtomicBool,
) -> (Reader, ScopedJoinHandle<'scope, Decoded>) {
    let (send, chunks) = mpsc::sync_channel(DEPTH);
    let (spent, refill) = mpsc::channel();
    let decoder = scope.spawn(move || decode(input, limit, exceeded, send, refill));
    let reader = Reader {
        chunks,
        spent,
        current: None,
        len: 0,
        pos: 0,
    };
    (reader, decoder)
}

fn decode(
    mut input: Decoder,
    limit: u64,
    exceeded: &AtomicBool,
    send: SyncSender<io::Result<Chunk>>,
    refill: Receiver<Vec<u8>>,
) -> Decoded {
    let mut decoded = Decoded {
        hasher: Hasher::new(),
        bytes: 0,
    };
    loop {
        let mut buf = refill.try_recv().unwrap_or_else(|_| vec![0; CHUNK]);
        let len = match fill(&mut input, &mut buf) {
            Ok(0) => break,
            Ok(len) => len,
            Err(e) => {
                let _ = send.send(Err(e));
                break;
            }
        };
        decoded.bytes += len as u64;
        if decoded.bytes > limit {
            exceeded.store(true, Ordering::Relaxed);
            let _ = send.send(Err(io::Error::other("uncompressed byte budget exceeded")));
            break;
        }
        match input.input() {
            Some(compressed) => compressed.hash_beside(&mut decoded.hasher, &buf[..len]),
            None => decoded.hasher.update(&buf[..len]),
        }
        if send.send(Ok((buf, len))).is_err() {
            // The writer stopped (an error of its own): nothing more is wanted.
            break;
        }
    }
    decoded
}

/// Reads until `buf` is full or the stream ends.
fn fill(input: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut len = 0;
    while len < buf.len() {
        match input.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `input` as an uncompressed layer stream.
    fn plain(input: impl Read + Send + 'static) -> Decoder {
        Decoder::Plain(Box::new(io::BufReader::new(input)))
    }

    fn read_all(input: Vec<u8>, limit: u64) -> (io::Result<Vec<u8>>, Decoded, bool) {
        let exceeded = AtomicBool::new(false);
        let (out, decoded) = std::thread::scope(|scope| {
            let (mut reader, decoder) =
                spawn(scope, plain(io::Cursor::new(input)), limit, &exceeded);
            let mut out = Vec::new();
            let result = reader.read_to_end(&mut out).map(|_| out);
            drop(reader);
            (result, decoder.join().expect("decoder"))
        });
        (out, decoded, exceeded.into_inner())
    }

    #[test]
    fn the_stream_arrives_whole_and_hashed_across_chunks() {
        let data: Vec<u8> = (0..CHUNK * 3 + 1234).map(|i| (i % 251) as u8).collect();
        let (out, decoded, exceeded) = read_all(data.clone(), u64::MAX);
        assert!(out.expect("read") == data, "bytes changed on the way");
        assert_eq!(decoded.bytes, data.len() as u64);
        assert_eq!(decoded.hasher.finish(), crate::digest::Digest::of(&data));
        assert!(!exceeded);
    }

    #[test]
    fn the_budget_fails_the_read_and_says_so() {
        let data = vec![7u8; CHUNK * 2];
        let (out, _, exceeded) = read_all(data, CHUNK as u64 + 1);
        let err = out.expect_err("over budget");
        assert!(err.to_string().contains("budget"), "{err}");
        assert!(exceeded);
    }

    #[test]
    fn a_decoder_error_reaches_the_reader() {
        struct Broken(usize);
        impl Read for Broken {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "corrupt deflate stream",
                    ));
                }
                let n = buf.len().min(self.0);
                self.0 -= n;
                Ok(n)
            }
        }
        let exceeded = AtomicBool::new(false);
        let err = std::thread::scope(|scope| {
            let (mut reader, _) = spawn(scope, plain(Broken(CHUNK + 10)), u64::MAX, &exceeded);
            let mut out = Vec::new();
            reader.read_to_end(&mut out).expect_err("broken stream")
        });
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("corrupt deflate"), "{err}");
    }

    /// A reader that stops early (the writer failed) ends the decoder instead of leaving it
    /// blocked on a full channel: the scope would never end.
    #[test]
    fn dropping_the_reader_stops_the_decoder() {
        let endless = io::repeat(1);
        let exceeded = AtomicBool::new(false);
        let decoded = std::thread::scope(|scope| {
            let (mut reader, decoder) = spawn(scope, plain(endless), u64::MAX, &exceeded);
            let mut first = [0u8; 10];
            reader.read_exact(&mut first).expect("first bytes");
            drop(reader);
            decoder.join().expect("decoder")
        });
        assert!(decoded.bytes >= 10 && decoded.bytes <= ((DEPTH + 3) * CHUNK) as u64);
    }
}
