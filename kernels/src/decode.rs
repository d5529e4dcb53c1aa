//! Per-format chunk decoders: the only per-format code the kernels need.
//!
//! A quantized chunk of up to 256 weights (one k-quant super-block, or up to eight legacy blocks)
//! decodes to unsigned 8-bit codes with one scale and one offset per 16 weights:
//! `w[i] = s[i/16] · q[i] + o[i/16]`. Every ggml integer format fits this shape (signed codes
//! are biased: Q8_0 stores `q + 128` with `o = −128·d`), so one integer dot product serves them
//! all. Float formats (F32, F16, BF16) decode to f32 instead.
//!
//! The decoders are plain Rust written so that LLVM vectorises them; they are `#[inline(always)]`
//! and get compiled once per instruction set inside each `#[target_feature]` kernel
//! (`cpu::x86`), so the scalar reference and the SIMD kernels decode with the same source.
//! `tests` checks every decoder against `quantkit_formats`' scalar `dequantize_row`.

use quantkit_formats::ggml::k::get_scale_min_k4;
use quantkit_formats::ggml::k::q3_k::unpack_q3_scales;

/// Weights per decoded chunk.
pub const CHUNK: usize = 256;
/// Weights per scale/offset group in a decoded chunk.
pub const GROUP: usize = 16;

/// One decoded chunk: `w[i] = s[i/16]·q[i] + o[i/16]`.
#[repr(C, align(64))]
#[derive(Debug, Clone)]
pub struct IntChunk {
    pub q: [u8; CHUNK],
    pub s: [f32; CHUNK / GROUP],
    pub o: [f32; CHUNK / GROUP],
}

impl Default for IntChunk {
    fn default() -> Self {
        IntChunk { q: [0; CHUNK], s: [0.0; CHUNK / GROUP], o: [0.0; CHUNK / GROUP] }
    }
}

/// An integer format's decoder: `n` weights (a multiple of `BLOCK`, at most 256) from `src`.
pub trait IntDecode {
    const BLOCK: usize;
    const BLOCK_BYTES: usize;
    fn decode<C: Half8>(src: &[u8], n: usize, out: &mut IntChunk);
}

/// Eight f16 → f32 conversions at once: [`SoftHalf`] everywhere, F16C's `vcvtph2ps` inside the
/// x86 kernels. Both are exact, so they agree bit for bit.
pub trait Half8 {
    fn cvt(h: [u16; 8]) -> [f32; 8];
}

/// The portable conversion.
#[derive(Debug)]
pub struct SoftHalf;
impl Half8 for SoftHalf {
    #[inline(always)]
    fn cvt(h: [u16; 8]) -> [f32; 8] {
        h.map(f16_to_f32)
    }
}

/// F16C (only used inside `#[target_feature(enable = "f16c")]` kernels).
#[cfg(target_arch = "x86_64")]
#[derive(Debug)]
pub struct F16c;
#[cfg(target_arch = "x86_64")]
impl Half8 for F16c {
    #[inline(always)]
    fn cvt(h: [u16; 8]) -> [f32; 8] {
        use std::arch::x86_64::*;
        let mut out = [0f32; 8];
        // SAFETY: F16C is enabled in every kernel that instantiates this (see cpu/x86.rs).
        unsafe {
            let v = _mm_loadu_si128(h.as_ptr().cast());
            _mm256_storeu_ps(out.as_mut_ptr(), _mm256_cvtph_ps(v));
        }
        out
    }
}

/// A float format's decoder: `n` weights (at most 256) from `src` to f32.
pub trait FloatDecode {
    const BYTES: usize;
    fn decode(src: &[u8], n: usize, out: &mut [f32; CHUNK]);
}

/// IEEE half → f32, exact for every input (normals, subnormals, infinities, NaN), branch-free so
/// that it vectorises (F. Giesen's `half_to_float_fast5` idea).
#[inline(always)]
pub fn f16_to_f32(h: u16) -> f32 {
    let h = h as u32;
    let sign = (h & 0x8000) << 16;
    let em = h & 0x7fff;
    let shifted = em << 13;
    let exp = shifted & 0x0f80_0000;
    let normal = shifted + ((127 - 15) << 23);
    // Inf/NaN: push the exponent to 255.
    let infnan = normal + ((128 - 16) << 23);
    // Subnormal: let the FPU renormalise (x·2^-24 exactly).
    let sub =
        (f32::from_bits(shifted + (1 << 23) + ((127 - 15) << 23)) - f32::from_bits(113 << 23)).to_bits();
    let bits = if exp == 0x0f80_0000 {
        infnan
    } else if exp == 0 {
        sub
    } else {
        normal
    };
    f32::from_bits(bits | sign)
}

#[inline(always)]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[i], b[i + 1]]))
}

/// Split 16 packed bytes into low nibbles (weights 0..16) and high nibbles (16..32).
#[inline(always)]
fn nibbles(qs: &[u8], q: &mut [u8]) {
    let (qs, q) = (&qs[..16], &mut q[..32]);
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        // SAFETY: SSE2 is part of x86-64; both slices were bounds-checked above.
        unsafe {
            let v = _mm_loadu_si128(qs.as_ptr().cast());
            let m = _mm_set1_epi8(0x0f);
            _mm_storeu_si128(q.as_mut_ptr().cast(), _mm_and_si128(v, m));
            _mm_storeu_si128(q.as_mut_ptr().add(16).cast(), _mm_and_si128(_mm_srli_epi16(v, 4), m));
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        for j in 0..16 {
            q[j] = qs[j] & 0x0f;
            q[j + 16] = qs[j] >> 4;
        }
    }
}

/// The per-block f16 fields at byte `at` of up to 8 blocks of `bb` bytes, converted together (one
/// vectorised conversion instead of eight scalar ones).
#[inline(always)]
fn block_f16s<C: Half8>(src: &[u8], nb: usize, bb: usize, at: usize) -> [f32; 8] {
    let mut h = [0u16; 8];
    for (b, v) in h.iter_mut().enumerate().take(nb) {
        *v = u16::from_le_bytes([src[b * bb + at], src[b * bb + at + 1]]);
    }
    C::cvt(h)
}

/// Scales (and offsets = `bias·d`, or the block minimum) of up to 8 legacy blocks, spread over
/// the 16-weight groups.
#[inline(always)]
fn legacy_scales<C: Half8>(
    src: &[u8],
    n: usize,
    bb: usize,
    min_at: Option<usize>,
    bias: f32,
    out: &mut IntChunk,
) {
    let nb = n / 32;
    let d = block_f16s::<C>(src, nb, bb, 0);
    let m = match min_at {
        Some(at) => block_f16s::<C>(src, nb, bb, at),
        None => d.map(|d| bias * d),
    };
    for g in 0..16 {
        out.s[g] = d[g / 2];
        out.o[g] = m[g / 2];
    }
}

/// Byte b → 8 bytes, byte i = 0x10 if bit i of b is set.
static FIFTH: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut b = 0;
    while b < 256 {
        let mut v = 0u64;
        let mut i = 0;
        while i < 8 {
            if b & (1 << i) != 0 {
                v |= 0x10 << (8 * i);
            }
            i += 1;
        }
        t[b] = v;
        b += 1;
    }
    t
};

/// OR the fifth bit (bit j of `qh` for weight j) into 32 codes.
#[inline(always)]
fn fifth_bits(qh: u32, q: &mut [u8]) {
    for (i, c) in q[..32].chunks_exact_mut(8).enumerate() {
        let h = FIFTH[((qh >> (8 * i)) & 0xff) as usize];
        let v = u64::from_le_bytes(c[..8].try_into().expect("8 bytes")) | h;
        c.copy_from_slice(&v.to_le_bytes());
    }
}

#[derive(Debug)]
pub struct Q4_0;
impl IntDecode for Q4_0 {
    const BLOCK: usize = 32;
    const BLOCK_BYTES: usize = 18;
    #[inline(always)]
    fn decode<C: Half8>(src: &[u8], n: usize, out: &mut IntChunk) {
        legacy_scales::<C>(src, n, 18, None, -8.0, out);
        for b in 0..n / 32 {
            nibbles(&src[b * 18 + 2..], &mut out.q[32 * b..]);
        }
    }
}

#[derive(Debug)]
pub struct Q4_1;
impl IntDecode for Q4_1 {
    const BLOCK: usize = 32;
    const BLOCK_BYTES: usize = 20;
    #[inline(always)]
    fn decode<C: Half8>(src: &[u8], n: usize, out: &mut IntChunk) {
        legacy_scales::<C>(src, n, 20, Some(2), 0.0, out);
        for b in 0..n / 32 {
            nibbles(&src[b * 20 + 4..], &mut out.q[32 * b..]);
        }
    }
}

#[derive(Debug)]
pub struct Q5_0;
impl IntDecode for Q5_0 {
    const BLOCK: usize = 32;
    const BLOCK_BYTES: usize = 22;
    #[inline(always)]
    fn decode<C: Half8>(src: &[u8], n: usize, out: &mut IntChunk) {
        legacy_scales::<C>(src, n, 22, None, -16.0, out);
        for b in 0..n / 32 {
            let blk = &src[b * 22..b * 22 + 22];
            let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
            let q = &mut out.q[32 * b..32 * b + 32];
            nibbles(&blk[6..22], q);
            fifth_bits(qh, q);
        }
    }
}

#[derive(Debug)]
pub struct Q5_1;
impl IntDecode for Q5_1 {
    const BLOCK: usize = 32;
    const BLOCK_BYTES: usize = 24;
    #[inline(always)]
    fn decode<C: Half8>(src: &[u8], n: usize, out: &mut IntChunk) {
        legacy_scales::<C>(src, n, 24, Some(2), 0.0, out);
        for b in 0..n / 32 {
            let blk = &src[b * 24..b * 24 + 24];
            let qh = u32::from_le_bytes([blk[4], blk[5], blk[6], blk[7]]);
            let q = &mut out.q[32 * b..32 * b + 32];
            nibbles(&blk[8..24], q);
            fifth_bits(qh, q);
        }
    }
}

#[derive(Debug)]
pub struct Q8_0;
impl IntDecode for Q8_0 {
    const BLOCK: usize = 32;
    const BLOCK_BYTES: usize = 34;
    #[inline(always)]
    fn decode<C: Half8>(src: &[u8], n: usize, out: &mut IntChunk) {
        legacy_scales::<C>(src, n, 34, None, -128.0, out);
        for b in 0..n / 32 {
            let blk = &src[b * 34..b * 34 + 34];
            // i8 → i8 + 128, 16 bytes at a time.
            const X: u128 = 0x8080_8080_8080_8080_8080_8080_8080_8080;
            let lo = u128::from_le_bytes(blk[2..18].try_into().expect("16 bytes")) ^ X;
            let hi = u128::from_le_bytes(blk[18..34].try_into().expect("16 bytes")) ^ X;
            out.q[32 * b..32 * b + 16].copy_from_slice(&lo.to_le_bytes());
            out.q[32 * b + 16..32 * b + 32].copy_from_slice(&hi.to_le_bytes());
        }
    }
}

#[derive(Debug)]
pub struct Q2K;
impl IntDecode for Q2K {
    const BLOCK: usize = 256;
    const BLOCK_BYTES: usize = 84;
    #[inline(always)]
    fn decode<C: Half8>(src: &[u8], _n: usize, out: &mut IntChunk) {
        let (scales, qs) = (&src[0..16], &src[16..80]);
        let d = f16_at(src, 80);
        let dmin = f16_at(src, 82);
        for g in 0..16 {
            out.s[g] = d * (scales[g] & 0xf) as f32;
            out.o[g] = -(dmin * (scales[g] >> 4) as f32);
        }
        // Group g = 8n + 2·(shift/2) + half covers weights 16g..16g+16.
        for n in 0..2 {
            for (k, shift) in [0u32, 2, 4, 6].into_iter().enumerate() {
                for l in 0..32 {
                    out.q[128 * n + 32 * k + l] = (qs[32 * n + l] >> shift) & 3;
                }
            }
        }
    }
}

#[derive(Debug)]
pub struct Q3K;
impl IntDecode for Q3K {
    const BLOCK: usize = 256;
    const BLOCK_BYTES: usize = 110;
    #[inline(always)]
    fn decode<C: Half8>(src: &[u8], _n: usize, out: &mut IntChunk) {
        let (hmask, qs) = (&src[0..32], &src[32..96]);
        let mut sc12 = [0u8; 12];
        sc12.copy_from_slice(&src[96..108]);
        let scales = unpack_q3_scales(&sc12);
        let d = f16_at(src, 108);
        for g in 0..16 {
            let dl = d * (scales[g] as i32 - 32) as f32;
            out.s[g] = dl;
            out.o[g] = -4.0 * dl;
        }
        for n in 0..2 {
            for (k, shift) in [0u32, 2, 4, 6].into_iter().enumerate() {
                let m = 4 * n + k;
                for l in 0..32 {
                    let lo = (qs[32 * n + l] >> shift) & 3;
                    let hi = ((hmask[l] >> m) & 1) << 2;
                    out.q[128 * n + 32 * k + l] = lo | hi;
                }
            }
        }
    }
}

#[inline(always)]
fn k4_scales(src: &[u8], out: &mut IntChunk) {
    let d = f16_at(src, 0);
    let dmin = f16_at(src, 2);
    let mut sc = [0u8; 12];
    sc.copy_from_slice(&src[4..16]);
    for j in 0..8 {
        let (s, m) = get_scale_min_k4(j, &sc);
        let (s, m) = (d * s as f32, -(dmin * m as f32));
        out.s[2 * j] = s;
        out.s[2 * j + 1] = s;
        out.o[2 * j] = m;
        out.o[2 * j + 1] = m;
    }
}

#[derive(Debug)]
pub struct Q4K;
impl IntDecode for Q4K {
    const BLOCK: usize = 256;
    const BLOCK_BYTES: usize = 144;
    #[inline(always)]
    fn decode<C: Half8>(src: &[u8], _n: usize, out: &mut IntChunk) {
        k4_scales(src, out);
        let qs = &src[16..144];
        for j in 0..4 {
            for l in 0..32 {
                out.q[64 * j + l] = qs[32 * j + l] & 0xf;
                out.q[64 * j + 32 + l] = qs[32 * j + l] >> 4;
            }
        }
    }
}

#[derive(Debug)]
pub struct Q5K;
impl IntDecode for Q5K {
    const BLOCK: usize = 256;
    const BLOCK_BYTES: usize = 176;
    #[inline(always)]
    fn decode<C: Half8>(src: &[u8], _n: usize, out: &mut IntChunk) {
        k4_scales(src, out);
        let (qh, qs) = (&src[16..48], &src[48..176]);
        for j in 0..4 {
            for l in 0..32 {
                let h1 = ((qh[l] >> (2 * j)) & 1) << 4;
                let h2 = ((qh[l] >> (2 * j + 1)) & 1) << 4;
                out.q[64 * j + l] = (qs[32 * j + l] & 0xf) | h1;
                out.q[64 * j + 32 + l] = (qs[32 * j + l] >> 4) | h2;
            }
        }
    }
}

#[derive(Debug)]
pub struct Q6K;
impl IntDecode for Q6K {
    const BLOCK: usize = 256;
    const BLOCK_BYTES: usize = 210;
    #[inline(always)]
    fn decode<C: Half8>(src: &[u8], _n: usize, out: &mut IntChunk) {
        let (ql, qh, sc) = (&src[0..128], &src[128..192], &src[192..208]);
        let d = f16_at(src, 208);
        for g in 0..16 {
            let s = d * (sc[g] as i8) as f32;
            out.s[g] = s;
            out.o[g] = -32.0 * s;
        }
        for n in 0..2 {
            let (ql, qh) = (&ql[64 * n..64 * n + 64], &qh[32 * n..32 * n + 32]);
            let q = &mut out.q[128 * n..128 * n + 128];
            for l in 0..32 {
                q[l] = (ql[l] & 0xf) | ((qh[l] & 3) << 4);
                q[l + 32] = (ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4);
                q[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                q[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
            }
        }
    }
}

#[derive(Debug)]
pub struct F32;
impl FloatDecode for F32 {
    const BYTES: usize = 4;
    #[inline(always)]
    fn decode(src: &[u8], n: usize, out: &mut [f32; CHUNK]) {
        for (o, b) in out[..n].iter_mut().zip(src.chunks_exact(4)) {
            *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
    }
}

#[derive(Debug)]
pub struct F16;
impl FloatDecode for F16 {
    const BYTES: usize = 2;
    #[inline(always)]
    fn decode(src: &[u8], n: usize, out: &mut [f32; CHUNK]) {
        for (o, b) in out[..n].iter_mut().zip(src.chunks_exact(2)) {
            *o = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
        }
    }
}

#[derive(Debug)]
pub struct BF16;
impl FloatDecode for BF16 {
    const BYTES: usize = 2;
    #[inline(always)]
    fn decode(src: &[u8], n: usize, out: &mut [f32; CHUNK]) {
        for (o, b) in out[..n].iter_mut().zip(src.chunks_exact(2)) {
            *o = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
        }
    }
}
