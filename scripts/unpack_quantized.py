#!/usr/bin/env python3
"""An independent reference unpacker for GPTQ (v1/v2), AWQ-GEMM and compressed-tensors pack-quantized
safetensors checkpoints, written from the published layouts (see docs/quantized-layouts.md) with numpy
only: no torch, no quantkit code.

    python scripts/unpack_quantized.py DIR -o OUT.safetensors      # dense f32 weights, HF names
    from unpack_quantized import unpack_dir; w = unpack_dir(DIR)    # dict[str, np.ndarray]

For every quantized linear `<m>` it returns `<m>.weight` as float32 [out, in]; every other tensor is passed
through (floating tensors as float32). Dequantization is done in float32: f32(scale) * (q - zero), which is
exact for f16/bf16 scales and bits <= 8 (11 + 9 significant bits < 24).
"""
import argparse
import json
import math
import pathlib
import re
import sys

import numpy as np

# ------------------------------------------------------------------------------------------------
# safetensors (https://github.com/huggingface/safetensors#format): u64 LE header size, JSON header,
# then the raw little-endian tensor bytes at data_offsets relative to the end of the header.

ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
             "I16": np.int16, "I8": np.int8, "U8": np.uint8, "U16": np.uint16, "U32": np.uint32,
             "U64": np.uint64, "BOOL": np.bool_}
NP_TO_ST = {np.dtype(v).newbyteorder("<"): k for k, v in ST_DTYPES.items()}


def bf16_to_f32(raw_u16):
    return (raw_u16.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_bits(a):
    """Round-to-nearest-even f32 -> bf16 bit patterns (NaN kept quiet)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(a), np.uint16(0x7FC0), r)


def read_header(path):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


def read_safetensors(path, dtypes=None):
    """All tensors of one file as numpy arrays in their stored dtype, except BF16 which is widened to
    float32 (exactly). If `dtypes` is a dict it receives the stored dtype string of each tensor."""
    header, base = read_header(path)
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        buf = raw[base + b:base + e]
        dt = info["dtype"]
        if dtypes is not None:
            dtypes[name] = dt
        if dt == "BF16":
            a = bf16_to_f32(buf.view("<u2"))
        elif dt in ST_DTYPES:
            a = np.array(buf.view(np.dtype(ST_DTYPES[dt]).newbyteorder("<")))
        else:
            raise ValueError(f"{path}: {name}: unsupported dtype {dt}")
        out[name] = a.reshape(info["shape"])
    return out


def read_checkpoint(d, dtypes=None):
    """model.safetensors, or the shards named by model.safetensors.index.json."""
    d = pathlib.Path(d)
    index = d / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    out = {}
    for f in files:
        out.update(read_safetensors(d / f, dtypes))
    return out


def write_safetensors(path, tensors, metadata=None, bf16=()):
    """Write tensors in their numpy dtype (names in `bf16` are stored as BF16 from float32)."""
    header, offset, blobs = {}, 0, []
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name, a in tensors.items():
        a = np.asarray(a)
        if name in bf16:
            b, dt = f32_to_bf16_bits(a).astype("<u2").tobytes(), "BF16"
        else:
            le = a.dtype.newbyteorder("<")
            dt = NP_TO_ST.get(le)
            if dt is None:
                raise ValueError(f"{name}: unsupported numpy dtype {a.dtype}")
            b = np.ascontiguousarray(a, dtype=le).tobytes()
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for b in blobs:
            f.write(b)


# ------------------------------------------------------------------------------------------------
# Bit streams. All three formats pack unsigned b-bit fields into int32 words as one little-endian bit
# stream: field k occupies stream bits [k*b, (k+1)*b), stream bit j is bit (j % 32) of word j // 32,
# bit 0 being the least significant. For b in {2, 4, 8} no field straddles a word; for 3 (and 5, 6, 7)
# fields straddle (this is exactly AutoGPTQ's 10+1+10+1+10 3-bit packing and compressed-tensors'
# "dense" packing).

def unpack_stream(words, bits, count, axis=-1):
    """Fields 0..count-1 of the bit stream formed by `words` (int32/uint32) along `axis`."""
    w = np.moveaxis(np.asarray(words), axis, -1)
    w = np.ascontiguousarray(w).astype("<u4", copy=False)
    if count * bits > w.shape[-1] * 32:
        raise ValueError(f"{w.shape[-1]} words hold fewer than {count} fields of {bits} bits")
    stream = np.unpackbits(w.view(np.uint8), axis=-1, bitorder="little")
    fields = stream[..., :count * bits].reshape(*w.shape[:-1], count, bits).astype(np.uint32)
    vals = (fields << np.arange(bits, dtype=np.uint32)).sum(axis=-1, dtype=np.uint32)
    return np.moveaxis(vals, -1, axis)


def pack_stream(values, bits, axis=-1, n_words=None):
    """Inverse of unpack_stream: int32 words (zero padded to n_words, default ceil(count*bits/32))."""
    v = np.moveaxis(np.asarray(values), axis, -1).astype(np.int64)
    if v.size and (v.min() < 0 or v.max() >= 1 << bits):
        raise ValueError(f"values out of range for {bits} bits")
    count = v.shape[-1]
    n_words = math.ceil(count * bits / 32) if n_words is None else n_words
    bitsarr = ((v[..., None] >> np.arange(bits)) & 1).astype(np.uint8).reshape(*v.shape[:-1], count * bits)
    pad = n_words * 32 - count * bits
    if pad < 0:
        raise ValueError("n_words too small")
    bitsarr = np.concatenate([bitsarr, np.zeros((*v.shape[:-1], pad), np.uint8)], axis=-1)
    words = np.packbits(bitsarr, axis=-1, bitorder="little").view("<u4").view(np.int32)
    return np.moveaxis(words, -1, axis)


# ------------------------------------------------------------------------------------------------
# GPTQ (AutoGPTQ `gptq` = v1, GPTQModel `gptq_v2`):
#   qweight int32 [in*bits/32, out]   stream along axis 0 (input), column o holds q[., o]
#   qzeros  int32 [n_groups, out*bits/32]   stream along axis 1 (output); v1 stores zero-1, v2 the zero
#   scales  f16   [n_groups, out]; g_idx int32 [in]; n_groups = ceil(in / group_size)
#   w[o, i] = scales[g, o] * (q[i, o] - zero[g, o]),  g = g_idx[i]

def dequant_gptq(qweight, qzeros, scales, g_idx, bits, group_size, v1):
    in_f = qweight.shape[0] * 32 // bits
    out_f = qweight.shape[1]
    if qweight.shape[0] * 32 % bits:
        raise ValueError("qweight rows are not a whole number of fields")
    gs = in_f if group_size in (-1, None) else group_size
    n_groups = math.ceil(in_f / gs)
    if scales.shape != (n_groups, out_f):
        raise ValueError(f"scales {scales.shape} != {(n_groups, out_f)}")
    if qzeros.shape != (n_groups, out_f * bits // 32) or out_f * bits % 32:
        raise ValueError(f"qzeros {qzeros.shape} != {(n_groups, out_f * bits / 32)}")
    q = unpack_stream(qweight, bits, in_f, axis=0).astype(np.int64)  # [in, out]
    z = unpack_stream(qzeros, bits, out_f, axis=1).astype(np.int64)  # [n_groups, out]
    if v1:
        z = z + 1  # AutoGPTQ: zeros = (field & maxq) + 1
    if g_idx is None:
        g_idx = np.arange(in_f) // gs
    g_idx = np.asarray(g_idx).astype(np.int64).reshape(-1)
    if g_idx.shape != (in_f,) or g_idx.min() < 0 or g_idx.max() >= n_groups:
        raise ValueError("bad g_idx")
    s = scales.astype(np.float32)
    w = s[g_idx] * (q - z[g_idx]).astype(np.float32)  # [in, out]
    return np.ascontiguousarray(w.T)


# ------------------------------------------------------------------------------------------------
# AWQ GEMM (AutoAWQ `version: gemm`, 4 bit):
#   qweight int32 [in, out/8]: nibble j (bits 4j..4j+3) of word [i, c] holds q[i, 8c + AWQ_ORDER[j]]
#   qzeros  int32 [in/G, out/8]: same packing, true zeros; scales f16 [in/G, out]
#   w[o, i] = scales[i // G, o] * (q[i, o] - z[i // G, o])

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def awq_unpack(packed, bits=4):
    """[rows, cols/8] words -> [rows, cols] values in natural column order."""
    n = 32 // bits
    raw = unpack_stream(packed, bits, packed.shape[1] * n, axis=1)  # packed position p = n*c + j
    dest = (np.arange(raw.shape[1]) // n) * n + np.array(AWQ_ORDER)[np.arange(raw.shape[1]) % n]
    out = np.empty_like(raw)
    out[:, dest] = raw
    return out


def dequant_awq(qweight, qzeros, scales, bits, group_size):
    if bits != 4:
        raise ValueError("AWQ GEMM is 4-bit only")
    in_f, out_f = qweight.shape[0], qweight.shape[1] * 32 // bits
    gs = in_f if group_size in (-1, None) else group_size
    if in_f % gs:
        raise ValueError(f"AWQ needs in_features % group_size == 0 ({in_f} % {gs})")
    n_groups = in_f // gs
    if scales.shape != (n_groups, out_f) or qzeros.shape != (n_groups, out_f * bits // 32):
        raise ValueError(f"bad AWQ shapes: scales {scales.shape} qzeros {qzeros.shape}")
    q = awq_unpack(qweight, bits).astype(np.int64)
    z = awq_unpack(qzeros, bits).astype(np.int64)
    g = np.arange(in_f) // gs
    w = scales.astype(np.float32)[g] * (q - z[g]).astype(np.float32)
    return np.ascontiguousarray(w.T)


# ------------------------------------------------------------------------------------------------
# compressed-tensors `pack-quantized` (0.20.0, compressors/pack_quantized):
#   weight_packed int32 [out, ceil(in*bits/32)]: each row a bit stream of (signed q + 2^(bits-1))
#   weight_scale [out, n_groups] (any float dtype), weight_shape int64 [2] = [out, in]
#   weight_zero_point int32 [ceil(out*bits/32), n_groups] (asymmetric only): stream along axis 0 of
#     (signed zp + 2^(bits-1)); weight_g_idx only in compressed-tensors < 0.20 (actorder "group")
#   w[o, i] = scale[o, g] * (q[o, i] - zp[o, g]),  g = i // group_size (or g_idx[i])

def ct_match(name, target):
    """compressed_tensors.utils.match.match_name: "re:" prefix -> re.match, else exact."""
    if target.startswith("re:"):
        return re.match(target[3:], name) is not None
    return target == name


def dequant_ct(t, args, return_int=False):
    bits = int(args.get("num_bits", 8))
    if args.get("type", "int") != "int":
        raise ValueError("only int pack-quantized is supported")
    out_f, in_f = (int(x) for x in np.asarray(t["weight_shape"]).reshape(-1))
    off = 1 << (bits - 1)
    packed = t["weight_packed"]
    if packed.shape != (out_f, math.ceil(in_f * bits / 32)):
        raise ValueError(f"weight_packed {packed.shape} != {(out_f, math.ceil(in_f * bits / 32))}")
    q = unpack_stream(packed, bits, in_f, axis=1).astype(np.int64) - off  # [out, in]
    scale = t["weight_scale"].astype(np.float32)
    if scale.ndim == 1:
        scale = scale.reshape(-1, 1)
    strategy = args.get("strategy") or ("group" if (args.get("group_size") or 0) > 0 else
                                        "channel" if args.get("group_size") == -1 else "tensor")
    if strategy == "group":
        gs = int(args["group_size"])
        if in_f % gs:
            # compressed-tensors raises here too (_process_group: "tensor column shape must be divisble")
            raise ValueError(f"ragged group: in_features {in_f} % group_size {gs} != 0")
        n_groups = in_f // gs
        g = np.asarray(t["weight_g_idx"]).astype(np.int64) if "weight_g_idx" in t else np.arange(in_f) // gs
    elif strategy == "channel":
        n_groups, g = 1, np.zeros(in_f, np.int64)
    elif strategy == "tensor":
        n_groups, g = 1, np.zeros(in_f, np.int64)
        scale = scale.reshape(1, 1) * np.ones((out_f, 1), np.float32)
    else:
        raise ValueError(f"unsupported strategy {strategy}")
    if scale.shape != (out_f, n_groups):
        raise ValueError(f"weight_scale {scale.shape} != {(out_f, n_groups)}")
    if not args.get("symmetric", True):
        zp_p = t["weight_zero_point"]
        if strategy == "tensor":
            zp = np.asarray(zp_p).astype(np.int64).reshape(1, 1) * np.ones((out_f, 1), np.int64)
        else:
            if zp_p.shape != (math.ceil(out_f * bits / 32), n_groups):
                raise ValueError(f"weight_zero_point {zp_p.shape}")
            zp = unpack_stream(zp_p, bits, out_f, axis=0).astype(np.int64) - off  # [out, n_groups]
    else:
        zp = np.zeros((out_f, n_groups), np.int64)
    if return_int:
        return q, zp, scale, g
    return scale[:, g] * (q - zp[:, g]).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Skipped-module conventions of the real loaders (used by the tests to check the configs).

def gptq_skipped(qcfg, module):
    """GPTQModel dynamic_get / vLLM get_dynamic_override: "-:<regex>" re.match-es -> not quantized."""
    for pattern in (qcfg.get("dynamic") or {}):
        if pattern.startswith("-:") and re.match(pattern[2:], module):
            return True
    return False


def awq_skipped(qcfg, module, block_relative=None):
    """AutoAWQ: any(key in relative_name); transformers: should_convert_module on the full name.
    Returns (autoawq, transformers)."""
    keys = qcfg.get("modules_to_not_convert") or []
    rel = block_relative if block_relative is not None else re.sub(r"^.*?\.layers\.\d+\.", "", module)
    autoawq = any(k in rel for k in keys)
    boundary = r"(?:(?<=\.)|(?=\.|$))"
    hf = any(re.match(rf"(?:{k}){boundary}", module) or module.endswith(k) for k in keys)
    return autoawq, hf


def ct_skipped(qcfg, module):
    return any(ct_match(module, ign) for ign in (qcfg.get("ignore") or []))


# ------------------------------------------------------------------------------------------------

def quant_format(cfg):
    q = cfg.get("quantization_config")
    if not q:
        return None, {}
    method = q.get("quant_method")
    if method == "gptq":
        fmt = (q.get("checkpoint_format") or q.get("format") or "gptq").lower()
        return ("gptq_v2" if fmt == "gptq_v2" else "gptq"), q
    if method == "awq":
        return "awq", q
    if method == "compressed-tensors":
        return "compressed-tensors", q
    raise ValueError(f"unsupported quant_method {method}")


def unpack_tensors(tensors, cfg):
    """Dense tensors from a checkpoint's tensors and its config.json dict."""
    fmt, q = quant_format(cfg)
    out, used = {}, set()
    if fmt in ("gptq", "gptq_v2"):
        bits, gs = int(q["bits"]), int(q.get("group_size", -1))
        for name in tensors:
            if name.endswith(".qweight"):
                m = name[:-len(".qweight")]
                names = [f"{m}.{s}" for s in ("qweight", "qzeros", "scales")]
                g = tensors.get(f"{m}.g_idx")
                out[f"{m}.weight"] = dequant_gptq(*(tensors[n] for n in names), g, bits, gs, fmt == "gptq")
                used.update(names + [f"{m}.g_idx"])
    elif fmt == "awq":
        if str(q.get("version", "gemm")).lower() != "gemm":
            raise ValueError("only AWQ version gemm is supported")
        bits, gs = int(q.get("bits", q.get("w_bit", 4))), int(q.get("group_size", q.get("q_group_size", 128)))
        for name in tensors:
            if name.endswith(".qweight"):
                m = name[:-len(".qweight")]
                names = [f"{m}.{s}" for s in ("qweight", "qzeros", "scales")]
                out[f"{m}.weight"] = dequant_awq(*(tensors[n] for n in names), bits, gs)
                used.update(names)
    elif fmt == "compressed-tensors":
        if q.get("format") not in ("pack-quantized", "mixed-precision", None):
            raise ValueError(f"unsupported compressed-tensors format {q.get('format')}")
        groups = q["config_groups"]
        for name in tensors:
            if not name.endswith(".weight_packed"):
                continue
            m = name[:-len(".weight_packed")]
            if ct_skipped(q, m):
                raise ValueError(f"{m} is in `ignore` but has weight_packed")
            scheme = next((s for s in groups.values()
                           if any(tg == "Linear" or ct_match(m, tg) for tg in s.get("targets", []))), None)
            if scheme is None:
                raise ValueError(f"{m}: no config group targets it")
            if (scheme.get("format") or q.get("format")) != "pack-quantized":
                raise ValueError(f"{m}: format {scheme.get('format')} is not pack-quantized")
            parts = {s: tensors[f"{m}.{s}"] for s in
                     ("weight_packed", "weight_scale", "weight_shape", "weight_zero_point", "weight_g_idx")
                     if f"{m}.{s}" in tensors}
            out[f"{m}.weight"] = dequant_ct(parts, scheme["weights"])
            used.update(f"{m}.{s}" for s in parts)
    elif fmt is not None:
        raise AssertionError(fmt)
    for name, a in tensors.items():
        if name in used:
            continue
        if name.rsplit(".", 1)[-1] in {"qweight", "qzeros", "scales", "g_idx", "weight_packed",
                                       "weight_scale", "weight_shape", "weight_zero_point", "weight_g_idx"}:
            raise ValueError(f"orphan quantization tensor {name}")
        if name in out:
            raise ValueError(f"{name} present both dense and quantized")
        out[name] = a.astype(np.float32) if np.issubdtype(a.dtype, np.floating) else a
    return out


def unpack_dir(d):
    d = pathlib.Path(d)
    cfg = json.loads((d / "config.json").read_text())
    return unpack_tensors(read_checkpoint(d), cfg)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=pathlib.Path)
    ap.add_argument("-o", "--output", type=pathlib.Path, required=True)
    a = ap.parse_args(argv)
    dense = unpack_dir(a.dir)
    write_safetensors(a.output, dense)
    print(f"{len(dense)} tensors -> {a.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
