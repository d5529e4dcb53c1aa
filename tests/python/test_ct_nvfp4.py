"""compressed-tensors NVFP4 checkpoints written by `quantkit quantize -f ct-nvfp4` (docs/quantized-layouts.md,
"NVFP4"), checked by the real compressed-tensors 0.20.0 and transformers (in the interpreter of
scripts/setup-ct.sh; QUANTKIT_CT=0 skips, see test_quantized_layouts.py):

* the config parses as compressed-tensors' `QuantizationConfig`, its weights are the `NVFP4A16` preset's
  (FP4, tensor_group, groups of 16, E4M3 scales), no activation scheme, and `infer_module_format` picks
  `nvfp4-pack-quantized` for it;
* dtypes and shapes (`weight_packed` U8 `[out, in/2]`, `weight_scale` F8_E4M3 `[out, in/16]`,
  `weight_global_scale` F32 `[1]`); `down_proj` (in = 172, not whole groups of 16) is ignored;
* our scales are llm-compressor's: `generate_gparam` on each fused group (q/k/v, gate/up share the smallest
  global scale, as `update_fused_layer_weight_global_scales` does) and `calculate_qparams` on each group of 16;
* the package's own `quantize` + `pack_fp4_to_uint8` of the ORIGINAL weights with our scales gives our
  `weight_packed` bytes, bit for bit (the sign of −0 included);
* its `dequantize` in f32 gives exactly the weights `quantkit export-hf` reads; its model-free decompressor
  (`CompressedTensorsDequantizer`, which unpacks to bfloat16) gives exactly those weights rounded to bfloat16;
* transformers (`CompressedTensorsConfig(dequantize=True)`, CPU) loads the folder with no missing or
  unexpected keys and its weights equal the decompressor's; its log-probabilities on the same tokens are
  close to our engine's (our engine runs the f32 weights, transformers the bfloat16-rounded ones: the
  tolerance is measured, see the test)."""
import json
import subprocess

import numpy as np
import pytest

from conftest import ROOT, STORIES, load_safetensors, run
from test_ct8 import read_full_base
from test_quantized_layouts import ct_python  # noqa: F401  (the fixture)

CTX = 64

SCRIPT = r"""
import json, sys, warnings
warnings.filterwarnings("ignore")
import torch
from safetensors.torch import load_file, save_file
import compressed_tensors
from compressed_tensors.quantization import QuantizationConfig, preset_name_to_scheme
from compressed_tensors.quantization.lifecycle.forward import quantize, dequantize
from compressed_tensors.quantization.utils.helpers import generate_gparam, calculate_qparams
from compressed_tensors.compressors.format import infer_module_format
from compressed_tensors.compressors.nvfp4.helpers import pack_fp4_to_uint8, unpack_fp4_from_uint8
from compressed_tensors.entrypoints.convert.converters.ct_dequantizer import CompressedTensorsDequantizer

spec = json.loads(sys.argv[1])
orig = load_file(spec["original"])
d, out = spec["dir"], spec["out"]
r = {"version": compressed_tensors.__version__, "problems": []}
cfg = json.load(open(f"{d}/config.json"))["quantization_config"]
qc = QuantizationConfig.model_validate(cfg)  # forbids unknown keys
(scheme,) = qc.config_groups.values()
preset = preset_name_to_scheme("NVFP4A16", ["Linear"])
r["format"] = cfg["format"]
r["inferred_format"] = infer_module_format(torch.nn.Linear, scheme).value
w, pw = scheme.weights, preset.weights
key = lambda a: (a.num_bits, a.type, a.symmetric, a.strategy, a.group_size, a.dynamic, a.scale_dtype)
r["weights_match_preset"] = key(w) == key(pw)
r["no_activations"] = scheme.input_activations is None and preset.input_activations is None
t = load_file(f"{d}/model.safetensors")
r["dtypes"] = {k: str(v.dtype).replace("torch.", "") for k, v in t.items()}
r["shapes"] = {k: list(v.shape) for k, v in t.items()}
res = {}
mods = sorted(k[: -len(".weight_packed")] for k in t if k.endswith(".weight_packed"))
r["modules"] = mods

# llm-compressor's global scales: per tensor from its absmax, then the smallest within q/k/v and gate/up.
def gparam(x):
    x = x.float()
    return generate_gparam(x.min().reshape(1), x.max().reshape(1))
fused = {}
for m in mods:
    layer, kind = m.rsplit(".", 1)
    grp = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "gate_proj": "gu", "up_proj": "gu"}.get(kind, kind)
    fused.setdefault((layer.rsplit(".", 1)[0], grp), []).append(m)
want_g = {}
for ms in fused.values():
    g = torch.min(torch.cat([gparam(orig[m + ".weight"]) for m in ms])).reshape(1)
    for m in ms:
        want_g[m] = g
r["checked_codes"] = 0
for m in mods:
    x = orig[m + ".weight"].float()
    g, s, packed = t[m + ".weight_global_scale"], t[m + ".weight_scale"], t[m + ".weight_packed"]
    if not torch.equal(g, want_g[m]):
        r["problems"].append(f"{m}: global scale {g.item()} != llm-compressor's {want_g[m].item()}")
    # calculate_qparams on the groups of 16 (what the memoryless min-max observer feeds it)
    xg = x.reshape(x.shape[0], -1, 16)
    ws, _ = calculate_qparams(xg.amin(dim=-1), xg.amax(dim=-1), w, global_scale=g)
    if not torch.equal(ws.to(torch.float8_e4m3fn).view(torch.uint8), s.view(torch.uint8)):
        n = int((ws.to(torch.float8_e4m3fn).view(torch.uint8) != s.view(torch.uint8)).sum())
        r["problems"].append(f"{m}: {n} group scales differ from calculate_qparams'")
    q = quantize(x=x, scale=s.float(), zero_point=None, args=w, global_scale=g)
    mine = pack_fp4_to_uint8(q)
    if not torch.equal(mine, packed):
        r["problems"].append(f"{m}: {int((mine != packed).sum())} of {packed.numel()} packed bytes differ "
                             "from compressed-tensors' quantize + pack")
    r["checked_codes"] += x.numel()
    rows, half = packed.shape
    res["f32." + m + ".weight"] = dequantize(
        x_q=unpack_fp4_from_uint8(packed, rows, half * 2, dtype=torch.float32), scale=s.float(), args=w,
        global_scale=g).contiguous()
# the model-free decompressor (it takes every `*.weight` for a Linear: the embedding is left out)
dense = CompressedTensorsDequantizer(d, dtype=torch.float32).validate(
    {k: v for k, v in t.items() if not k.startswith("model.embed_tokens.")})
for k, v in dense.items():
    res["ct." + k] = v.float().contiguous()
# transformers, dequantized on load, on CPU
try:
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig
    model, li = AutoModelForCausalLM.from_pretrained(
        d, quantization_config=CompressedTensorsConfig(dequantize=True), dtype=torch.float32,
        output_loading_info=True)
    r["loading"] = {k: sorted(map(str, v)) for k, v in li.items()}
    for k, v in model.state_dict().items():
        res["hf." + k] = v.detach().float().clone().contiguous()
    tokens = torch.tensor(spec["tokens"], dtype=torch.long)
    with torch.no_grad():
        res["logprobs"] = torch.log_softmax(model(tokens).logits.float(), dim=-1).contiguous()
    # the same model with the package's exact f32 dequantization in place of its bfloat16 one
    sd = model.state_dict()
    with torch.no_grad():
        for m in mods:
            sd[m + ".weight"].copy_(res["f32." + m + ".weight"])
        res["logprobs_f32"] = torch.log_softmax(model(tokens).logits.float(), dim=-1).contiguous()
    r["transformers"] = "loaded"
except Exception as e:  # reported, and the test says why
    r["transformers"] = f"{type(e).__name__}: {e}"
save_file(res, out)
print(json.dumps(r))
"""


def bf16(a):
    """f32 -> bfloat16 (round to nearest even) -> f32, as torch's `.to(torch.bfloat16)`."""
    b = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    b = (b + 0x7FFF + ((b >> 16) & 1)) >> 16 << 16
    return b.astype(np.uint32).view(np.float32)


@pytest.fixture(scope="module")
def nvfp4(tmp_path_factory, bin_ok, shared_ok, ct_python):
    tmp = tmp_path_factory.mktemp("nvfp4")
    out = tmp / "q"
    run("quantize", STORIES, "--method", "rtn", "--format", "ct-nvfp4", "-o", out)
    d = out / "ct-nvfp4"
    ref_dir = tmp / "ref"
    run("export-hf", d, "-o", ref_dir, "--dtype", "f32")
    ref = load_safetensors(ref_dir / "model.safetensors")
    text = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
    base = tmp / "base.qklogits"
    run("kld", "--base", d, "--text", text, "--ctx", CTX, "--chunks", 2, "--top-k", 0, "--save-base", base)
    _, toks, _ = read_full_base(base)
    spec = {"original": str(STORIES / "model.safetensors"), "tokens": toks.tolist(), "dir": str(d),
            "out": str(tmp / "ct.safetensors")}
    p = subprocess.run([ct_python, "-c", SCRIPT, json.dumps(spec)], capture_output=True, text=True)
    if p.returncode != 0:
        raise AssertionError(f"compressed-tensors / transformers failed:\n{p.stderr[-4000:]}")
    info = json.loads(p.stdout.strip().splitlines()[-1])
    assert info["version"] == "0.20.0", info
    return d, ref, base, info, load_safetensors(spec["out"])


def test_nvfp4_config_layout_and_codes(nvfp4):
    d, ref, _, r, _ = nvfp4
    assert r["format"] == "nvfp4-pack-quantized" and r["inferred_format"] == "nvfp4-pack-quantized", r
    assert r["weights_match_preset"] and r["no_activations"]
    assert not r["problems"], "\n".join(r["problems"])
    # stories260K: every projection but down_proj (in = 172) is whole groups of 16.
    want = sorted(n[: -len(".weight")] for n in ref if n.endswith("_proj.weight") and "down_proj" not in n)
    assert r["modules"] == want and len(want) == 30
    assert r["checked_codes"] == sum(ref[m + ".weight"].size for m in want)
    for m in want:
        o, i = ref[m + ".weight"].shape
        assert r["dtypes"][m + ".weight_packed"] == "uint8" and r["shapes"][m + ".weight_packed"] == [o, i // 2]
        assert r["dtypes"][m + ".weight_scale"] == "float8_e4m3fn" and r["shapes"][m + ".weight_scale"] == [o, i // 16]
        assert r["dtypes"][m + ".weight_global_scale"] == "float32" and r["shapes"][m + ".weight_global_scale"] == [1]
        assert m + ".weight_zero_point" not in r["dtypes"] and m + ".input_global_scale" not in r["dtypes"]
    cfg = json.loads((d / "config.json").read_text())["quantization_config"]
    assert cfg["ignore"] == ["lm_head"] + [f"model.layers.{l}.mlp.down_proj" for l in range(5)]
    assert r["dtypes"]["model.layers.0.mlp.down_proj.weight"] == "float16"


def test_nvfp4_package_dequantizes_to_our_weights(nvfp4):
    _, ref, _, r, got = nvfp4
    bad = []
    for m in r["modules"]:
        a = ref[m + ".weight"]
        b = got["f32." + m + ".weight"]
        if not np.array_equal(a, b):
            bad.append(f"f32 {m}: max |diff| {np.abs(a - b).max()}")
        c = got["ct." + m + ".weight"]
        if not np.array_equal(bf16(a), c):
            bad.append(f"decompressor {m}: max |diff| {np.abs(bf16(a) - c).max()}")
        if np.array_equal(a, c):
            bad.append(f"{m}: bf16 rounding expected to change some weight")
    assert not bad, "\n".join(bad)
    orig = load_safetensors(STORIES / "model.safetensors")
    m = "model.layers.0.mlp.up_proj.weight"
    rel = np.sqrt(np.mean((ref[m] - orig[m]) ** 2) / np.mean(orig[m] ** 2))
    assert 0.01 < rel < 0.2, f"relative RMS error {rel}"


def test_nvfp4_transformers_loads_it(nvfp4):
    _, ref, base, r, got = nvfp4
    if r["transformers"] != "loaded":
        pytest.fail(f"transformers could not load the NVFP4 folder on CPU: {r['transformers']}")
    assert not any(r["loading"].get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), r["loading"]
    for m in r["modules"]:
        assert np.array_equal(got["hf." + m + ".weight"], got["ct." + m + ".weight"]), m
    ctx, toks, ours = read_full_base(base)
    t = got["logprobs"].astype(np.float64)[:, ctx // 2:ctx - 1, :]
    mask = t > -29.0
    assert mask.sum() > 1000
    # transformers' model with the package's f32 dequantization: our engine's log-probabilities within the
    # u16 step of the saved base file (as test_ct8).
    t32 = got["logprobs_f32"].astype(np.float64)[:, ctx // 2:ctx - 1, :]
    diff32 = np.abs(t32 - ours)[t32 > -29.0].max()
    assert diff32 < 3e-4, f"f32 weights: logits differ from transformers' by up to {diff32}"
    # As loaded, transformers runs the decompressor's bfloat16-rounded weights (relative error up to 2^-9
    # per weight): on stories260K that moves log-probabilities by up to 0.106, 0.0125 on average (measured);
    # bound both loosely.
    d = np.abs(t - ours)[mask]
    assert d.max() < 0.25 and d.mean() < 0.03, f"bf16 weights: max {d.max()}, mean {d.mean()}"
