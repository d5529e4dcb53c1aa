"""compressed-tensors 8-bit checkpoints written by `quantkit quantize` (docs/quantized-layouts.md, "8-bit"):
int8 W8A16 (`pack-quantized`, 8 bits per channel), int8 W8A8 (`int-quantized`), FP8 E4M3 weight-only
(`naive-quantized`) and FP8_DYNAMIC (`float-quantized`), checked by the real compressed-tensors 0.20.0 and
transformers (in the interpreter of scripts/setup-ct.sh; QUANTKIT_CT=0 skips, see test_quantized_layouts.py):

* the config parses as compressed-tensors' `QuantizationConfig` and its scheme equals the package's own
  preset (`W8A8` = INT8_W8A8, `FP8_DYNAMIC`; weight-only ones: those presets' weights, no activations)
  and the format its `infer_module_format` picks for that scheme;
* tensor dtypes and shapes (`weight` I8 / F8_E4M3 `[out, in]`, `weight_scale` F32 `[out, 1]`, no zero point);
* compressed-tensors' own `quantize` of the ORIGINAL weights with our scales gives our stored codes: FP8 bit
  for bit (torch's e4m3fn cast of the clamped quotient — an independent check of our E4M3 rounding on real
  weights); int8 too except at exact ties of w / s (2 of 100 800 codes on stories260K), which quantkit's
  shared integer grid rounds half away from zero and torch half to even — each such code is checked to be
  a tie and one step away;
* its model-free decompressor and transformers' loader (`dequantize=True`) give exactly the weights
  `quantkit export-hf` reads (f32 scales: the package dequantizes in the scale's dtype, so exact);
* transformers' logits on the same tokens equal our engine's (the full log-probabilities our `kld
  --save-base --top-k 0` writes, u16 codes over [-30, 0]: tolerance 3e-4 = half a code step + f32 noise).

Both loaders run the weights dequantized: with `dequantize=True` transformers drops the activation scheme
(plain `nn.Linear`), exactly what quantkit's engine does (it has no int8-activation or FP8 arithmetic)."""
import json
import os
import subprocess

import numpy as np
import pytest

from conftest import ROOT, STORIES, load_safetensors, run
from test_quantized_layouts import ct_python  # noqa: F401  (the fixture)

# recipe string -> (output folder in the quantize run, compressed-tensors format, preset, activations)
CASES = {
    "w8a16": ("compressed-tensors", "pack-quantized", "W8A8", False),
    "w8a8": ("ct-w8a8", "int-quantized", "W8A8", True),
    "fp8": ("ct-fp8", "naive-quantized", "FP8_DYNAMIC", False),
    "fp8-dynamic": ("ct-fp8-dynamic", "float-quantized", "FP8_DYNAMIC", True),
}
CTX = 64

CT8_SCRIPT = r"""
import json, sys, warnings
warnings.filterwarnings("ignore")
import torch
from safetensors.torch import load_file, save_file
import compressed_tensors
from compressed_tensors.quantization import QuantizationConfig, preset_name_to_scheme
from compressed_tensors.quantization.lifecycle.forward import quantize
from compressed_tensors.compressors.format import infer_module_format
from compressed_tensors.entrypoints.convert.converters.ct_dequantizer import CompressedTensorsDequantizer
from transformers import AutoModelForCausalLM, CompressedTensorsConfig

spec = json.loads(sys.argv[1])
orig = load_file(spec["original"])
tokens = torch.tensor(spec["tokens"], dtype=torch.long)
info = {"version": compressed_tensors.__version__, "dirs": {}}
for job in spec["jobs"]:
    d, out = job["dir"], job["out"]
    r = {"problems": []}
    cfg = json.load(open(f"{d}/config.json"))["quantization_config"]
    qc = QuantizationConfig.model_validate(cfg)  # forbids unknown keys
    (scheme,) = qc.config_groups.values()
    preset = preset_name_to_scheme(job["preset"], ["Linear"])
    r["format"] = cfg["format"]
    r["inferred_format"] = infer_module_format(torch.nn.Linear, scheme).value
    w, pw = scheme.weights, preset.weights
    same = lambda a, b: (a.num_bits, a.type, a.symmetric, a.strategy, a.group_size, a.dynamic) == \
        (b.num_bits, b.type, b.symmetric, b.strategy, b.group_size, b.dynamic)
    r["weights_match_preset"] = same(w, pw)
    r["acts_match_preset"] = (scheme.input_activations is None) if not job["acts"] else \
        same(scheme.input_activations, preset.input_activations)
    t = load_file(f"{d}/model.safetensors")
    res = {}
    # compressed-tensors' quantize of the original weights with our scales = our stored codes
    r["checked_codes"] = 0
    if cfg["format"] != "pack-quantized":
        for k, s in t.items():
            if not k.endswith(".weight_scale"):
                continue
            m = k[: -len("_scale")]
            q = quantize(x=orig[m], scale=s, zero_point=None, args=w, dtype=w.pytorch_dtype())
            mine = t[m]
            if q.dtype != mine.dtype or q.shape != mine.shape:
                r["problems"].append(f"{m}: package gives {q.dtype} {tuple(q.shape)}, file {mine.dtype} {tuple(mine.shape)}")
                continue
            a, b = q.view(torch.uint8), mine.view(torch.uint8)
            diff = a != b
            if diff.any():
                # Allowed only at exact ties of w / s, which quantkit's integer grid rounds half away from
                # zero (f32::round) where torch rounds half to even: one step apart, nothing else.
                y = (orig[m].float() / s.float())[diff]
                qa, qb = q[diff].float(), mine[diff].float()
                ties = (y - y.floor() == 0.5) & ((qa - qb).abs() == 1) & (qb == torch.sign(y) * torch.ceil(y.abs()))
                if w.type != "int" or not bool(ties.all()):
                    r["problems"].append(f"{m}: {int(diff.sum())} of {a.numel()} codes differ from "
                                         "compressed-tensors' quantize (not ties)")
                r["ties"] = r.get("ties", 0) + int(diff.sum())
            r["checked_codes"] += a.numel()
    r["dtypes"] = {k: str(v.dtype).replace("torch.", "") for k, v in t.items()}
    r["shapes"] = {k: list(v.shape) for k, v in t.items()}
    # 1. the model-free decompressor. It matches tensors by name only and takes every `*.weight` for a
    #    Linear ("Linear" in targets is all-inclusive there), so the embedding is left out of its input
    #    (model-based loaders match by class and never target it).
    dense = CompressedTensorsDequantizer(d, dtype=torch.float32).validate(
        {k: v for k, v in t.items() if not k.startswith("model.embed_tokens.")})
    for k, v in dense.items():
        res["ct." + k] = v.float().contiguous()
    # 2. transformers, dequantized
    model, li = AutoModelForCausalLM.from_pretrained(
        d, quantization_config=CompressedTensorsConfig(dequantize=True), dtype=torch.float32,
        output_loading_info=True)
    r["loading"] = {k: sorted(map(str, v)) for k, v in li.items()}
    for k, v in model.state_dict().items():
        res["hf." + k] = v.detach().float().clone().contiguous()
    with torch.no_grad():
        res["logprobs"] = torch.log_softmax(model(tokens).logits.float(), dim=-1).contiguous()
    if job["acts"]:
        # 3. the activation scheme as a deployment runs it, on the dequantized model: every quantized
        #    Linear's input rounded per token — int8 as vLLM's dynamic per-token kernel does
        #    (s = max|x| / 127, round half to even, clamp ±127), FP8 as compressed-tensors does
        #    (s = max|x| / 448, cast to float8_e4m3fn).
        def hook(mod, args):
            (x,) = args
            amax = x.abs().amax(dim=-1, keepdim=True)
            if w.type == "int":
                s = amax / 127.0
                q = torch.where(s > 0, torch.round(x / torch.where(s > 0, s, 1.0)).clamp(-127, 127), 0.0)
            else:
                s = amax / 448.0
                q = torch.where(s > 0, (x / torch.where(s > 0, s, 1.0)).clamp(-448, 448)
                                .to(torch.float8_e4m3fn).float(), 0.0)
            return (q * s,)
        hooks = [mod.register_forward_pre_hook(hook) for name, mod in model.named_modules()
                 if isinstance(mod, torch.nn.Linear) and f"{name}.weight_scale" in t]
        r["hooked"] = len(hooks)
        with torch.no_grad():
            res["logprobs_acts"] = torch.log_softmax(model(tokens).logits.float(), dim=-1).contiguous()
        for h in hooks:
            h.remove()
        # 4. compressed-tensors' own simulated forward (the checkpoint loaded compressed): its dynamic
        #    activation observer divides by 127.5 for int8 (vLLM by 127), by 448 for FP8.
        sim = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
        with torch.no_grad():
            res["logprobs_sim"] = torch.log_softmax(sim(tokens).logits.float(), dim=-1).contiguous()
    save_file(res, out)
    info["dirs"][d] = r
print(json.dumps(info))
"""


def read_full_base(path):
    """A QKLOGIT1 file (crates/engine/src/baselogits.rs): magic, vocab, ctx, n_tokens (u32), the evaluated
    tokens (u32, BOS first per chunk), then per chunk ctx - 1 - ctx/2 rows of u16 codes of log p over [-30, 0]."""
    b = open(path, "rb").read()
    assert b[:8] == b"QKLOGIT1"
    vocab, ctx, n = np.frombuffer(b[8:20], "<u4")
    toks = np.frombuffer(b[20:20 + 4 * n], "<u4").astype(np.int64)
    codes = np.frombuffer(b[20 + 4 * n:], "<u2").astype(np.float64)
    rows = n // ctx * (ctx - 1 - ctx // 2)
    assert codes.size == rows * vocab
    return int(ctx), toks.reshape(-1, ctx), (-30.0 + codes * (30.0 / 65535.0)).reshape(-1, ctx - 1 - ctx // 2, vocab)


@pytest.fixture(scope="module")
def ct8(tmp_path_factory, bin_ok, shared_ok, ct_python):
    tmp = tmp_path_factory.mktemp("ct8")
    out = tmp / "q"
    run("quantize", STORIES, "--method", "rtn", "--bits", 8, "--group", -1, "--format", "compressed-tensors",
        "--format", "ct-w8a8", "--format", "ct-fp8", "--format", "ct-fp8-dynamic", "-o", out)
    text = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
    refs, bases, native = {}, {}, {}
    for key, (sub, *_rest) in CASES.items():
        d = out / sub
        ref = tmp / f"ref-{key}"
        run("export-hf", d, "-o", ref, "--dtype", "f32")
        refs[key] = load_safetensors(ref / "model.safetensors")
        # The weights alone (--dequantize), and as the engine runs the checkpoint (its activations
        # quantized as declared: int8 arithmetic for W8A8, E4M3-rounded inputs for FP8_DYNAMIC).
        bases[key] = tmp / f"base-{key}.qklogits"
        run("kld", "--base", d, "--text", text, "--ctx", CTX, "--chunks", 2, "--top-k", 0,
            "--save-base", bases[key], "--dequantize")
        native[key] = tmp / f"native-{key}.qklogits"
        run("kld", "--base", d, "--text", text, "--ctx", CTX, "--chunks", 2, "--top-k", 0,
            "--save-base", native[key])
    ctx, toks, _ = read_full_base(bases["w8a8"])
    jobs = [{"dir": str(out / sub), "out": str(tmp / f"ct-{key}.safetensors"), "preset": preset, "acts": acts}
            for key, (sub, _f, preset, acts) in CASES.items()]
    spec = {"original": str(STORIES / "model.safetensors"), "tokens": toks.tolist(), "jobs": jobs}
    p = subprocess.run([ct_python, "-c", CT8_SCRIPT, json.dumps(spec)], capture_output=True, text=True)
    if p.returncode != 0:
        raise AssertionError(f"compressed-tensors / transformers failed:\n{p.stderr[-4000:]}")
    info = json.loads(p.stdout.strip().splitlines()[-1])
    assert info["version"] == "0.20.0", info
    return out, refs, bases, info, jobs, native


@pytest.mark.parametrize("key", list(CASES))
def test_ct8_layout_config_and_codes(ct8, key):
    out, refs, bases, info, jobs, _native = ct8
    sub, fmt, preset, acts = CASES[key]
    d = str(out / sub)
    r = info["dirs"][d]
    assert r["format"] == fmt and r["inferred_format"] == fmt, \
        f"{key}: config says {r['format']}, compressed-tensors infers {r['inferred_format']} for its scheme"
    assert r["weights_match_preset"] and r["acts_match_preset"], f"{key}: scheme differs from {preset}"
    assert not r["problems"], "\n".join(r["problems"])
    ref = refs[key]
    linears = sorted(n[:-len(".weight")] for n in ref if n.endswith("_proj.weight"))
    assert len(linears) == 35  # 5 layers x 7 projections, every one quantized (no width constraint)
    for m in linears:
        out_f, in_f = ref[m + ".weight"].shape
        assert r["shapes"][m + ".weight_scale"] == [out_f, 1] and r["dtypes"][m + ".weight_scale"] == "float32"
        assert m + ".weight_zero_point" not in r["dtypes"]
        if fmt == "pack-quantized":
            assert r["dtypes"][m + ".weight_packed"] == "int32" and r["shapes"][m + ".weight_packed"] == [out_f, in_f // 4]
        else:
            want = "int8" if fmt == "int-quantized" else "float8_e4m3fn"
            assert r["dtypes"][m + ".weight"] == want and r["shapes"][m + ".weight"] == [out_f, in_f], m
    if fmt != "pack-quantized":
        assert r["checked_codes"] == sum(ref[m + ".weight"].size for m in linears)
        assert r.get("ties", 0) <= 1e-4 * r["checked_codes"], r.get("ties")
        if fmt != "int-quantized":
            assert r.get("ties", 0) == 0
    cfg = json.loads((out / sub / "config.json").read_text())["quantization_config"]
    assert cfg["ignore"] == ["lm_head"] and cfg["quant_method"] == "compressed-tensors"


@pytest.mark.parametrize("key", list(CASES))
def test_ct8_package_and_transformers_match_ours(ct8, key):
    out, refs, bases, info, jobs, _native = ct8
    sub = CASES[key][0]
    job = next(j for j in jobs if j["dir"] == str(out / sub))
    r = info["dirs"][job["dir"]]
    assert not any(r["loading"].get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), r["loading"]
    got = load_safetensors(job["out"])  # F32 only
    ref = refs[key]
    bad = []
    for name, a in ref.items():
        if not name.endswith("_proj.weight"):
            continue
        for label in ("ct", "hf"):
            b = got.get(f"{label}.{name}")
            if b is None or not np.array_equal(a, b):
                bad.append(f"{label} {name}: " + ("missing" if b is None else f"max |diff| {np.abs(a - b).max()}"))
    assert not bad, "\n".join(bad)
    # Logits: transformers on the evaluated chunks vs our engine's saved log-probabilities.
    ctx, toks, ours = read_full_base(bases[key])
    theirs = got["logprobs"].astype(np.float64)  # [chunks, ctx, vocab]
    first = ctx // 2
    t = theirs[:, first:ctx - 1, :]
    mask = t > -29.0  # the codes floor at -30
    diff = np.abs(t - ours)[mask].max()
    assert diff < 3e-4, f"{key}: logits differ from transformers' by up to {diff}"
    assert mask.sum() > 1000


def test_ct8_fp8_differs_from_int8(ct8):
    """The FP8 and int8 outputs are different quantizations (a swapped layout would pass the others)."""
    out, refs, bases, *_ = ct8
    # the logits check above can tell the two apart: their log-probabilities differ by far more than 3e-4
    fa, fb = read_full_base(bases["fp8"])[2], read_full_base(bases["w8a8"])[2]
    assert np.abs(fa - fb).max() > 1e-2
    m = "model.layers.0.mlp.up_proj.weight"
    assert not np.array_equal(refs["fp8"][m], refs["w8a8"][m])
    assert np.array_equal(refs["fp8"][m], refs["fp8-dynamic"][m])
    assert np.array_equal(refs["w8a16"][m], refs["w8a8"][m])
    orig = load_safetensors(STORIES / "model.safetensors")[m]
    for key, limit in [("w8a8", 0.01), ("fp8", 0.05)]:
        rel = np.sqrt(np.mean((refs[key][m] - orig) ** 2) / np.mean(orig ** 2))
        assert rel < limit, f"{key}: relative RMS error {rel}"


@pytest.mark.parametrize("key", [k for k, c in CASES.items() if c[3]])
def test_ct8_engine_runs_the_activation_scheme(ct8, key):
    """W8A8 and FP8_DYNAMIC as the engine runs them natively (int8 activations times int8 weights in
    integer arithmetic; FP8 activations rounded to E4M3) against torch running the dequantized model
    with each quantized Linear's input rounded by the deployment's rule.

    stories260K under per-token activation rounding is chaotic: a relative change of 1e-7 in the
    activations (float summation order) flips a code near a rounding tie somewhere in a chunk and moves
    that chunk's later log-probabilities by ~0.05 (measured: our own int8 path against our own f32
    emulation of it). So the check is per position: most positions agree to f32 noise, where the
    weights-only run (--dequantize) agrees nowhere. For FP8, compressed-tensors' own simulated
    forward (the checkpoint loaded compressed) is the same rule and must equal the hooks exactly; for
    int8 its observer divides by 127.5 (vLLM's kernel by 127), a different rounding."""
    out, refs, bases, info, jobs, native = ct8
    sub = CASES[key][0]
    job = next(j for j in jobs if j["dir"] == str(out / sub))
    assert info["dirs"][job["dir"]]["hooked"] == 35
    got = load_safetensors(job["out"])
    ctx, _toks, ours = read_full_base(native[key])
    _, _, deq = read_full_base(bases[key])
    first = ctx // 2

    def per_position(t):
        m = (t > -29.0) & (ours > -29.0)
        d = np.abs(t - ours)
        return np.array([d[i, j][m[i, j]].mean() for i in range(d.shape[0]) for j in range(d.shape[1])])

    acts = per_position(got["logprobs_acts"].astype(np.float64)[:, first:ctx - 1, :])
    weights_only = per_position(deq)
    assert (weights_only > 1e-3).all(), f"{key}: activation rounding changed little ({weights_only.min()})"
    agree = (acts < 2e-4).mean()
    assert agree >= 0.4, f"{key}: only {agree:.0%} of positions agree with torch ({np.round(acts, 4)})"
    if key == "fp8-dynamic":
        assert np.abs(got["logprobs_sim"] - got["logprobs_acts"]).max() < 1e-5
