//! SHA-256 block compression on the x86 SHA extensions, one stream or two at once.
//!
//! Owns: the two block functions [`compress`] and [`compress2`], straight from the instructions'
//! reference use (state as ABEF/CDGH, message schedule with `sha256msg1/2`), the second with two
//! streams' rounds interleaved so that each fills the other's latency. It never decides whether
//! the CPU has the extensions (its caller, `super::hasher`, does) and keeps no state.

use std::arch::x86_64::*;

use super::hasher::K;

/// One stream's state in the instructions' layout (words A, B, E, F and C, D, G, H).
#[derive(Clone, Copy)]
struct Lane {
    abef: __m128i,
    cdgh: __m128i,
}

#[inline(always)]
unsafe fn load(state: &[u32; 8]) -> Lane {
    let p = state.as_ptr().cast::<__m128i>();
    let cdab = _mm_shuffle_epi32(_mm_loadu_si128(p), 0xB1);
    let efgh = _mm_shuffle_epi32(_mm_loadu_si128(p.add(1)), 0x1B);
    Lane {
        abef: _mm_alignr_epi8(cdab, efgh, 8),
        cdgh: _mm_blend_epi16(efgh, cdab, 0xF0),
    }
}

#[inline(always)]
unsafe fn store(lane: Lane, state: &mut [u32; 8]) {
    let feba = _mm_shuffle_epi32(lane.abef, 0x1B);
    let dchg = _mm_shuffle_epi32(lane.cdgh, 0xB1);
    let p = state.as_mut_ptr().cast::<__m128i>();
    _mm_storeu_si128(p, _mm_blend_epi16(feba, dchg, 0xF0));
    _mm_storeu_si128(p.add(1), _mm_alignr_epi8(dchg, feba, 8));
}

/// The block's 16 message words, big-endian, as four vectors.
#[inline(always)]
unsafe fn words(block: &[u8]) -> [__m128i; 4] {
    let mask = _mm_set_epi64x(0x0C0D_0E0F_0809_0A0B, 0x0405_0607_0001_0203);
    let p = block.as_ptr().cast::<__m128i>();
    [0, 1, 2, 3].map(|i| _mm_shuffle_epi8(_mm_loadu_si128(p.add(i)), mask))
}

/// The next four message words from the last sixteen.
#[inline(always)]
unsafe fn schedule(w: [__m128i; 4]) -> [__m128i; 4] {
    let t = _mm_add_epi32(
        _mm_sha256msg1_epu32(w[0], w[1]),
        _mm_alignr_epi8(w[3], w[2], 4),
    );
    [w[1], w[2], w[3], _mm_sha256msg2_epu32(t, w[3])]
}

#[inline(always)]
unsafe fn constants(i: usize) -> __m128i {
    _mm_loadu_si128(K.as_ptr().add(i * 4).cast())
}

/// Four rounds of one lane with message words `w` (plus constants `k`).
#[inline(always)]
unsafe fn rounds(lane: &mut Lane, w: __m128i, k: __m128i) {
    let t = _mm_add_epi32(w, k);
    lane.cdgh = _mm_sha256rnds2_epu32(lane.cdgh, lane.abef, t);
    lane.abef = _mm_sha256rnds2_epu32(lane.abef, lane.cdgh, _mm_shuffle_epi32(t, 0x0E));
}

/// Four rounds of two lanes, interleaved: each lane's rounds depend on its previous ones, so
/// the other lane's fill the instructions' latency.
#[inline(always)]
unsafe fn rounds2(a: &mut Lane, wa: __m128i, b: &mut Lane, wb: __m128i, k: __m128i) {
    let ta = _mm_add_epi32(wa, k);
    let tb = _mm_add_epi32(wb, k);
    a.cdgh = _mm_sha256rnds2_epu32(a.cdgh, a.abef, ta);
    b.cdgh = _mm_sha256rnds2_epu32(b.cdgh, b.abef, tb);
    a.abef = _mm_sha256rnds2_epu32(a.abef, a.cdgh, _mm_shuffle_epi32(ta, 0x0E));
    b.abef = _mm_sha256rnds2_epu32(b.abef, b.cdgh, _mm_shuffle_epi32(tb, 0x0E));
}

#[inline(always)]
unsafe fn add(lane: Lane, start: Lane) -> Lane {
    Lane {
        abef: _mm_add_epi32(lane.abef, start.abef),
        cdgh: _mm_add_epi32(lane.cdgh, start.cdgh),
    }
}

/// Compresses `blocks` (whole 64-byte blocks) into `state`.
///
/// # Safety
/// The CPU must have the `sha`, `sse2`, `ssse3` and `sse4.1` features.
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
pub(super) unsafe fn compress(state: &mut [u32; 8], blocks: &[u8]) {
    let mut lane = load(state);
    for block in blocks.chunks_exact(64) {
        let start = lane;
        let mut w = words(block);
        for (i, &words) in w.iter().enumerate() {
            rounds(&mut lane, words, constants(i));
        }
        for i in 4..16 {
            w = schedule(w);
            rounds(&mut lane, w[3], constants(i));
        }
        lane = add(lane, start);
    }
    store(lane, state);
}

/// Compresses `a` into `sa` and `b` into `sb` (the same number of whole blocks each).
///
/// # Safety
/// The CPU must have the `sha`, `sse2`, `ssse3` and `sse4.1` features.
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
pub(super) unsafe fn compress2(sa: &mut [u32; 8], a: &[u8], sb: &mut [u32; 8], b: &[u8]) {
    let (mut la, mut lb) = (load(sa), load(sb));
    for (ba, bb) in a.chunks_exact(64).zip(b.chunks_exact(64)) {
        let (start_a, start_b) = (la, lb);
        let (mut wa, mut wb) = (words(ba), words(bb));
        for (i, (&a_words, &b_words)) in wa.iter().zip(&wb).enumerate() {
            rounds2(&mut la, a_words, &mut lb, b_words, constants(i));
        }
        for i in 4..16 {
            wa = schedule(wa);
            wb = schedule(wb);
            rounds2(&mut la, wa[3], &mut lb, wb[3], constants(i));
        }
        la = add(la, start_a);
        lb = add(lb, start_b);
    }
    store(la, sa);
    store(lb, sb);
}
