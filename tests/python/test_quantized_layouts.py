"""GPTQ v1/v2, AWQ-GEMM and compressed-tensors checkpoints written by `quantkit quantize`, read back by an
independent numpy unpacker written from the published layouts (scripts/unpack_quantized.py), and, for
compressed-tensors, by the real `compressed-tensors` package (it needs torch, so it runs in a separate
interpreter: QUANTKIT_CT_PYTHON, else the one `scripts/setup-ct.sh` prints; QUANTKIT_CT=0 skips it).

The unpacker itself is checked against straightforward numpy transcriptions of AutoGPTQ's pack loop
(auto_gptq/nn_modules/qlinear/qlinear_cuda.py), AutoAWQ's (awq/modules/linear/gemm.py) and
compressed-tensors' pack_to_int32 (compressors/pack_quantized/helpers.py) on synthetic data."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, SHARED, STORIES, load_safetensors, run

sys.path.insert(0, str(ROOT / "scripts"))
import unpack_quantized as uq  # noqa: E402

CALIB = SHARED / "data" / "tinyshakespeare" / "input.txt"
FORMATS = {"gptq": "gptq", "gptq-v2": "gptq_v2", "awq": "awq", "compressed-tensors": "compressed-tensors"}


# ------------------------------------------------------------------------------------------------
# Reference packers: transcriptions of the published packing code (numpy, uint32 arithmetic).

def autogptq_pack_rows(intweight, bits):
    """AutoGPTQ QuantLinear.pack, qweight loop: intweight [in, out] -> qweight [in // 32 * bits, out]."""
    intweight = intweight.astype(np.uint32)
    qweight = np.zeros((intweight.shape[0] // 32 * bits, intweight.shape[1]), dtype=np.uint32)
    i = row = 0
    while row < qweight.shape[0]:
        if bits in [2, 4, 8]:
            for j in range(i, i + (32 // bits)):
                qweight[row] |= intweight[j] << np.uint32(bits * (j - i))
            i += 32 // bits
            row += 1
        elif bits == 3:
            for j in range(i, i + 10):
                qweight[row] |= intweight[j] << np.uint32(3 * (j - i))
            i += 10
            qweight[row] |= intweight[i] << np.uint32(30)
            row += 1
            qweight[row] |= (intweight[i] >> np.uint32(2)) & np.uint32(1)
            i += 1
            for j in range(i, i + 10):
                qweight[row] |= intweight[j] << np.uint32(3 * (j - i) + 1)
            i += 10
            qweight[row] |= intweight[i] << np.uint32(31)
            row += 1
            qweight[row] |= (intweight[i] >> np.uint32(1)) & np.uint32(0x3)
            i += 1
            for j in range(i, i + 10):
                qweight[row] |= intweight[j] << np.uint32(3 * (j - i) + 2)
            i += 10
            row += 1
    return qweight.view(np.int32)


def autogptq_pack_zeros(zeros, bits):
    """AutoGPTQ's qzeros loop (the same bit layout along the output axis); `zeros` already offset."""
    return np.ascontiguousarray(autogptq_pack_rows(np.ascontiguousarray(zeros.T), bits).T)


def autoawq_pack(intweight, bits=4):
    """AutoAWQ WQLinear_GEMM.from_linear: intweight [rows, cols] -> [rows, cols // 8]. (from_linear
    allocates cols // 32 * bits words, i.e. it needs cols % 32 == 0; the loader's buffer is cols // 8,
    which is what is allocated here so that cols % 8 == 0 is exercised too.)"""
    intweight = intweight.astype(np.uint32)
    pack_num = 32 // bits
    order_map = [0, 2, 4, 6, 1, 3, 5, 7]
    q = np.zeros((intweight.shape[0], intweight.shape[1] // pack_num), dtype=np.uint32)
    for col in range(intweight.shape[1] // pack_num):
        for i in range(pack_num):
            q[:, col] |= intweight[:, col * pack_num + order_map[i]] << np.uint32(i * bits)
    return q.view(np.int32)


def ct_pack_to_int32(signed, bits, packed_dim=1):
    """compressed-tensors 0.20 pack_to_int32: signed int8 values + 2^(bits-1), dense bit stream per row
    (32 elements -> `bits` words, element i at bit i*bits), truncated to ceil(cols*bits/32) words."""
    v = signed.astype(np.int64) + (1 << (bits - 1))
    if packed_dim == 0:
        v = v.T
    rows, cols = v.shape
    out = np.zeros((rows, math.ceil(cols / 32) * bits), dtype=np.uint64)
    for i in range(cols):
        start = i * bits
        w, off = start // 32, start % 32
        out[:, w] |= (v[:, i].astype(np.uint64) << np.uint64(off)) & np.uint64(0xFFFFFFFF)
        if off + bits > 32:
            out[:, w + 1] |= v[:, i].astype(np.uint64) >> np.uint64(32 - off)
    out = out[:, :math.ceil(cols * bits / 32)].astype(np.uint32).view(np.int32)
    return np.ascontiguousarray(out.T if packed_dim == 0 else out)


# ------------------------------------------------------------------------------------------------
# Synthetic quantized linears: integer codes, zeros and f16 scales drawn at random, so the expected
# dense weight is known exactly.

def rand_quant(rng, out_f, in_f, bits, n_groups):
    q = rng.integers(0, 1 << bits, size=(in_f, out_f))
    z = rng.integers(0, 1 << bits, size=(n_groups, out_f))
    s = (rng.random((n_groups, out_f)) * 0.05 + 1e-3).astype(np.float16)
    return q, z, s


def expected(q, z, s, g_idx):
    """w[o, i] = f32(s[g, o]) * (q[i, o] - z[g, o]), g = g_idx[i]."""
    return (s.astype(np.float32)[g_idx] * (q - z[g_idx]).astype(np.float32)).T


def test_safetensors_reader_writer_dtypes(tmp_path):
    rng = np.random.default_rng(0)
    t = {"f32": rng.standard_normal((3, 5)).astype(np.float32), "f16": rng.standard_normal(7).astype(np.float16),
         "i32": rng.integers(-2**31, 2**31, (4, 2), dtype=np.int64).astype(np.int32),
         "i64": np.array([172, 64], np.int64), "i8": np.arange(-128, 128, dtype=np.int8),
         "u8": np.arange(256, dtype=np.uint8), "bf16": rng.standard_normal((2, 3)).astype(np.float32)}
    uq.write_safetensors(tmp_path / "x.safetensors", t, bf16={"bf16"})
    dtypes = {}
    r = uq.read_safetensors(tmp_path / "x.safetensors", dtypes)
    assert dtypes == {"f32": "F32", "f16": "F16", "i32": "I32", "i64": "I64", "i8": "I8", "u8": "U8", "bf16": "BF16"}
    for k, a in t.items():
        want = uq.bf16_to_f32(uq.f32_to_bf16_bits(a)) if k == "bf16" else a
        assert r[k].dtype == want.dtype and np.array_equal(r[k], want), k
    # conftest's independent reader agrees on the float tensors
    uq.write_safetensors(tmp_path / "f.safetensors", {k: t[k] for k in ["f32", "f16", "bf16"]}, bf16={"bf16"})
    ref = load_safetensors(tmp_path / "f.safetensors")
    for k in ["f32", "f16", "bf16"]:
        np.testing.assert_array_equal(ref[k], r[k].astype(np.float32))


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8])
def test_bit_stream_round_trip(bits):
    rng = np.random.default_rng(bits)
    for count in [1, 31, 32, 33, 64, 100, 172]:
        v = rng.integers(0, 1 << bits, size=(3, count))
        words = uq.pack_stream(v, bits)
        assert words.dtype == np.int32 and words.shape == (3, math.ceil(count * bits / 32))
        np.testing.assert_array_equal(uq.unpack_stream(words, bits, count), v)
        np.testing.assert_array_equal(uq.unpack_stream(uq.pack_stream(v.T, bits, axis=0), bits, count, 0), v.T)
        # the same words as compressed-tensors' packer
        np.testing.assert_array_equal(words, ct_pack_to_int32(v - (1 << (bits - 1)), bits))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_stream_equals_autogptq_pack_loop(bits):
    rng = np.random.default_rng(10 + bits)
    v = rng.integers(0, 1 << bits, size=(96, 5))
    ref = autogptq_pack_rows(v, bits)
    np.testing.assert_array_equal(uq.pack_stream(v, bits, axis=0), ref)
    np.testing.assert_array_equal(uq.unpack_stream(ref, bits, 96, axis=0), v)


def write_dir(d, tensors, qcfg, extra=None):
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "quantization_config": qcfg}))
    uq.write_safetensors(d / "model.safetensors", tensors)
    for name, content in (extra or {}).items():
        (d / name).write_text(json.dumps(content))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("v2", [False, True])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_unpack_synthetic(tmp_path, bits, v2, act_order):
    rng = np.random.default_rng([bits, v2, act_order])
    in_f, out_f, gs = 96, 64, 40  # ragged last group: ceil(96 / 40) = 3 groups
    n_groups = math.ceil(in_f / gs)
    q, z, s = rand_quant(rng, out_f, in_f, bits, n_groups)
    if not v2:
        z = np.maximum(z, 1)  # v1 stores zero-1 and cannot hold a zero of 0
    g_idx = np.arange(in_f) // gs
    if act_order:  # GPTQ desc_act: g_idx = (position in the permuted order) // group_size
        g_idx = np.argsort(rng.permutation(in_f)) // gs
    t = {"model.layers.0.mlp.up_proj.qweight": autogptq_pack_rows(q, bits),
         "model.layers.0.mlp.up_proj.qzeros": autogptq_pack_zeros(z if v2 else z - 1, bits),
         "model.layers.0.mlp.up_proj.scales": s,
         "model.layers.0.mlp.up_proj.g_idx": g_idx.astype(np.int32),
         "model.layers.0.mlp.down_proj.weight": rng.standard_normal((8, 8)).astype(np.float16),
         "model.norm.weight": np.ones(8, np.float32)}
    qcfg = {"quant_method": "gptq", "bits": bits, "group_size": gs, "desc_act": act_order, "sym": False,
            "checkpoint_format": "gptq_v2" if v2 else "gptq",
            "dynamic": {r"-:^model\.layers\.0\.mlp\.down_proj$": {}}}
    write_dir(tmp_path, t, qcfg)
    w = uq.unpack_dir(tmp_path)
    np.testing.assert_array_equal(w["model.layers.0.mlp.up_proj.weight"], expected(q, z, s, g_idx))
    assert w["model.layers.0.mlp.down_proj.weight"].dtype == np.float32
    assert set(w) == {"model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.down_proj.weight",
                      "model.norm.weight"}
    assert uq.gptq_skipped(qcfg, "model.layers.0.mlp.down_proj")
    assert not uq.gptq_skipped(qcfg, "model.layers.0.mlp.up_proj")
    assert not uq.gptq_skipped(qcfg, "model.layers.10.mlp.down_proj")


@pytest.mark.parametrize("gs", [32, -1])
def test_awq_unpack_synthetic(tmp_path, gs):
    rng = np.random.default_rng(gs + 100)
    in_f, out_f = 64, 48
    g = in_f if gs == -1 else gs
    q, z, s = rand_quant(rng, out_f, in_f, 4, in_f // g)
    t = {"model.layers.0.self_attn.q_proj.qweight": autoawq_pack(q),
         "model.layers.0.self_attn.q_proj.qzeros": autoawq_pack(z),
         "model.layers.0.self_attn.q_proj.scales": s}
    qcfg = {"quant_method": "awq", "bits": 4, "group_size": gs, "zero_point": True, "version": "gemm",
            "modules_to_not_convert": ["mlp.down_proj"]}
    write_dir(tmp_path, t, qcfg)
    w = uq.unpack_dir(tmp_path)
    np.testing.assert_array_equal(w["model.layers.0.self_attn.q_proj.weight"],
                                  expected(q, z, s, np.arange(in_f) // g))
    assert uq.awq_skipped(qcfg, "model.layers.3.mlp.down_proj") == (True, True)
    assert uq.awq_skipped(qcfg, "model.layers.3.mlp.up_proj") == (False, False)
    # a full name works for transformers but not for AutoAWQ's substring test on in-block names
    assert uq.awq_skipped({"modules_to_not_convert": ["model.layers.3.mlp.down_proj"]},
                          "model.layers.3.mlp.down_proj") == (False, True)


def ct_config(bits, gs, sym, ignore):
    weights = {"num_bits": bits, "type": "int", "symmetric": sym, "dynamic": False,
               "strategy": "group" if gs > 0 else "channel", "group_size": gs if gs > 0 else None}
    return {"config_groups": {"group_0": {"targets": ["Linear"], "weights": weights,
                                          "input_activations": None, "output_activations": None,
                                          "format": "pack-quantized"}},
            "format": "pack-quantized", "global_compression_ratio": None, "ignore": ignore,
            "kv_cache_scheme": None, "quant_method": "compressed-tensors",
            "quantization_status": "compressed", "sparsity_config": {}, "transform_config": {},
            "version": "0.20.0"}


def synthetic_ct(d, rng, bits, gs, sym, scale_dtype=np.float16):
    """stories-shaped CT checkpoint (no binary needed): known codes; returns the exact f32 weights."""
    src = uq.read_safetensors(STORIES / "model.safetensors")
    t, want, ignore = {}, {}, ["lm_head"]
    for name, a in src.items():
        m = name[:-len(".weight")]
        if not name.endswith("_proj.weight") or (gs > 0 and a.shape[1] % gs):
            t[name] = a
            if name.endswith("_proj.weight"):
                ignore.append(m)
            continue
        out_f, in_f = a.shape
        n_groups = in_f // gs if gs > 0 else 1
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        q = rng.integers(lo, hi + 1, size=(out_f, in_f))
        zp = np.zeros((out_f, n_groups), np.int64) if sym else rng.integers(lo, hi + 1, size=(out_f, n_groups))
        s = (rng.random((out_f, n_groups)) * 0.05 + 1e-3).astype(scale_dtype)
        t[m + ".weight_packed"] = ct_pack_to_int32(q, bits)
        t[m + ".weight_scale"] = s
        t[m + ".weight_shape"] = np.array([out_f, in_f], np.int64)
        if not sym:
            t[m + ".weight_zero_point"] = ct_pack_to_int32(zp, bits, packed_dim=0)
        g = np.arange(in_f) // gs if gs > 0 else np.zeros(in_f, np.int64)
        want[name] = s.astype(np.float32)[:, g] * (q - zp[:, g]).astype(np.float32)
    cfg = json.loads((STORIES / "config.json").read_text())
    cfg["quantization_config"] = ct_config(bits, gs, sym, ignore)
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg, indent=2))
    uq.write_safetensors(d / "model.safetensors", t)
    return want


@pytest.mark.parametrize("bits,gs,sym", [(4, 32, True), (4, 32, False), (3, 32, False), (8, -1, False),
                                         (2, 16, True)])
def test_ct_unpack_synthetic(tmp_path, shared_ok, bits, gs, sym):
    want = synthetic_ct(tmp_path, np.random.default_rng(bits * 7 + gs), bits, gs, sym)
    w = uq.unpack_dir(tmp_path)
    for name, a in want.items():
        np.testing.assert_array_equal(w[name], a, err_msg=name)


# ------------------------------------------------------------------------------------------------
# The real compressed-tensors package, in its own interpreter.

CT_SCRIPT = r"""
import json, sys, warnings
warnings.filterwarnings("ignore")
import torch
from safetensors.torch import load_file, save_file
import compressed_tensors, transformers
from compressed_tensors.entrypoints.convert.converters.ct_dequantizer import CompressedTensorsDequantizer

info = {"compressed_tensors": compressed_tensors.__version__, "transformers": transformers.__version__,
        "torch": torch.__version__, "hf_loading_info": {}}
for job in json.loads(sys.argv[1]):
    d, out = job["dir"], job["out"]
    # 1. model-free: the dequantizer of compressed-tensors' convert_checkpoint entry point (parses and
    #    validates quantization_config, decompresses every targeted module, fails on leftover qparams)
    tensors = load_file(f"{d}/model.safetensors")
    dense = CompressedTensorsDequantizer(d, dtype=torch.float32).validate(dict(tensors))
    res = {"ct." + k: v.float().contiguous() for k, v in dense.items()}
    # 2. transformers' loader (CompressedTensorsHfQuantizer, dequantize=True)
    if job["hf"]:
        from transformers import AutoModelForCausalLM, CompressedTensorsConfig
        model, li = AutoModelForCausalLM.from_pretrained(
            d, quantization_config=CompressedTensorsConfig(dequantize=True), dtype=torch.float32,
            output_loading_info=True)
        info["hf_loading_info"][d] = {k: sorted(map(str, v)) for k, v in li.items()}
        for k, v in model.state_dict().items():
            res["hf." + k] = v.detach().float().clone().contiguous()
    save_file(res, out)
print(json.dumps(info))
"""


@pytest.fixture(scope="session")
def ct_python():
    if os.environ.get("QUANTKIT_CT_PYTHON"):
        return os.environ["QUANTKIT_CT_PYTHON"]
    if os.environ.get("QUANTKIT_CT") == "0":
        pytest.skip("compressed-tensors checks disabled (QUANTKIT_CT=0)")
    p = subprocess.run(["bash", str(ROOT / "scripts" / "setup-ct.sh")], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.fail("scripts/setup-ct.sh failed (set QUANTKIT_CT=0 to skip the compressed-tensors "
                    f"checks):\n{p.stderr[-3000:]}")
    return p.stdout.strip().splitlines()[-1]


def ct_decompress(ct_python, jobs, tmp_path):
    """Decompress each (dir, hf) with compressed-tensors (and transformers when hf) in one interpreter
    (importing torch + transformers costs ~9 s). Returns {dir: (ct_weights, hf_weights)}, info."""
    script = tmp_path / "ct_decompress.py"
    script.write_text(CT_SCRIPT)
    spec = [{"dir": str(d), "out": str(tmp_path / f"ct-{i}.safetensors"), "hf": hf}
            for i, (d, hf) in enumerate(jobs)]
    p = subprocess.run([ct_python, str(script), json.dumps(spec)], capture_output=True, text=True)
    if p.returncode != 0:
        raise AssertionError(f"compressed-tensors could not decompress:\n{p.stderr[-4000:]}")
    info = json.loads(p.stdout.strip().splitlines()[-1])
    assert info["compressed_tensors"] == "0.20.0", info
    res = {}
    for job in spec:
        r = load_safetensors(job["out"])
        res[job["dir"]] = ({k[3:]: v for k, v in r.items() if k.startswith("ct.")},
                           {k[3:]: v for k, v in r.items() if k.startswith("hf.")})
    return res, info


def scale_dtype_round(a, st_dtype):
    """compressed-tensors dequantizes in the scale's dtype: (q - zp).to(s.dtype) * s, then casts."""
    if st_dtype == "F16":
        return a.astype(np.float16).astype(np.float32)
    if st_dtype == "BF16":
        return uq.bf16_to_f32(uq.f32_to_bf16_bits(a))
    return a


def assert_ct_matches(ct_python, cases, tmp_path):
    """cases: list of (dir, hf, want) with want = {name: exact f32 weight}."""
    res, info = ct_decompress(ct_python, [(d, hf) for d, hf, _ in cases], tmp_path)
    bad = []
    for d, hf, want in cases:
        dtypes = {}
        uq.read_checkpoint(d, dtypes)
        ct, hfw = res[str(d)]
        for name, a in want.items():
            st = dtypes.get(name[:-len(".weight")] + ".weight_scale", "F32")
            exp = scale_dtype_round(a, st)
            for label, got in [("compressed-tensors", ct), ("transformers", hfw)][:2 if hf else 1]:
                if name not in got:
                    bad.append(f"{d.name}: {label}: {name} missing")
                elif not np.array_equal(got[name], exp):
                    bad.append(f"{d.name}: {label} {name} (scales {st}): "
                               f"max |diff| {np.abs(got[name] - exp).max()}")
        if hf:
            li = info["hf_loading_info"][str(d)]
            if li.get("missing_keys") or li.get("unexpected_keys") or li.get("mismatched_keys"):
                bad.append(f"{d.name}: transformers loading info {li}")
    assert not bad, "\n".join(bad)


def test_ct_package_decompresses_synthetic(tmp_path, shared_ok, ct_python):
    cases = []
    for i, (bits, gs, sym, sdt, hf) in enumerate([(4, 32, True, np.float16, True),
                                                  (4, 32, False, np.float32, True),
                                                  (3, 32, False, np.float16, False),
                                                  (8, -1, True, np.float16, False)]):
        d = tmp_path / f"ct{i}"
        cases.append((d, hf, synthetic_ct(d, np.random.default_rng(i), bits, gs, sym, sdt)))
    assert_ct_matches(ct_python, cases, tmp_path)


# ------------------------------------------------------------------------------------------------
# quantkit quantize → each format → (our unpacker, quantkit export-hf, compressed-tensors)

LINEAR_SUFFIX = "_proj.weight"


def quantize(out, *args):
    fmts = [a for i, a in enumerate(args) if i and args[i - 1] == "--format"]
    method = args[list(args).index("--method") + 1]
    calib = ["--calib", CALIB, "--samples", 8, "--seqlen", 64] if method == "gptq" else []
    p = run("quantize", STORIES, *calib, "--seed", 1, *args, "-o", out, "--json")
    refs = {}
    for f in fmts:
        ref = out.parent / f"{out.name}-ref-{f}"
        run("export-hf", out / f, "-o", ref, "--dtype", "f32")
        refs[f] = load_safetensors(ref / "model.safetensors")
    return p, refs


@pytest.fixture(scope="module")
def original():
    return uq.read_safetensors(STORIES / "model.safetensors")


RUNS = {
    "gptq4-act": ["--method", "gptq", "--bits", 4, "--group", 32, "--act-order", "--static-groups",
                  "--format", "gptq", "--format", "gptq-v2", "--format", "awq", "--format", "compressed-tensors"],
    "gptq3": ["--method", "gptq", "--bits", 3, "--group", 32, "--no-act-order", "--format", "gptq", "--format", "gptq-v2"],
    "gptq4-asym": ["--method", "gptq", "--bits", 4, "--group", 32, "--asym",
                   "--format", "gptq", "--format", "gptq-v2", "--format", "awq", "--format", "compressed-tensors"],
    "rtn4": ["--method", "rtn", "--bits", 4, "--group", 32,
             "--format", "gptq", "--format", "gptq-v2", "--format", "awq", "--format", "compressed-tensors"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, bin_ok, shared_ok):
    cache = {}

    def get(key):
        if key not in cache:
            out = tmp_path_factory.mktemp("q") / key
            cache[key] = (out, *quantize(out, *RUNS[key]))
        return cache[key]
    return get


def check_layout(fmt, d, original):
    """Structure, dtypes and shapes as the real loaders allocate them; skip lists as they match them."""
    cfg = json.loads((d / "config.json").read_text())
    q = cfg["quantization_config"]
    dtypes = {}
    t = uq.read_checkpoint(d, dtypes)
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        assert (d / f).exists(), f"{d}: {f} missing"
    linears = [n[:-len(".weight")] for n in original if n.endswith(LINEAR_SUFFIX)]
    quantized = []
    for m in linears:
        out_f, in_f = original[m + ".weight"].shape
        dense = m + ".weight" in t
        if fmt in ("gptq", "gptq-v2"):
            assert q["quant_method"] == "gptq" and q["checkpoint_format"] == FORMATS[fmt], q
            bits, gs = q["bits"], q["group_size"]
            skipped = uq.gptq_skipped(q, m)
            if not dense:
                # AutoGPTQ/GPTQModel allocate qweight [in // 32 * bits, out], qzeros [.., out // 32 * bits]
                assert in_f % 32 == 0 and out_f % 32 == 0, f"{m} {out_f}x{in_f} cannot load in AutoGPTQ"
                n_groups = math.ceil(in_f / (in_f if gs == -1 else gs))
                assert t[m + ".qweight"].shape == (in_f // 32 * bits, out_f) and dtypes[m + ".qweight"] == "I32"
                assert t[m + ".qzeros"].shape == (n_groups, out_f // 32 * bits) and dtypes[m + ".qzeros"] == "I32"
                assert t[m + ".scales"].shape == (n_groups, out_f) and dtypes[m + ".scales"] == "F16"
                assert t[m + ".g_idx"].shape == (in_f,) and dtypes[m + ".g_idx"] == "I32"
                g_idx = t[m + ".g_idx"].astype(np.int64)
                assert g_idx.min() >= 0 and g_idx.max() < n_groups
                if not q["desc_act"]:  # kernels assume g_idx = i // group_size when desc_act is false
                    assert np.array_equal(g_idx, np.arange(in_f) // (in_f if gs == -1 else gs)), m
        elif fmt == "awq":
            assert q["quant_method"] == "awq" and q["version"] == "gemm" and q["bits"] == 4, q
            autoawq, hf = uq.awq_skipped(q, m)
            assert autoawq == hf, f"{m}: AutoAWQ and transformers disagree on modules_to_not_convert {q}"
            skipped = hf
            if not dense:
                gs = in_f if q["group_size"] == -1 else q["group_size"]
                assert in_f % gs == 0 and out_f % 8 == 0
                assert t[m + ".qweight"].shape == (in_f, out_f // 8) and dtypes[m + ".qweight"] == "I32"
                assert t[m + ".qzeros"].shape == (in_f // gs, out_f // 8) and dtypes[m + ".qzeros"] == "I32"
                assert t[m + ".scales"].shape == (in_f // gs, out_f) and dtypes[m + ".scales"] == "F16"
        else:
            assert q["quant_method"] == "compressed-tensors" and q["format"] == "pack-quantized", q
            assert q["quantization_status"] == "compressed"
            skipped = uq.ct_skipped(q, m)
            if not dense:
                (scheme,) = q["config_groups"].values()
                w = scheme["weights"]
                bits = w["num_bits"]
                assert w.get("actorder") in (None, "weight", "static"), "actorder group was removed in 0.20"
                gs = w.get("group_size") or -1
                n_groups = 1 if gs == -1 else in_f // gs
                assert gs == -1 or in_f % gs == 0, "compressed-tensors rejects a ragged last group"
                assert t[m + ".weight_packed"].shape == (out_f, math.ceil(in_f * bits / 32))
                assert dtypes[m + ".weight_packed"] == "I32" and dtypes[m + ".weight_shape"] == "I64"
                assert list(t[m + ".weight_shape"]) == [out_f, in_f]
                assert t[m + ".weight_scale"].shape == (out_f, n_groups)
                assert m + ".weight_g_idx" not in t, "compressed-tensors 0.20 has no weight_g_idx"
                if w["symmetric"]:
                    assert m + ".weight_zero_point" not in t
                else:
                    assert t[m + ".weight_zero_point"].shape == (math.ceil(out_f * bits / 32), n_groups)
                    assert dtypes[m + ".weight_zero_point"] == "I32"
        assert skipped == dense, f"{fmt}: {m} is {'dense' if dense else 'quantized'} but the config " \
                                 f"{'skips' if skipped else 'does not skip'} it"
        if dense:
            assert dtypes[m + ".weight"] in ("F16", "BF16", "F32")
        else:
            quantized.append(m)
    if fmt == "compressed-tensors":
        assert "lm_head" in q["ignore"] or any(uq.ct_match("lm_head", i) for i in q["ignore"])
    if fmt in ("gptq", "gptq-v2"):
        qc = json.loads((d / "quantize_config.json").read_text())
        for k in ["bits", "group_size", "desc_act", "sym"]:
            assert qc[k] == q[k], (k, qc, q)
        assert qc.get("checkpoint_format", "gptq") == q["checkpoint_format"]
    assert quantized, f"{fmt}: nothing quantized"
    return q, quantized


def assert_same(mine, ref, label):
    bad = []
    for name, a in mine.items():
        assert name in ref, f"{label}: {name} missing from export-hf"
        b = ref[name]
        if a.shape != b.shape or not np.array_equal(a, b):
            d = np.abs(a - b).max() if a.shape == b.shape else f"shape {a.shape} vs {b.shape}"
            bad.append(f"{name}: max |diff| {d}")
    assert not bad, f"{label}: unpacker != export-hf\n" + "\n".join(bad)
    missing = [n for n in ref if n.endswith(LINEAR_SUFFIX) and n not in mine]
    assert not missing, f"{label}: linears missing from the checkpoint: {missing}"


@pytest.mark.parametrize("key", list(RUNS))
def test_quantize_layouts_match_export(runs, original, key):
    out, proc, refs = runs(key)
    try:
        json.loads(proc.stdout)
    except ValueError as e:
        raise AssertionError(f"quantize --json did not print one JSON document: {e}\n{proc.stdout[:2000]}")
    unpacked = {}
    for fmt, ref in refs.items():
        d = out / fmt
        q, quantized = check_layout(fmt, d, original)
        mine = uq.unpack_dir(d)
        assert_same(mine, ref, f"{key}/{fmt}")
        unpacked[fmt] = (mine, quantized)
        if fmt in ("gptq", "gptq-v2"):
            assert q["bits"] == RUNS[key][RUNS[key].index("--bits") + 1]
            assert q["sym"] == ("--asym" not in RUNS[key])
            # act-order is GPTQ's default (--no-act-order turns it off); RTN never reorders.
            assert q["desc_act"] == (RUNS[key][1] == "gptq" and "--no-act-order" not in RUNS[key])
        # sanity: the quantized weights are near the originals (relative RMS error)
        limit = 0.35 if RUNS[key][RUNS[key].index("--bits") + 1] == 3 else 0.2
        for m in quantized:
            w, o = mine[m + ".weight"], original[m + ".weight"]
            rel = np.sqrt(np.mean((w - o) ** 2) / np.mean(o ** 2))
            assert rel < limit, f"{key}/{fmt} {m}: relative RMS error {rel:.3f}"
    # One quantization, several encodings: every module quantized in two formats has the same weights,
    # except that a GPTQ module with a permuted g_idx (act-order without static groups) cannot be the
    # same quantization as AWQ's / compressed-tensors' contiguous groups.
    fmts = list(unpacked)
    for i, a in enumerate(fmts):
        for b in fmts[i + 1:]:
            common = set(unpacked[a][1]) & set(unpacked[b][1])
            if a.startswith("gptq") != b.startswith("gptq"):
                g = a if a.startswith("gptq") else b
                t = uq.read_checkpoint(out / g)
                common = {m for m in common
                          if np.all(np.diff(t[m + ".g_idx"].astype(np.int64)) >= 0)}
            for m in sorted(common):
                wa, wb = unpacked[a][0][m + ".weight"], unpacked[b][0][m + ".weight"]
                assert np.array_equal(wa, wb), \
                    f"{key}: {m} differs between {a} and {b} (max |diff| {np.abs(wa - wb).max()})"


def test_compressed_tensors_package_decompresses_ours(runs, original, ct_python, tmp_path):
    cases = []
    for key in ["gptq4-act", "gptq4-asym", "rtn4"]:
        out, _, refs = runs(key)
        d = out / "compressed-tensors"
        _, quantized = check_layout("compressed-tensors", d, original)
        ref = refs["compressed-tensors"]
        cases.append((d, True, {m + ".weight": ref[m + ".weight"] for m in quantized}))
    assert_ct_matches(ct_python, cases, tmp_path)
