//! Plain float storage: F32, F16 (IEEE half, round to nearest even) and BF16 (ggml's rounding).

use crate::decode::CHUNK;
use crate::FloatFormat;
use half::slice::HalfFloatSliceExt;
use quantkit_core::GgmlType;

/// F32: values as they are.
#[derive(Debug)]
pub struct F32;
/// F16: IEEE half, round to nearest even.
#[derive(Debug)]
pub struct F16;
/// BF16: ggml's rounding (NaN forced quiet).
#[derive(Debug)]
pub struct BF16;

impl FloatFormat for F32 {
    const TYPE: GgmlType = GgmlType::F32;
    const BYTES: usize = 4;
    fn quantize_row(x: &[f32], out: &mut [u8]) {
        f32_to_bytes(x, out)
    }
    fn dequantize_row(src: &[u8], out: &mut [f32]) {
        bytes_to_f32(src, out)
    }
    #[inline(always)]
    fn decode(src: &[u8], n: usize, out: &mut [f32; CHUNK]) {
        for (o, b) in out[..n].iter_mut().zip(src.chunks_exact(4)) {
            *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
    }
}

impl FloatFormat for F16 {
    const TYPE: GgmlType = GgmlType::F16;
    const BYTES: usize = 2;
    fn quantize_row(x: &[f32], out: &mut [u8]) {
        f32_to_f16(x, out)
    }
    fn dequantize_row(src: &[u8], out: &mut [f32]) {
        f16_to_f32(src, out)
    }
    #[inline(always)]
    fn decode(src: &[u8], n: usize, out: &mut [f32; CHUNK]) {
        for (o, b) in out[..n].iter_mut().zip(src.chunks_exact(2)) {
            *o = crate::decode::f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
        }
    }
}

impl FloatFormat for BF16 {
    const TYPE: GgmlType = GgmlType::BF16;
    const BYTES: usize = 2;
    fn quantize_row(x: &[f32], out: &mut [u8]) {
        f32_to_bf16(x, out)
    }
    fn dequantize_row(src: &[u8], out: &mut [f32]) {
        bf16_to_f32(src, out)
    }
    #[inline(always)]
    fn decode(src: &[u8], n: usize, out: &mut [f32; CHUNK]) {
        for (o, b) in out[..n].iter_mut().zip(src.chunks_exact(2)) {
            *o = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
        }
    }
}

fn f32_to_bytes(x: &[f32], out: &mut [u8]) {
    for (v, o) in x.iter().zip(out.chunks_exact_mut(4)) {
        o.copy_from_slice(&v.to_le_bytes());
    }
}

fn bytes_to_f32(src: &[u8], out: &mut [f32]) {
    for (s, o) in src.chunks_exact(4).zip(out.iter_mut()) {
        *o = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    }
}

const BUF: usize = 4096;

fn f32_to_f16(x: &[f32], out: &mut [u8]) {
    // half's slice conversion uses F16C when the CPU has it; both it and the scalar path round to
    // nearest even, as ggml does.
    let mut buf = [half::f16::ZERO; BUF];
    for (xc, oc) in x.chunks(BUF).zip(out.chunks_mut(BUF * 2)) {
        let b = &mut buf[..xc.len()];
        b.convert_from_f32_slice(xc);
        for (h, o) in b.iter().zip(oc.chunks_exact_mut(2)) {
            o.copy_from_slice(&h.to_le_bytes());
        }
    }
}

fn f16_to_f32(src: &[u8], out: &mut [f32]) {
    let mut buf = [half::f16::ZERO; BUF];
    for (sc, oc) in src.chunks(BUF * 2).zip(out.chunks_mut(BUF)) {
        let b = &mut buf[..oc.len()];
        for (h, s) in b.iter_mut().zip(sc.chunks_exact(2)) {
            *h = half::f16::from_le_bytes([s[0], s[1]]);
        }
        b.convert_to_f32_slice(oc);
    }
}

/// `ggml_compute_fp32_to_bf16`: NaN is forced quiet, everything else rounds to nearest even.
#[inline]
pub fn bf16_from_f32(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    ((u as u64 + (0x7fff + ((u as u64 >> 16) & 1))) >> 16) as u16
}

#[inline]
pub fn bf16_to_f32_value(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

fn f32_to_bf16(x: &[f32], out: &mut [u8]) {
    for (v, o) in x.iter().zip(out.chunks_exact_mut(2)) {
        o.copy_from_slice(&bf16_from_f32(*v).to_le_bytes());
    }
}

fn bf16_to_f32(src: &[u8], out: &mut [f32]) {
    for (s, o) in src.chunks_exact(2).zip(out.iter_mut()) {
        *o = bf16_to_f32_value(u16::from_le_bytes([s[0], s[1]]));
    }
}
