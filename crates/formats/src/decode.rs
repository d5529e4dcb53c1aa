//! The decoded form every integer format shares, and the helpers the formats' decoders use.
//!
//! A quantized chunk of up to 256 weights (one k-quant super-block, or up to eight legacy blocks)
//! decodes to unsigned 8-bit codes with one scale and one offset per 16 weights:
//! `w[i] = s[i/16] · q[i] + o[i/16]`. Every ggml integer format fits this shape (signed codes
//! are biased: Q8_0 stores `q + 128` with `o = −128·d`), so one integer dot product (the kernels)
//! and one rounding rule (GPTQ's GGUF grids) serve them all. Each format's decoder
//! ([`crate::IntBlock::decode`]) and its inverse ([`crate::IntBlock::set_code`]) live in the
//! format's own file; float formats decode to f32 ([`crate::FloatFormat::decode`]).
//!
//! The decoders are plain Rust written so that LLVM vectorises them; they are `#[inline(always)]`
//! and get compiled once per instruction set inside each `#[target_feature]` kernel
//! (quantkit-kernels' `cpu::x86`), so the scalar reference and the SIMD kernels decode with the
//! same source. The kernels' conformance suite checks every decoder against the format's scalar
//! `dequantize`.

use crate::ggml::k::get_scale_min_k4;

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
    /// Non-zero for formats whose codes are biased (`w = s·(q − bias)`): then `o[g] == −bias·s[g]`
    /// exactly for every group, and an integer dot may sum `Σ (q − bias)·a` in integers instead of
    /// adding `o·Σa` in floats (which cancels against `s·Σqa` where most codes sit at the bias).
    /// Every decoder sets it (the chunk buffers are reused).
    pub bias: u8,
}

impl Default for IntChunk {
    fn default() -> Self {
        IntChunk { q: [0; CHUNK], s: [0.0; CHUNK / GROUP], o: [0.0; CHUNK / GROUP], bias: 0 }
    }
}

/// Eight f16 → f32 conversions at once: [`SoftHalf`] everywhere, F16C's `vcvtph2ps` inside the
/// x86 kernels. Both are exact, so they agree bit for bit.
///
/// The same type parameter carries the decoders' other instruction-set-specific step, the 16-entry
/// byte table lookup of the non-linear 4-bit formats ([`Half8::lut16`]): scalar for [`SoftHalf`],
/// `pshufb` for [`F16c`] (every kernel that uses F16C has SSSE3).
pub trait Half8 {
    fn cvt(h: [u16; 8]) -> [f32; 8];
    /// `q[i] = table[q[i]]` for 4-bit codes `q` (`q.len()` a multiple of 16).
    #[inline(always)]
    fn lut16(table: &[u8; 16], q: &mut [u8]) {
        for c in q {
            *c = table[(*c & 15) as usize];
        }
    }
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
    #[inline(always)]
    fn lut16(table: &[u8; 16], q: &mut [u8]) {
        use std::arch::x86_64::*;
        // SAFETY: the kernels that instantiate F16c enable AVX2 (or AVX-512), which include SSSE3's
        // pshufb; loads and stores stay inside `table` and each 16-byte chunk of `q`.
        unsafe {
            let t = _mm_loadu_si128(table.as_ptr().cast());
            for c in q.chunks_exact_mut(16) {
                let v = _mm_loadu_si128(c.as_ptr().cast());
                _mm_storeu_si128(c.as_mut_ptr().cast(), _mm_shuffle_epi8(t, v));
            }
        }
    }
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
pub(crate) fn f16_at(b: &[u8], i: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[i], b[i + 1]]))
}

/// Split 16 packed bytes into low nibbles (weights 0..16) and high nibbles (16..32).
#[inline(always)]
pub(crate) fn nibbles(qs: &[u8], q: &mut [u8]) {
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
pub(crate) fn block_f16s<C: Half8>(src: &[u8], nb: usize, bb: usize, at: usize) -> [f32; 8] {
    let mut h = [0u16; 8];
    for (b, v) in h.iter_mut().enumerate().take(nb) {
        *v = u16::from_le_bytes([src[b * bb + at], src[b * bb + at + 1]]);
    }
    C::cvt(h)
}

/// Scales (and offsets = `bias·d`, or the block minimum) of up to 8 legacy blocks, spread over
/// the 16-weight groups.
#[inline(always)]
pub(crate) fn legacy_scales<C: Half8>(
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
    // `bias·d` with a power-of-two bias is exact, so `o == −b·s` holds to the bit.
    out.bias = if min_at.is_none() { (-bias) as u8 } else { 0 };
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
pub(crate) fn fifth_bits(qh: u32, q: &mut [u8]) {
    for (i, c) in q[..32].chunks_exact_mut(8).enumerate() {
        let h = FIFTH[((qh >> (8 * i)) & 0xff) as usize];
        let v = u64::from_le_bytes(c[..8].try_into().expect("8 bytes")) | h;
        c.copy_from_slice(&v.to_le_bytes());
    }
}

/// The Q4_K/Q5_K super-block's scales and mins over the 16-weight groups.
#[inline(always)]
pub(crate) fn k4_scales(src: &[u8], out: &mut IntChunk) {
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
    out.bias = 0;
}

/// Write `bits` bits of `v` at bit `shift` of `b` (the other bits unchanged): the formats'
/// `set_code` helper.
#[inline]
pub(crate) fn put_bits(b: &mut u8, shift: u32, bits: u32, v: u8) {
    let mask = (((1u32 << bits) - 1) << shift) as u8;
    *b = (*b & !mask) | ((v << shift) & mask);
}

/// Code `q` of weight `j` (0..32) of a legacy block whose 16 nibble bytes start at `qs`: low
/// nibbles hold weights 0..16, high nibbles 16..32.
#[inline]
pub(crate) fn set_nibble(b: &mut [u8], qs: usize, j: usize, q: u8) {
    if j < 16 {
        put_bits(&mut b[qs + j], 0, 4, q);
    } else {
        put_bits(&mut b[qs + j - 16], 4, 4, q);
    }
}

/// The fifth bit of code `q` of weight `j` into the 4-byte `qh` field at `qh` (bit j).
#[inline]
pub(crate) fn set_fifth(b: &mut [u8], qh: usize, j: usize, q: u8) {
    put_bits(&mut b[qh + j / 8], (j % 8) as u32, 1, q >> 4);
}
