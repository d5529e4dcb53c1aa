//! compressed-tensors `pack-quantized`: `weight_packed [out, ceil(in·bits/32)]` (per output row a bit
//! stream along the input, value = signed + 2^(bits−1)), `weight_scale [out, groups]` (stored f32 so
//! the package's dequantization, done in the scale dtype, is exact), `weight_shape` (I64 `[out, in]`),
//! and for asymmetric grids `weight_zero_point [ceil(out·bits/32), groups]` (per group a bit stream
//! along the output). One group size per file, no g_idx.

use quantkit_core::{Error, Result};
use safetensors::Dtype;

use super::{bitstream, f32_bytes, field, i32_bytes, Module, Packed, Regrouped};

pub(super) fn pack(bits: u32, sym: bool, w: &Regrouped, prefix: &str) -> Vec<Packed> {
    let (rows, cols, ng) = (w.rows, w.cols, w.groups());
    let nw = (cols * bits as usize).div_ceil(32);
    let mut packed = vec![];
    for o in 0..rows {
        packed.extend(bitstream((0..cols).map(|i| w.codes[o * cols + i] as u32), cols, bits));
    }
    let mut v = vec![
        Packed::new(format!("{prefix}.weight_packed"), Dtype::I32, vec![rows, nw], i32_bytes(&packed)),
        Packed::new(
            format!("{prefix}.weight_scale"),
            Dtype::F32,
            vec![rows, ng],
            f32_bytes(w.scales.iter().copied()),
        ),
        Packed::new(
            format!("{prefix}.weight_shape"),
            Dtype::I64,
            vec![2],
            [rows as i64, cols as i64].iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
    ];
    if !sym {
        // [ceil(out·bits/32), groups]: per group a bit stream along the output.
        let nz = (rows * bits as usize).div_ceil(32);
        let mut zp = vec![0u32; nz * ng];
        for g in 0..ng {
            let col = bitstream((0..rows).map(|o| w.zeros[o * ng + g] as u32), rows, bits);
            for (k, x) in col.iter().enumerate() {
                zp[k * ng + g] = *x;
            }
        }
        v.push(Packed::new(format!("{prefix}.weight_zero_point"), Dtype::I32, vec![nz, ng], i32_bytes(&zp)));
    }
    v
}

/// `(out, in)` from `weight_shape`, checked against `weight_packed`'s 2-D shape.
pub(super) fn shape(t: &Module, packed: &[usize]) -> Result<(usize, usize)> {
    let err = |msg: String| Error::bad_tensor(t.name("weight_packed"), msg);
    let (b, dt, s) = t.raw("weight_shape")?;
    if dt != "I64" || s != [2] {
        return Err(err(format!("weight_shape is {dt} {s:?}, expected I64 [2]")));
    }
    let v: Vec<i64> = b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
    if v[0] <= 0 || v[1] <= 0 || v[0] as usize != packed[0] {
        return Err(err(format!("weight_shape {v:?} does not match weight_packed {packed:?}")));
    }
    Ok((v[0] as usize, v[1] as usize))
}

pub(super) fn unpack(
    bits: u32,
    sym: bool,
    group: Option<usize>,
    t: &Module,
    rows: usize,
    cols: usize,
) -> Result<Vec<f32>> {
    let b = bits as usize;
    let nw = (cols * b).div_ceil(32);
    let gs = group.unwrap_or(cols);
    if cols % gs != 0 {
        return Err(Error::bad_tensor(
            t.name("weight_packed"),
            format!("{cols} inputs are not whole groups of {gs}"),
        ));
    }
    let ng = cols / gs;
    let qw = t.ints("weight_packed", &[rows, nw])?;
    let sc = t.floats("weight_scale", &[rows, ng])?;
    let zp: Option<Vec<u32>> =
        if sym { None } else { Some(t.ints("weight_zero_point", &[(rows * b).div_ceil(32), ng])?) };
    let mid = 1u32 << (bits - 1);
    let mut out = vec![0f32; rows * cols];
    for o in 0..rows {
        for i in 0..cols {
            let g = i / gs;
            let q = field(|k| qw[o * nw + k], i, bits);
            let z = match &zp {
                Some(z) => field(|k| z[k * ng + g], o, bits),
                None => mid,
            };
            out[o * cols + i] = sc[o * ng + g] * (q as f32 - z as f32);
        }
    }
    Ok(out)
}
