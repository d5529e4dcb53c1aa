//! AWQ GEMM (AutoAWQ, 4 bits): `qweight [in, out/8]`, eight outputs per word in the order
//! `[0,2,4,6,1,3,5,7]`, `qzeros [groups, out/8]` (the zeros themselves) packed the same way, fp16
//! `scales [groups, out]`. One group size per file, no g_idx.

use quantkit_core::{Error, Result};
use safetensors::Dtype;

use super::{i32_bytes, scales_by_group, Module, Packed, Regrouped};

/// Nibble j of a word holds output `8c + ORDER[j]` (AutoAWQ's `order_map`).
const ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];
/// Output `8c + k` sits in nibble `REVERSE[k]` (AutoAWQ's `AWQ_REVERSE_ORDER`).
const REVERSE: [usize; 8] = [0, 4, 1, 5, 2, 6, 3, 7];

pub(super) fn pack(w: &Regrouped, prefix: &str) -> Vec<Packed> {
    let (rows, cols, ng) = (w.rows, w.cols, w.groups());
    let pack8 = |get: &dyn Fn(usize) -> u32| -> Vec<u32> {
        (0..rows / 8)
            .map(|c| (0..8).fold(0u32, |word, j| word | (get(8 * c + ORDER[j]) << (4 * j))))
            .collect()
    };
    let mut qweight = vec![];
    for i in 0..cols {
        qweight.extend(pack8(&|o| w.codes[o * cols + i] as u32));
    }
    let mut qzeros = vec![];
    for g in 0..ng {
        qzeros.extend(pack8(&|o| w.zeros[o * ng + g] as u32));
    }
    vec![
        Packed::new(format!("{prefix}.qweight"), Dtype::I32, vec![cols, rows / 8], i32_bytes(&qweight)),
        Packed::new(format!("{prefix}.qzeros"), Dtype::I32, vec![ng, rows / 8], i32_bytes(&qzeros)),
        scales_by_group(&w.scales, rows, prefix),
    ]
}

/// `(out, in)` from `qweight`'s 2-D shape.
pub(super) fn shape(bits: u32, qweight: &[usize]) -> (usize, usize) {
    (qweight[1] * 32 / bits as usize, qweight[0])
}

pub(super) fn unpack(bits: u32, t: &Module, rows: usize, cols: usize) -> Result<Vec<f32>> {
    if bits != 4 || rows % 8 != 0 {
        return Err(Error::bad_tensor(t.name("qweight"), format!("AWQ GEMM {bits}-bit {rows}×{cols}")));
    }
    let qw = t.ints("qweight", &[cols, rows / 8])?;
    let (_, _, zs) = t.raw("qzeros")?;
    let ng = zs.first().copied().unwrap_or(0);
    if ng == 0 || cols % ng != 0 {
        return Err(Error::bad_tensor(t.name("qzeros"), format!("{ng} groups for {cols} inputs")));
    }
    let gs = cols / ng;
    let qz = t.ints("qzeros", &[ng, rows / 8])?;
    let sc = t.floats("scales", &[ng, rows])?;
    let get =
        |words: &[u32], base: usize, o: usize| -> u32 { (words[base + o / 8] >> (4 * REVERSE[o % 8])) & 15 };
    let mut out = vec![0f32; rows * cols];
    for o in 0..rows {
        for i in 0..cols {
            let g = i / gs;
            let q = get(&qw, i * rows / 8, o);
            let z = get(&qz, g * rows / 8, o);
            out[o * cols + i] = sc[g * rows + o] * (q as f32 - z as f32);
        }
    }
    Ok(out)
}
