//! Plain float storage: F32, F16 (IEEE half, round to nearest even) and BF16 (ggml's rounding).

use crate::Codec;
use half::slice::HalfFloatSliceExt;
use quantkit_core::GgmlType;

pub const F32: Codec = Codec {
    ty: GgmlType::F32,
    quantize_row: f32_to_bytes,
    dequantize_row: bytes_to_f32,
    quantize_row_weighted: None,
};
pub const F16: Codec = Codec {
    ty: GgmlType::F16,
    quantize_row: f32_to_f16,
    dequantize_row: f16_to_f32,
    quantize_row_weighted: None,
};
pub const BF16: Codec = Codec {
    ty: GgmlType::BF16,
    quantize_row: f32_to_bf16,
    dequantize_row: bf16_to_f32,
    quantize_row_weighted: None,
};

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

const CHUNK: usize = 4096;

fn f32_to_f16(x: &[f32], out: &mut [u8]) {
    // half's slice conversion uses F16C when the CPU has it; both it and the scalar path round to
    // nearest even, as ggml does.
    let mut buf = [half::f16::ZERO; CHUNK];
    for (xc, oc) in x.chunks(CHUNK).zip(out.chunks_mut(CHUNK * 2)) {
        let b = &mut buf[..xc.len()];
        b.convert_from_f32_slice(xc);
        for (h, o) in b.iter().zip(oc.chunks_exact_mut(2)) {
            o.copy_from_slice(&h.to_le_bytes());
        }
    }
}

fn f16_to_f32(src: &[u8], out: &mut [f32]) {
    let mut buf = [half::f16::ZERO; CHUNK];
    for (sc, oc) in src.chunks(CHUNK * 2).zip(out.chunks_mut(CHUNK)) {
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
