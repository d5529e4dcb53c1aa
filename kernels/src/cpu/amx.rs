//! AMX-BF16 GEMM for prompt batches (Intel Sapphire Rapids and later).
//!
//! The batch path dequantizes a panel of weight rows to f32 and multiplies it by all tokens. With
//! AVX-512 FMAs that multiply is most of prompt processing; an AMX tile multiply (`tdpbf16ps`:
//! 16 × 16 outputs × 32 products per instruction) does the same work faster. Its inputs are
//! bf16, so both operands are split into two bf16 numbers, `v ≈ hi + lo` (`hi` is `v` rounded to
//! bf16, `lo` the rest rounded to bf16: 16 of f32's 24 mantissa bits), and each product is
//! `w_hi·x_hi + w_hi·x_lo + w_lo·x_hi`, accumulated in f32 by the tile unit: within 3·2⁻¹⁶ of the
//! exact product (each half rounds to 2⁻⁸, the dropped `lo·lo` is below that). The weights are
//! the exact dequantized values; SmolLM2's perplexity on this path equals the f32 path's to every
//! printed digit (docs/kernels.md).
//!
//! Layout (all tiles 16 rows × 64 bytes, in 64-byte-aligned buffers so no tile row straddles a
//! cache line): a panel's weights are the A operand, 16 rows × 32 columns per tile in their
//! natural order (no reshuffle of the many weights); the activations are the B operand, packed
//! once per matrix group into the "VNNI" order `tdpbf16ps` reads (tile row `p` holds, for each of
//! 16 tokens, the bf16 pair of columns `2p, 2p + 1`: a 16 × 16 register transpose). The output
//! tile C is 16 rows × 16 tokens and is transposed on the way to `y` (token-major). The kernel
//! keeps two C tiles (one row group × two token groups) and makes passes of `KC` column chunks,
//! the partial sums going to memory between passes (exact: f32 either way).
//!
//! Each output is the sum over `k` in chunk order, whatever the panel, pass or thread that
//! computes it, so results do not depend on the thread count.
//!
//! The tile instructions are written with `asm!` (Rust's AMX intrinsics are not stable); the
//! kernel asks Linux for permission to use the tile state once per process
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`) and uses AMX only if that succeeds.

use std::arch::asm;
use std::arch::x86_64::*;

/// Whether this CPU and OS run AMX-BF16 (checked once).
pub fn available() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        // The permission request below is a Linux system call.
        if !cfg!(target_os = "linux") {
            return false;
        }
        // CPUID.(7, 0).EDX: bit 22 AMX-BF16, bit 24 AMX-TILE.
        let edx = __cpuid_count(7, 0).edx;
        if edx & (1 << 22) == 0 || edx & (1 << 24) == 0 {
            return false;
        }
        if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw")) {
            return false;
        }
        // arch_prctl(ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18): 0 on success.
        let ret: i64;
        // SAFETY: a plain Linux system call (158 = arch_prctl) with integer arguments; it touches
        // no memory of ours.
        unsafe {
            asm!("syscall", inlateout("rax") 158i64 => ret, in("rdi") 0x1023i64, in("rsi") 18i64,
                 lateout("rcx") _, lateout("r11") _, options(nostack));
        }
        ret == 0
    })
}

/// A 64-byte-aligned, zero-initialised buffer (tile rows must not straddle cache lines).
#[derive(Debug, Default)]
struct Buf(Vec<Line>);

#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct Line([u32; 16]);

impl Buf {
    /// Room for at least `bytes` bytes (contents unspecified after growing).
    fn reserve_bytes(&mut self, bytes: usize) {
        self.0.resize(bytes.div_ceil(64), Line([0; 16]));
    }
    fn ptr<T>(&self) -> *const T {
        self.0.as_ptr().cast()
    }
    fn mut_ptr<T>(&mut self) -> *mut T {
        self.0.as_mut_ptr().cast()
    }
    /// The first `len` elements as `T` (a plain-old-data integer or float type).
    fn slice_mut<T>(&mut self, len: usize) -> &mut [T] {
        assert!(len * std::mem::size_of::<T>() <= self.0.len() * 64);
        // SAFETY: inside the buffer (checked), aligned (64 ≥ align_of::<T>()), and every bit
        // pattern is a valid T for the integer and float types used here.
        unsafe { std::slice::from_raw_parts_mut(self.mut_ptr::<T>(), len) }
    }
}

/// Column chunks (of 32) per pass: a token pair's activation tiles for one pass (`KC × 4` KiB)
/// stay in L1 while every 16-row group of the panel passes over them.
const KC: usize = 8;

/// `f32` bits → bf16 bits, round to nearest even (finite inputs; ±∞ stay ±∞).
#[inline(always)]
unsafe fn bf16_rne(v: __m512i) -> __m512i {
    // SAFETY: AVX-512F enabled by the caller.
    unsafe {
        let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(v), _mm512_set1_epi32(1));
        let r = _mm512_add_epi32(_mm512_add_epi32(v, _mm512_set1_epi32(0x7fff)), odd);
        _mm512_srli_epi32::<16>(r)
    }
}

/// 16 f32 → (hi, lo) as bf16 bits in the low half of each lane.
#[inline(always)]
unsafe fn split(v: __m512) -> (__m512i, __m512i) {
    // SAFETY: AVX-512F enabled by the caller.
    unsafe {
        let hi = bf16_rne(_mm512_castps_si512(v));
        let rest = _mm512_sub_ps(v, _mm512_castsi512_ps(_mm512_slli_epi32::<16>(hi)));
        (hi, bf16_rne(_mm512_castps_si512(rest)))
    }
}

/// 32 bf16 (two vectors of 16 lanes, the value in each lane's low half) → one vector, in order.
#[inline(always)]
unsafe fn pack32(a: __m512i, b: __m512i) -> __m512i {
    // SAFETY: AVX-512F enabled by the caller.
    unsafe {
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(_mm512_cvtepi32_epi16(a)), _mm512_cvtepi32_epi16(b))
    }
}

/// 32 values of `src` from `off` (fewer at the end: zeros after), split into bf16 hi and lo.
#[inline(always)]
unsafe fn split32(src: &[f32], off: usize) -> (__m512i, __m512i) {
    // SAFETY: masked loads read only inside `src`; AVX-512F enabled by the caller.
    unsafe {
        let left = src.len() - off;
        let m0 = if left >= 16 { 0xffff } else { ((1u32 << left) - 1) as u16 };
        let m1 = if left >= 32 {
            0xffff
        } else if left > 16 {
            ((1u32 << (left - 16)) - 1) as u16
        } else {
            0
        };
        let a = _mm512_maskz_loadu_ps(m0, src.as_ptr().add(off));
        // (With mask 0 nothing is read, so the pointer may lie past the end.)
        let b = _mm512_maskz_loadu_ps(m1, src.as_ptr().wrapping_add(off + 16));
        let (ah, al) = split(a);
        let (bh, bl) = split(b);
        (pack32(ah, bh), pack32(al, bl))
    }
}

/// A batch of activations as bf16 hi/lo in tile order: 1 KiB VNNI tiles of 32 columns × 16
/// tokens, token group-major then column chunk (`n` padded to 32 tokens, `k` to 32 columns, with
/// zeros), so the kernel's tile loads are contiguous.
#[derive(Debug)]
pub struct Acts {
    hi: Buf,
    lo: Buf,
    pub n: usize,
    pub k: usize,
}

impl Acts {
    /// Split `x` (`n × k`, row-major).
    pub fn new(x: &[f32], n: usize, k: usize) -> Acts {
        assert_eq!(x.len(), n * k);
        assert!(available(), "AMX-BF16 is not available");
        let (n_pad, k_pad) = (n.div_ceil(32) * 32, k.div_ceil(32) * 32);
        let (mut hi, mut lo) = (Buf::default(), Buf::default());
        hi.reserve_bytes(2 * n_pad * k_pad);
        lo.reserve_bytes(2 * n_pad * k_pad);
        // SAFETY: AVX-512F/BW were checked by `available`.
        unsafe { split_rows(x, n, k, hi.slice_mut(n_pad * k_pad), lo.slice_mut(n_pad * k_pad)) };
        Acts { hi, lo, n, k }
    }
}

#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn split_rows(x: &[f32], n: usize, k: usize, hi: &mut [u16], lo: &mut [u16]) {
    let chunks = k.div_ceil(32);
    for tg in 0..n.div_ceil(16) {
        for c in 0..chunks {
            // SAFETY: AVX-512F enabled; tile (tg, c) is the 512 u16 from `at`, inside the buffers
            // (sized for ⌈n / 32⌉·2 token groups × `chunks`).
            unsafe {
                let mut h = [_mm512_setzero_si512(); 16];
                let mut l = [_mm512_setzero_si512(); 16];
                for t in 0..(n - 16 * tg).min(16) {
                    let row = &x[(16 * tg + t) * k..(16 * tg + t + 1) * k];
                    (h[t], l[t]) = split32(row, 32 * c);
                }
                transpose16(&mut h);
                transpose16(&mut l);
                let at = (tg * chunks + c) * 512;
                for p in 0..16 {
                    _mm512_storeu_si512(hi.as_mut_ptr().add(at + 32 * p).cast(), h[p]);
                    _mm512_storeu_si512(lo.as_mut_ptr().add(at + 32 * p).cast(), l[p]);
                }
            }
        }
    }
}

/// Pack `rows ≤ 16` dequantized weight rows (`w`, `rows × k`) into the tiles of one 16-row
/// group: `chunks = ⌈k / 32⌉` tiles of 16 rows × 32 bf16 for hi and for lo (rows past `rows`
/// zero), each row in its natural order.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pack_group(w: &[f32], rows: usize, k: usize, hi: &mut [u32], lo: &mut [u32]) {
    let chunks = k.div_ceil(32);
    assert!(hi.len() >= chunks * 256 && lo.len() >= chunks * 256 && w.len() >= rows * k);
    // SAFETY: AVX-512F enabled; each chunk's 16 stores of 64 bytes fill its 1 KiB tile.
    unsafe {
        for c in 0..chunks {
            for j in 0..16 {
                let (h, l) = if j < rows {
                    split32(&w[j * k..(j + 1) * k], 32 * c)
                } else {
                    (_mm512_setzero_si512(), _mm512_setzero_si512())
                };
                _mm512_storeu_si512(hi.as_mut_ptr().add(c * 256 + 16 * j).cast(), h);
                _mm512_storeu_si512(lo.as_mut_ptr().add(c * 256 + 16 * j).cast(), l);
            }
        }
    }
}

/// Transpose a 16 × 16 matrix of 32-bit lanes (`r[i]` lane `j` ↔ `r[j]` lane `i`).
#[inline(always)]
unsafe fn transpose16(r: &mut [__m512i; 16]) {
    // SAFETY: AVX-512F enabled by the caller.
    unsafe {
        let mut t = [_mm512_setzero_si512(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
        }
        for i in 0..4 {
            let b = 4 * i;
            r[b] = _mm512_unpacklo_epi64(t[b], t[b + 2]);
            r[b + 1] = _mm512_unpackhi_epi64(t[b], t[b + 2]);
            r[b + 2] = _mm512_unpacklo_epi64(t[b + 1], t[b + 3]);
            r[b + 3] = _mm512_unpackhi_epi64(t[b + 1], t[b + 3]);
        }
        // Now r[4i + m], 128-bit lane L, holds rows 4i..4i+4 of column 4L + m.
        for h in 0..2 {
            for m in 0..4 {
                let (a, b) = (r[8 * h + m], r[8 * h + 4 + m]);
                t[8 * h + m] = _mm512_shuffle_i32x4::<0x88>(a, b);
                t[8 * h + 4 + m] = _mm512_shuffle_i32x4::<0xdd>(a, b);
            }
        }
        for m in 0..8 {
            r[m] = _mm512_shuffle_i32x4::<0x88>(t[m], t[8 + m]);
            r[8 + m] = _mm512_shuffle_i32x4::<0xdd>(t[m], t[8 + m]);
        }
    }
}

#[cfg(test)]
#[test]
fn transpose16_transposes() {
    if !is_x86_feature_detected!("avx512f") {
        return;
    }
    let m: Vec<u32> = (0..256).map(|i| i * 7 + 1).collect();
    let mut out = [0u32; 256];
    // SAFETY: AVX-512F checked above; 16 rows of 16 lanes in and out.
    unsafe {
        let mut r = [_mm512_setzero_si512(); 16];
        for (i, v) in r.iter_mut().enumerate() {
            *v = _mm512_loadu_si512(m.as_ptr().add(16 * i).cast());
        }
        transpose_for_test(&mut r);
        for (i, v) in r.iter().enumerate() {
            _mm512_storeu_si512(out.as_mut_ptr().add(16 * i).cast(), *v);
        }
    }
    for i in 0..16 {
        for j in 0..16 {
            assert_eq!(out[16 * i + j], m[16 * j + i], "[{i}][{j}]");
        }
    }
}

#[cfg(test)]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_for_test(r: &mut [__m512i; 16]) {
    // SAFETY: forwarded.
    unsafe { transpose16(r) }
}

/// `y[t·ys + r] = part` for `t < n`, `r < rows`: each part tile (token group, row group) is
/// 16 rows × 16 tokens, transposed on the way out.
#[target_feature(enable = "avx512f")]
unsafe fn copy_out(part: *const f32, n: usize, rows: usize, groups: usize, y: *mut f32, ys: usize) {
    for tg in 0..n.div_ceil(16) {
        for g in 0..groups {
            let r0 = 16 * g;
            let m = if rows - r0 >= 16 { 0xffff } else { ((1u32 << (rows - r0)) - 1) as u16 };
            // SAFETY: the caller's part holds every tile; the masked stores write rows < `rows`
            // of tokens < n.
            unsafe {
                let tile = part.add((tg * groups + g) * 256);
                let mut v = [_mm512_setzero_si512(); 16];
                for (r, v) in v.iter_mut().enumerate() {
                    *v = _mm512_loadu_si512(tile.add(16 * r).cast());
                }
                transpose16(&mut v);
                for (t, v) in v.iter().enumerate().take((n - 16 * tg).min(16)) {
                    _mm512_mask_storeu_ps(y.add((16 * tg + t) * ys + r0), m, _mm512_castsi512_ps(*v));
                }
            }
        }
    }
}

/// The tile configuration: palette 1, all 8 tiles 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileCfg {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
    reserved2: [u8; 16],
}

const CFG: TileCfg = TileCfg {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
    reserved2: [0; 16],
};

/// Scratch of one thread: a 16-row group's f32 rows and its packed tiles.
#[derive(Debug, Default)]
pub struct Scratch {
    rows: Vec<f32>,
    hi: Buf,
    lo: Buf,
    part: Buf,
}

/// `y[t·ys + r] = Σ_k x[t][k] · W[r][k]` for the `rows` rows that `dequant(r0, r1, out)` writes
/// (rows `r0..r1` of the panel, `(r1 − r0) × k` f32), every token of `a`.
///
/// # Safety
/// [`available`] must be true; `y` valid for `t·ys + r` writes, `t < a.n`, `r < rows`, and not
/// written by anyone else meanwhile.
pub unsafe fn gemm_panel(
    a: &Acts,
    rows: usize,
    dequant: &dyn Fn(usize, usize, &mut [f32]),
    s: &mut Scratch,
    y: *mut f32,
    ys: usize,
) {
    let k = a.k;
    let chunks = k.div_ceil(32);
    let groups = rows.div_ceil(16);
    s.rows.resize(16 * k, 0.0);
    s.hi.reserve_bytes(4 * groups * chunks * 256);
    s.lo.reserve_bytes(4 * groups * chunks * 256);
    for g in 0..groups {
        let (r0, r1) = (16 * g, (16 * g + 16).min(rows));
        dequant(r0, r1, &mut s.rows[..(r1 - r0) * k]);
        let tiles = g * chunks * 256..(g + 1) * chunks * 256;
        // SAFETY: AVX-512 checked by `available`; the tile slices hold `chunks` tiles.
        unsafe {
            pack_group(
                &s.rows[..(r1 - r0) * k],
                r1 - r0,
                k,
                &mut s.hi.slice_mut::<u32>(tiles.end)[tiles.clone()],
                &mut s.lo.slice_mut::<u32>(tiles.end)[tiles],
            )
        };
    }
    // Partial sums, tile by tile: [token group][row group][16 rows × 16 tokens].
    let tgroups = a.n.div_ceil(32) * 2;
    s.part.reserve_bytes(4 * tgroups * groups * 256);
    let part = s.part.mut_ptr::<f32>();
    // SAFETY: AMX is enabled for this process (`available`); every tile load reads 16 rows of 64
    // bytes inside the activation tiles (token groups < tgroups, chunks < `chunks`), the packed
    // weight tiles or `part`; every store goes to `part`.
    unsafe {
        asm!("ldtilecfg [{}]", in(reg) &CFG as *const TileCfg, options(nostack, readonly));
        let mut c0 = 0;
        while c0 < chunks {
            let c1 = (c0 + KC).min(chunks);
            for tg in (0..tgroups).step_by(2) {
                // Tiles of token groups tg and tg + 1.
                let ah0 = a.hi.ptr::<u16>().add(tg * chunks * 512);
                let al0 = a.lo.ptr::<u16>().add(tg * chunks * 512);
                let (ah1, al1) = (ah0.add(chunks * 512), al0.add(chunks * 512));
                for g in 0..groups {
                    let bh = s.hi.ptr::<u32>().add(g * chunks * 256);
                    let bl = s.lo.ptr::<u32>().add(g * chunks * 256);
                    let p0 = part.add((tg * groups + g) * 256);
                    let p1 = part.add(((tg + 1) * groups + g) * 256);
                    if c0 == 0 {
                        asm!("tilezero tmm0", "tilezero tmm1", options(nostack, nomem));
                    } else {
                        asm!("tileloadd tmm0, [{p0} + {s64}*1]", "tileloadd tmm1, [{p1} + {s64}*1]",
                             p0 = in(reg) p0, p1 = in(reg) p1, s64 = in(reg) 64isize, options(nostack, readonly));
                    }
                    // The next row group's weight tiles of this pass, into L1 while this one runs.
                    let (nh, nl) = (bh.wrapping_add(chunks * 256), bl.wrapping_add(chunks * 256));
                    for c in c0..c1 {
                        if g + 1 < groups {
                            for line in 0..16 {
                                _mm_prefetch::<_MM_HINT_T0>(nh.add(c * 256 + 16 * line).cast());
                                _mm_prefetch::<_MM_HINT_T0>(nl.add(c * 256 + 16 * line).cast());
                            }
                        }
                        asm!(
                            "tileloadd tmm6, [{bh} + {s64}*1]",
                            "tileloadd tmm7, [{bl} + {s64}*1]",
                            "tileloadd tmm2, [{ah0} + {s64}*1]",
                            "tileloadd tmm3, [{al0} + {s64}*1]",
                            "tdpbf16ps tmm0, tmm6, tmm2",
                            "tdpbf16ps tmm0, tmm6, tmm3",
                            "tdpbf16ps tmm0, tmm7, tmm2",
                            "tileloadd tmm4, [{ah1} + {s64}*1]",
                            "tileloadd tmm5, [{al1} + {s64}*1]",
                            "tdpbf16ps tmm1, tmm6, tmm4",
                            "tdpbf16ps tmm1, tmm6, tmm5",
                            "tdpbf16ps tmm1, tmm7, tmm4",
                            bh = in(reg) bh.add(c * 256),
                            bl = in(reg) bl.add(c * 256),
                            ah0 = in(reg) ah0.add(512 * c),
                            al0 = in(reg) al0.add(512 * c),
                            ah1 = in(reg) ah1.add(512 * c),
                            al1 = in(reg) al1.add(512 * c),
                            s64 = in(reg) 64isize,
                            options(nostack, readonly),
                        );
                    }
                    asm!("tilestored [{p0} + {s64}*1], tmm0", "tilestored [{p1} + {s64}*1], tmm1",
                         p0 = in(reg) p0, p1 = in(reg) p1, s64 = in(reg) 64isize, options(nostack));
                }
            }
            c0 = c1;
        }
        asm!("tilerelease", options(nostack, nomem));
        copy_out(part, a.n, rows, groups, y, ys);
    }
}
