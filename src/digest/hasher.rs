//! [`Hasher`]: a running sha256 that can hash beside another one, two streams in one loop.
//!
//! Owns: buffering partial blocks, padding, and choosing the block function: the x86 SHA
//! extensions where the CPU has them (module `shani`), `sha2`'s otherwise. One stream of SHA-NI
//! rounds waits on each round's latency; two streams' rounds interleaved fill it, nearly doubling
//! what a core hashes (1.7 to 3.3 GB/s on the machines we measured). A layer's unpack has two
//! streams to hash, its compressed and its uncompressed bytes, hence [`Hasher::update_beside`].
//! The result is plain sha256 either way; it never does I/O.

use sha2::digest::generic_array::GenericArray;

use super::Digest;

/// The initial hash value (FIPS 180-4, 5.3.3).
const IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

const BLOCK: usize = 64;

/// A running sha256 (see the module doc).
#[derive(Clone)]
pub(crate) struct Hasher {
    state: [u32; 8],
    /// Whole blocks compressed so far.
    blocks: u64,
    /// The start of a block not yet whole.
    partial: [u8; BLOCK],
    partial_len: usize,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hasher")
            .field("bytes", &self.bytes())
            .finish_non_exhaustive()
    }
}

impl Default for Hasher {
    fn default() -> Self {
        Hasher::new()
    }
}

impl Hasher {
    pub(crate) fn new() -> Hasher {
        Hasher {
            state: IV,
            blocks: 0,
            partial: [0; BLOCK],
            partial_len: 0,
        }
    }

    /// Bytes hashed so far.
    pub(crate) fn bytes(&self) -> u64 {
        self.blocks * BLOCK as u64 + self.partial_len as u64
    }

    /// Hashes `data`.
    pub(crate) fn update(&mut self, data: &[u8]) {
        let data = self.top_up(data);
        let whole = data.len() / BLOCK * BLOCK;
        compress(&mut self.state, &data[..whole]);
        self.blocks += (whole / BLOCK) as u64;
        self.keep(&data[whole..]);
    }

    /// Hashes `data` into `self` and `other_data` into `other`, the blocks they both have at
    /// once (see the module doc); the same digests as two [`Self::update`]s.
    pub(crate) fn update_beside(&mut self, data: &[u8], other: &mut Hasher, other_data: &[u8]) {
        let (data, other_data) = (self.top_up(data), other.top_up(other_data));
        let both = data.len().min(other_data.len()) / BLOCK * BLOCK;
        compress2(
            &mut self.state,
            &data[..both],
            &mut other.state,
            &other_data[..both],
        );
        let blocks = (both / BLOCK) as u64;
        self.blocks += blocks;
        other.blocks += blocks;
        self.update(&data[both..]);
        other.update(&other_data[both..]);
    }

    /// The digest of everything hashed.
    pub(crate) fn finish(mut self) -> Digest {
        let bits = self.bytes().wrapping_mul(8);
        let mut tail = [0u8; 2 * BLOCK];
        let len = self.partial_len;
        tail[..len].copy_from_slice(&self.partial[..len]);
        tail[len] = 0x80;
        // The length goes in the last 8 bytes of the block that has room for it.
        let end = if len + 1 + 8 <= BLOCK {
            BLOCK
        } else {
            2 * BLOCK
        };
        tail[end - 8..end].copy_from_slice(&bits.to_be_bytes());
        compress(&mut self.state, &tail[..end]);
        let mut out = [0u8; 32];
        for (chunk, word) in out.chunks_exact_mut(4).zip(self.state) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        Digest::from_bytes(&out)
    }

    /// Completes the partial block from `data` (compressing it once whole); the rest of `data`,
    /// which starts on a block boundary (empty if the partial block is still not whole).
    fn top_up<'d>(&mut self, data: &'d [u8]) -> &'d [u8] {
        if self.partial_len == 0 {
            return data;
        }
        let take = (BLOCK - self.partial_len).min(data.len());
        self.partial[self.partial_len..self.partial_len + take].copy_from_slice(&data[..take]);
        self.partial_len += take;
        if self.partial_len == BLOCK {
            let block = self.partial;
            compress(&mut self.state, &block);
            self.blocks += 1;
            self.partial_len = 0;
        }
        &data[take..]
    }

    /// Keeps `rest` (shorter than a block) as the partial block, which is empty unless `rest`
    /// is.
    fn keep(&mut self, rest: &[u8]) {
        if rest.is_empty() {
            return;
        }
        debug_assert!(self.partial_len == 0 && rest.len() < BLOCK);
        self.partial[..rest.len()].copy_from_slice(rest);
        self.partial_len = rest.len();
    }
}

/// The round constants (FIPS 180-4, 4.2.2).
pub(super) const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

/// Whether this CPU has the SHA extensions (and the SSE levels the kernels use).
#[cfg(target_arch = "x86_64")]
fn has_shani() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        std::arch::is_x86_feature_detected!("sha")
            && std::arch::is_x86_feature_detected!("sse4.1")
            && std::arch::is_x86_feature_detected!("ssse3")
    })
}

/// Compresses whole blocks.
fn compress(state: &mut [u32; 8], blocks: &[u8]) {
    debug_assert!(blocks.len().is_multiple_of(BLOCK));
    #[cfg(target_arch = "x86_64")]
    if has_shani() {
        // SAFETY: the CPU has the features the kernel is compiled for.
        unsafe { super::shani::compress(state, blocks) };
        return;
    }
    portable(state, blocks);
}

/// Compresses the same number of whole blocks into each state.
fn compress2(a: &mut [u32; 8], a_blocks: &[u8], b: &mut [u32; 8], b_blocks: &[u8]) {
    debug_assert!(a_blocks.len() == b_blocks.len() && a_blocks.len().is_multiple_of(BLOCK));
    #[cfg(target_arch = "x86_64")]
    if has_shani() {
        // SAFETY: the CPU has the features the kernel is compiled for.
        unsafe { super::shani::compress2(a, a_blocks, b, b_blocks) };
        return;
    }
    portable(a, a_blocks);
    portable(b, b_blocks);
}

/// `sha2`'s block function (its own SIMD or soft code), a block at a time.
fn portable(state: &mut [u32; 8], blocks: &[u8]) {
    for block in blocks.chunks_exact(BLOCK) {
        sha2::compress256(state, &[*GenericArray::from_slice(block)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(len: usize, seed: u32) -> Vec<u8> {
        (0..len)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed).to_be_bytes()[1])
            .collect()
    }

    fn reference(data: &[u8]) -> Digest {
        Digest::of(data)
    }

    /// Lengths around every padding case (55, 56, 63, 64 bytes into a block) and across
    /// pieces that split blocks anywhere.
    #[test]
    fn one_stream_in_any_pieces_is_sha256() {
        for len in [
            0, 1, 55, 56, 57, 63, 64, 65, 119, 120, 128, 1000, 4096, 70_001,
        ] {
            let data = sample(len, 7);
            for piece in [1, 3, 63, 64, 65, 1000, usize::MAX] {
                let mut hasher = Hasher::new();
                for part in data.chunks(piece.min(len.max(1))) {
                    hasher.update(part);
                }
                assert_eq!(hasher.bytes(), len as u64);
                assert_eq!(
                    hasher.finish(),
                    reference(&data),
                    "len {len}, pieces of {piece}"
                );
            }
        }
        assert_eq!(
            Hasher::new().finish().hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    /// Two streams of different lengths, fed beside each other in pieces of different sizes
    /// (so their partial blocks differ): each is its own sha256.
    #[test]
    fn two_streams_beside_each_other_are_each_sha256() {
        let a = sample(300_007, 1);
        let b = sample(123_457, 2);
        for (pa, pb) in [
            (4096, 4096),
            (65_536, 28_001),
            (100, 7),
            (1, 64),
            (300_007, 1),
        ] {
            let (mut ha, mut hb) = (Hasher::new(), Hasher::new());
            let mut parts_b = b.chunks(pb);
            for part_a in a.chunks(pa) {
                match parts_b.next() {
                    Some(part_b) => ha.update_beside(part_a, &mut hb, part_b),
                    None => ha.update(part_a),
                }
            }
            for part_b in parts_b {
                hb.update_beside(part_b, &mut ha, &[]);
            }
            assert_eq!(ha.finish(), reference(&a), "a in {pa}, b in {pb}");
            assert_eq!(hb.finish(), reference(&b), "b in {pb}, a in {pa}");
        }
    }

    /// The SHA-NI kernels and `sha2`'s block function agree, one lane and two (the kernels
    /// are what machines with the extensions run; the portable one what others run).
    #[test]
    fn the_kernels_agree_with_the_portable_block_function() {
        let a = sample(64 * 1000, 3);
        let b = sample(64 * 1000, 4);
        let (mut pa, mut pb) = (IV, IV);
        portable(&mut pa, &a);
        portable(&mut pb, &b);
        let (mut ca, mut cb) = (IV, IV);
        compress(&mut ca, &a);
        compress(&mut cb, &b);
        assert_eq!((ca, cb), (pa, pb), "one lane");
        let (mut ta, mut tb) = (IV, IV);
        compress2(&mut ta, &a, &mut tb, &b);
        assert_eq!((ta, tb), (pa, pb), "two lanes");
        #[cfg(target_arch = "x86_64")]
        if !has_shani() {
            eprintln!("this CPU has no SHA extensions: only the portable path ran");
        }
    }
}
