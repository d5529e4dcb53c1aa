//! GPTQ v1 (AutoGPTQ) and v2 (GPTQModel): `qweight` int32 `[in·bits/32, out]` (per output column a
//! bit stream along the input), `qzeros` int32 `[groups, out·bits/32]` (per group a bit stream along
//! the output; v1 stores `zero − 1`, v2 the zero), fp16 `scales [groups, out]`, `g_idx [in]`.
//! Ragged last groups are native (`groups = ceil(in/G)`).

use quantkit_core::{Error, Result};
use safetensors::Dtype;

use super::{bitstream, field, i32_bytes, scales_by_group, IntWeights, Module, Packed};

pub(super) fn pack(v1: bool, bits: u32, w: &IntWeights, prefix: &str) -> Vec<Packed> {
    let (rows, cols, ng) = (w.rows, w.cols, w.groups());
    let nw = cols * bits as usize / 32;
    let mut qweight = vec![0u32; nw * rows];
    for o in 0..rows {
        let col = bitstream((0..cols).map(|i| w.codes[o * cols + i] as u32), cols, bits);
        for (k, v) in col.iter().enumerate() {
            qweight[k * rows + o] = *v;
        }
    }
    let mask = (1u32 << bits) - 1;
    let zero = |z: u8| if v1 { (z as u32).wrapping_sub(1) & mask } else { z as u32 };
    let mut qzeros = vec![];
    for g in 0..ng {
        qzeros.extend(bitstream((0..rows).map(|o| zero(w.zeros[o * ng + g])), rows, bits));
    }
    vec![
        Packed::new(format!("{prefix}.qweight"), Dtype::I32, vec![nw, rows], i32_bytes(&qweight)),
        Packed::new(
            format!("{prefix}.qzeros"),
            Dtype::I32,
            vec![ng, rows * bits as usize / 32],
            i32_bytes(&qzeros),
        ),
        scales_by_group(w.scales, rows, prefix),
        Packed::new(format!("{prefix}.g_idx"), Dtype::I32, vec![cols], i32_bytes(w.g_idx)),
    ]
}

/// `(out, in)` from `qweight`'s 2-D shape.
pub(super) fn shape(bits: u32, qweight: &[usize]) -> (usize, usize) {
    (qweight[1], qweight[0] * 32 / bits as usize)
}

/// `group`: the config's, used when the module has no `g_idx`.
pub(super) fn unpack(
    v1: bool,
    bits: u32,
    group: Option<usize>,
    t: &Module,
    rows: usize,
    cols: usize,
) -> Result<Vec<f32>> {
    let b = bits as usize;
    if cols * b % 32 != 0 || rows * b % 32 != 0 {
        return Err(Error::bad_tensor(
            t.name("qweight"),
            format!("{rows}×{cols} cannot be packed at {bits} bits"),
        ));
    }
    let qw = t.ints("qweight", &[cols * b / 32, rows])?;
    let g_idx: Vec<usize> = match t.raw("g_idx") {
        Ok(_) => t.ints("g_idx", &[cols])?.into_iter().map(|g| g as usize).collect(),
        Err(_) => (0..cols).map(|i| i / group.unwrap_or(cols)).collect(),
    };
    let ng = g_idx.iter().max().map(|g| g + 1).unwrap_or(1);
    let (_, _, zs) = t.raw("qzeros")?;
    if zs.first().copied().unwrap_or(0) < ng {
        return Err(Error::bad_tensor(t.name("g_idx"), format!("refers to group {} of {:?}", ng - 1, zs)));
    }
    let ng = zs[0];
    let qz = t.ints("qzeros", &[ng, rows * b / 32])?;
    let sc = t.floats("scales", &[ng, rows])?;
    let zw = rows * b / 32;
    let mut out = vec![0f32; rows * cols];
    for o in 0..rows {
        for i in 0..cols {
            let g = g_idx[i];
            let q = field(|k| qw[k * rows + o], i, bits);
            let z = field(|k| qz[g * zw + k], o, bits) + v1 as u32;
            out[o * cols + i] = sc[g * rows + o] * (q as f32 - z as f32);
        }
    }
    Ok(out)
}
