"""bitsandbytes NF4 checkpoints written by `quantkit quantize --method rtn --format bnb-nf4[-dq]`, and by
`--method gptq` (GPTQ-into-NF4: same layout, codes and absmax chosen by GPTQ).

Independent of our code (numpy, written from docs/quantized-layouts.md "bitsandbytes NF4"): the
layout (names, dtypes, shapes, nibble order, the quant-state JSON exactly as `json.dumps` writes it,
config.json's quantization_config), a reader that dequantizes our files to exactly what `export-hf`
writes, and a transcription of bnb's quantize_4bit (its torch path: f32 reciprocal, clamp,
`torch.bucketize` over the f32 midpoints) that gives our codes and absmax bit for bit.

With the real packages (torch + transformers from scripts/setup-ct.sh's venv, plus bitsandbytes 0.50.2
and accelerate: scripts/setup-bnb.sh; QUANTKIT_BNB_PYTHON overrides the interpreter, QUANTKIT_BNB=0
skips; a failed install skips with the installer's message):
* bnb's `dequantize_4bit` of our tensors equals our dequantized weights exactly, in f32 and in the
  quant state's float16, with and without double quantization;
* transformers quantizing the original model on load (`BitsAndBytesConfig(load_in_4bit=True,
  bnb_4bit_quant_type="nf4")`, dtype float16) and saving it writes our file's tensors byte for byte;
  with double quantization every tensor but a few nested absmax codes (bnb 0.50's CPU 8-bit
  quantizer looks codes up in a 65536-entry table; ours picks the exact nearest level — checked);
* transformers loads our folders on CPU (no missing or unexpected keys, every block linear a
  Linear4bit) and its logits equal, exactly, its logits on our export-hf (dense f32) folder; the
  sliding-window perplexity it computes equals `quantkit ppl --mode hf` on the NF4 folder (1e-4).
The GPTQ folders go through the same layout, reader, `dequantize_4bit` and loading checks (not the
byte comparison with transformers' own quantization, which is round to nearest)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, SHARED, STORIES, WIKI, outlier_weights, run, synthetic_checkpoint

sys.path.insert(0, str(ROOT / "scripts"))
import unpack_quantized as uq  # noqa: E402

FORMATS = ["bnb-nf4", "bnb-nf4-dq"]
PROJ = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]

# bitsandbytes' get_4bit_type("nf4"), as float32.
NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                0.7229568362236023, 1.0], dtype=np.float32)


# ------------------------------------------------------------------------------------------------
# Independent numpy reader and quantizer.

def read_nf4(folder):
    """Every module of a bnb NF4 folder dequantized (f32, as bnb's inference GEMM computes it)."""
    t = uq.read_safetensors(folder / "model.safetensors")
    out = {}
    for k in t:
        if not k.endswith(".weight.quant_state.bitsandbytes__nf4"):
            continue
        w = k[: -len(".quant_state.bitsandbytes__nf4")]
        st = json.loads(bytes(t[k]).decode())
        rows, cols = st["shape"]
        n, bs = rows * cols, st["blocksize"]
        packed = t[w].reshape(-1)
        codes = np.stack([packed >> 4, packed & 15], axis=1).reshape(-1)[:n]  # first code: high nibble
        if "nested_offset" in st:
            nb = st["nested_blocksize"]
            q = t[w + ".absmax"].astype(np.int64)
            absmax = (t[w + ".nested_quant_map"][q] * np.repeat(t[w + ".nested_absmax"], nb)[: len(q)]
                      + np.float32(st["nested_offset"])).astype(np.float32)
        else:
            absmax = t[w + ".absmax"]
        out[w] = (NF4[codes] * np.repeat(absmax, bs)[:n]).reshape(rows, cols)
    return out


def bnb_quantize_4bit(a, blocksize=64):
    """Transcription of bitsandbytes 0.50's quantize_4bit torch path (backends/default/ops.py) for NF4
    on a float32 vector: (codes, absmax)."""
    a = a.astype(np.float32).reshape(-1)
    n = a.size
    full = n - n % blocksize
    mids = ((NF4[:-1] + NF4[1:]) / np.float32(2)).astype(np.float32)
    blocks = a[:full].reshape(-1, blocksize)
    absmax = np.abs(blocks).max(axis=1)
    inv = (np.float32(1) / np.maximum(absmax, np.float32(1e-38))).astype(np.float32)
    scaled = np.clip(blocks * inv[:, None], -1, 1).reshape(-1)
    if n % blocksize:
        am = np.maximum(np.abs(a[full:]).max(), np.float32(1e-38))
        absmax = np.concatenate([absmax, [am]]).astype(np.float32)
        scaled = np.concatenate([scaled, np.clip(a[full:] / am, -1, 1)])
    return np.searchsorted(mids, scaled, side="left").astype(np.uint8), absmax  # == torch.bucketize


def expected_config(dq):
    return {"_load_in_4bit": True, "_load_in_8bit": False, "bnb_4bit_compute_dtype": "float32",
            "bnb_4bit_quant_storage": "uint8", "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": dq,
            "llm_int8_enable_fp32_cpu_offload": False, "llm_int8_has_fp16_weight": False,
            "llm_int8_skip_modules": ["lm_head"], "llm_int8_threshold": 6.0, "load_in_4bit": True,
            "load_in_8bit": False, "quant_method": "bitsandbytes"}


# ------------------------------------------------------------------------------------------------
# Fixtures: stories260K (tied, 64 × 172) and a synthetic untied Llama whose widths leave ragged
# blocks (48 × 43: 2064 weights = 32 blocks of 64 + 16).

@pytest.fixture(scope="module")
def models(tmp_path_factory, bin_ok, shared_ok):
    synth = tmp_path_factory.mktemp("synth-llama")
    synthetic_checkpoint(synth, arch="LlamaForCausalLM", model_type="llama", tokenizer_dir=STORIES,
                         w=outlier_weights(np.random.default_rng(21)), h=48, f=43, layers=2, heads=3, kv=1,
                         vocab=512, tied=False, biases=False, max_position_embeddings=256, rms_norm_eps=1e-5,
                         rope_theta=10000.0)
    out = {}
    for name, src in [("stories", STORIES), ("synth", synth)]:
        o = tmp_path_factory.mktemp(f"nf4-{name}")
        args = [a for f in FORMATS for a in ("--format", f)]
        run("quantize", src, "--method", "rtn", *args, "-o", o / "q")
        run("quantize", src, "--method", "gptq", "--calib", SHARED / "data" / "tinyshakespeare" / "input.txt",
            "--samples", "8", "--seqlen", "64", *args, "-o", o / "g")
        for f in FORMATS:
            run("export-hf", o / "q" / f, "-o", o / f"{f}-ref", "--dtype", "f32")
            run("export-hf", o / "g" / f, "-o", o / f"gptq-{f}-ref", "--dtype", "f32")
        out[name] = (src, o)
    return out


def cases(models):
    """The round-to-nearest folders (bnb's own quantization)."""
    for name, (src, o) in models.items():
        for f in FORMATS:
            yield name, src, f, o / "q" / f, o / f"{f}-ref"


def all_cases(models):
    """The RTN folders and the GPTQ-into-NF4 ones (labelled gptq-bnb-nf4[-dq])."""
    yield from cases(models)
    for name, (src, o) in models.items():
        for f in FORMATS:
            yield name, src, f"gptq-{f}", o / "g" / f, o / f"gptq-{f}-ref"


def test_layout_and_config(models):
    for name, src, f, d, _ in all_cases(models):
        dq = f.endswith("-dq")
        cfg = json.loads((d / "config.json").read_text())
        assert cfg["quantization_config"] == expected_config(dq), (name, f)
        dtypes = {}
        t = uq.read_safetensors(d / "model.safetensors", dtypes)
        orig = uq.read_safetensors(src / "model.safetensors")
        layers = cfg["num_hidden_layers"]
        for i in range(layers):
            for p in PROJ:
                w = f"model.layers.{i}.{p}.weight"
                rows, cols = orig[w].shape
                n = rows * cols
                nb = -(-n // 64)
                st_raw = bytes(t[w + ".quant_state.bitsandbytes__nf4"])
                st = json.loads(st_raw)
                # exactly json.dumps of QuantState.as_dict(packed=True)'s non-tensor items, in order
                assert st_raw.decode() == json.dumps(st)
                keys = ["quant_type", "blocksize", "dtype", "shape"]
                keys += ["nested_blocksize", "nested_dtype", "nested_offset"] if dq else []
                assert list(st) == keys, st
                assert (st["quant_type"], st["blocksize"], st["dtype"], st["shape"]) == ("nf4", 64, "float16", [rows, cols])
                want = {w: ("U8", [-(-n // 2), 1]), w + ".quant_map": ("F32", [16])}
                if dq:
                    assert (st["nested_blocksize"], st["nested_dtype"]) == (256, "float32")
                    want.update({w + ".absmax": ("U8", [nb]), w + ".nested_absmax": ("F32", [-(-nb // 256)]),
                                 w + ".nested_quant_map": ("F32", [256])})
                else:
                    want[w + ".absmax"] = ("F32", [nb])
                for k, (dt, shape) in want.items():
                    assert (dtypes[k], list(t[k].shape)) == (dt, shape), (name, f, k)
                np.testing.assert_array_equal(t[w + ".quant_map"], NF4)
        # everything else stays float16; lm_head (when untied) is not quantized
        plain = [k for k in t if not any(k.startswith(f"model.layers.{i}.{p}.weight")
                                         for i in range(layers) for p in PROJ)]
        assert all(dtypes[k] == "F16" for k in plain), [(k, dtypes[k]) for k in plain]
        assert ("lm_head.weight" in t) == (not cfg["tie_word_embeddings"])


def test_numpy_reader_equals_export(models):
    for name, _, f, d, ref_dir in all_cases(models):
        ref = uq.read_safetensors(ref_dir / "model.safetensors")
        mine = read_nf4(d)
        assert len(mine) == 7 * (2 if name == "synth" else 5)
        for w, a in mine.items():
            assert np.array_equal(a, ref[w]), (name, f, w, np.abs(a - ref[w]).max())


def test_codes_and_absmax_are_bnbs_quantize_4bit(models):
    """Our codes and absmax equal the bnb torch path's on the float16-rounded weights (as transformers
    quantizes a float16 model); with double quantization the nested state reconstructs each absmax
    to the nearest level of the stored map."""
    for name, src, f, d, _ in cases(models):
        t = uq.read_safetensors(d / "model.safetensors")
        orig = uq.read_safetensors(src / "model.safetensors")
        for w in [k[: -len(".quant_state.bitsandbytes__nf4")] for k in t if k.endswith("bitsandbytes__nf4")]:
            a = orig[w].astype(np.float16).astype(np.float32)
            codes, absmax = bnb_quantize_4bit(a)
            packed = t[w].reshape(-1)
            ours = np.stack([packed >> 4, packed & 15], axis=1).reshape(-1)[: a.size]
            assert np.array_equal(ours, codes), (name, f, w)
            if not f.endswith("-dq"):
                assert np.array_equal(t[w + ".absmax"], absmax), (name, f, w)
                continue
            st = json.loads(bytes(t[w + ".quant_state.bitsandbytes__nf4"]))
            off = np.float32(st["nested_offset"])
            assert abs(off - absmax.astype(np.float64).mean()) <= 1e-6 * abs(off)
            m, q, na = t[w + ".nested_quant_map"], t[w + ".absmax"].astype(np.int64), t[w + ".nested_absmax"]
            x = (absmax - off) * (np.float32(1) / np.repeat(na, 256)[: len(q)])
            assert np.all(np.abs(m[q] - x) <= np.abs(m[None, :] - x[:, None]).min(axis=1)), (name, w)


def test_gptq_folders_differ_from_rtn_and_keep_its_nested_state(models):
    """GPTQ moved codes (and, without double quantization, absmax values); with double quantization
    the nested state (offset, nested absmax) is RTN's — GPTQ fixes it first and rounds each block's
    absmax onto it (docs/quantized-layouts.md)."""
    for name, (src, o) in models.items():
        for f in FORMATS:
            r, g = uq.read_safetensors(o / "q" / f / "model.safetensors"), uq.read_safetensors(o / "g" / f / "model.safetensors")
            assert set(r) == set(g)
            ws = [k[: -len(".quant_state.bitsandbytes__nf4")] for k in r if k.endswith("bitsandbytes__nf4")]
            moved = sum(int((r[w] != g[w]).sum()) for w in ws)
            assert moved > 0.05 * sum(r[w].size for w in ws), (name, f, moved)
            for w in ws:
                if f.endswith("-dq"):
                    np.testing.assert_array_equal(r[w + ".nested_absmax"], g[w + ".nested_absmax"])
                    assert bytes(r[w + ".quant_state.bitsandbytes__nf4"]) == bytes(g[w + ".quant_state.bitsandbytes__nf4"])


# ------------------------------------------------------------------------------------------------
# The real bitsandbytes + transformers (separate interpreter).

BNB_SCRIPT = r"""
import json, sys
import numpy as np, torch
import bitsandbytes as bnb, bitsandbytes.functional as F
from bitsandbytes.functional import QuantState
from safetensors.torch import load_file, save_file
import transformers
from transformers import AutoModelForCausalLM, BitsAndBytesConfig
from tokenizers import Tokenizer

torch.manual_seed(0)
spec = json.loads(sys.argv[1])
info = {"bitsandbytes": bnb.__version__, "transformers": transformers.__version__, "torch": torch.__version__}
tokens = torch.tensor([[1] + [(i * 37 + 11) % 509 + 3 for i in range(47)]])


def upcast(model):
    # transformers keeps a pre-quantized bnb checkpoint's float tensors in their stored dtype
    # (float16) whatever `dtype=` says; widen them (exactly) so the forward runs in f32.
    for p in model.parameters():
        if not isinstance(p, bnb.nn.Params4bit) and p.dtype != torch.float32:
            p.data = p.data.float()
    return model


def hf_ppl(model, ids, ctx, stride):
    nll, count, prev_end = 0.0, 0, 0
    with torch.no_grad():
        for begin in range(0, len(ids), stride):
            end = min(begin + ctx, len(ids))
            lp = torch.log_softmax(model(torch.tensor([ids[begin:end]])).logits[0].double(), -1)
            for j in range(max(prev_end, begin + 1), end):
                nll -= lp[j - 1 - begin, ids[j]].item()
                count += 1
            prev_end = end
            if end == len(ids):
                break
    return float(np.exp(nll / count)), count


for job in spec:
    key, res = job["key"], {}
    if job["kind"] == "dequant":
        t = load_file(job["dir"] + "/model.safetensors")
        mods = sorted({k.split(".weight.quant_state.")[0] for k in t if ".weight.quant_state." in k})
        for m in mods:
            qs = {k[len(m) + len(".weight."):]: v for k, v in t.items() if k.startswith(m + ".weight.")}
            st = QuantState.from_dict(qs, device=torch.device("cpu"))
            res["state." + m + ".weight"] = F.dequantize_4bit(t[m + ".weight"], st).float().contiguous()
            st.dtype = torch.float32  # what gemm_4bit computes with for float32 activations
            res["f32." + m + ".weight"] = F.dequantize_4bit(t[m + ".weight"], st).contiguous()
        info[key] = {"modules": len(mods)}
    elif job["kind"] == "quantize":
        cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=job["dq"])
        m = AutoModelForCausalLM.from_pretrained(job["model"], quantization_config=cfg, device_map="cpu",
                                                 dtype=torch.float16)
        m.save_pretrained(job["out"])
        info[key] = {}
    elif job["kind"] == "load":
        m, li = AutoModelForCausalLM.from_pretrained(job["dir"], dtype=torch.float32, device_map="cpu",
                                                     attn_implementation="eager", output_loading_info=True)
        upcast(m).eval()
        r = AutoModelForCausalLM.from_pretrained(job["ref"], dtype=torch.float32, attn_implementation="eager").eval()
        kinds = {}
        for name, mod in m.named_modules():
            if isinstance(mod, torch.nn.Linear):
                kinds[name] = type(mod).__name__
        with torch.no_grad():
            res["logits"] = m(tokens).logits[0].contiguous()
            res["ref_logits"] = r(tokens).logits[0].contiguous()
            res["logits1"] = m(tokens[:, :1]).logits[0].contiguous()
            res["ref_logits1"] = r(tokens[:, :1]).logits[0].contiguous()
        out = {"loading": {k: sorted(map(str, v)) for k, v in li.items()}, "linears": kinds}
        if job.get("text"):
            tok = Tokenizer.from_file(job["dir"] + "/tokenizer.json")
            text = open(job["text"], encoding="utf-8").read()[: job["chars"]]
            ids = tok.encode(text, add_special_tokens=False).ids
            if job["bos"] is not None:
                ids = [job["bos"]] + ids
            out["ppl"], out["tokens_scored"] = hf_ppl(m, ids, job["ctx"], job["stride"])
        info[key] = out
    if res:
        save_file(res, job["out"])
print(json.dumps(info))
"""


@pytest.fixture(scope="module")
def bnb_python():
    if os.environ.get("QUANTKIT_BNB_PYTHON"):
        return os.environ["QUANTKIT_BNB_PYTHON"]
    if os.environ.get("QUANTKIT_BNB") == "0" or os.environ.get("QUANTKIT_CT") == "0":
        pytest.skip("bitsandbytes checks disabled (QUANTKIT_BNB=0 / QUANTKIT_CT=0)")
    p = subprocess.run(["bash", str(ROOT / "scripts" / "setup-bnb.sh")], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip("bitsandbytes 0.50.2 + torch could not be installed (scripts/setup-bnb.sh): "
                    + p.stderr.strip()[-600:])
    return p.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def bnb_results(models, bnb_python, tmp_path_factory):
    """Run every bitsandbytes/transformers job in one interpreter (importing torch costs seconds)."""
    tmp = tmp_path_factory.mktemp("bnb-jobs")
    spec = []
    for name, src, f, d, ref in all_cases(models):
        spec.append({"key": f"dequant/{name}/{f}", "kind": "dequant", "dir": str(d), "out": str(tmp / f"dq-{name}-{f}.st")})
        load = {"key": f"load/{name}/{f}", "kind": "load", "dir": str(d), "ref": str(ref),
                "out": str(tmp / f"load-{name}-{f}.st")}
        if name == "stories":
            # as scripts/golden_logits.py: BOS first when the tokenizer adds one
            add_bos = json.loads((STORIES / "tokenizer_config.json").read_text()).get("add_bos_token", False)
            bos = json.loads((STORIES / "config.json").read_text())["bos_token_id"] if add_bos else None
            load.update(text=str(WIKI), chars=6000, ctx=128, stride=64, bos=bos)
        spec.append(load)
        if f.startswith("gptq-"):
            continue
        spec.append({"key": f"quantize/{name}/{f}", "kind": "quantize", "model": str(src), "dq": f.endswith("-dq"),
                     "out": str(tmp / f"hf-{name}-{f}")})
    script = tmp / "bnb_jobs.py"
    script.write_text(BNB_SCRIPT)
    p = subprocess.run([bnb_python, str(script), json.dumps(spec)], capture_output=True, text=True)
    if p.returncode != 0:
        raise AssertionError(f"the bitsandbytes/transformers jobs failed:\n{p.stderr[-4000:]}")
    info = json.loads(p.stdout.strip().splitlines()[-1])
    assert info["bitsandbytes"] == "0.50.2", info
    return {j["key"]: j for j in spec}, info


def test_bnb_dequantize_4bit_equals_ours(models, bnb_results):
    jobs, info = bnb_results
    for name, _, f, _, ref_dir in all_cases(models):
        job = jobs[f"dequant/{name}/{f}"]
        ref = uq.read_safetensors(ref_dir / "model.safetensors")
        got = uq.read_safetensors(job["out"])
        assert info[job["key"]]["modules"] == 7 * (2 if name == "synth" else 5)
        for k, a in got.items():
            kind, w = k.split(".", 1)
            # f32: our values exactly; the quant state's float16: ours rounded once to float16
            want = ref[w] if kind == "f32" else ref[w].astype(np.float16).astype(np.float32)
            assert np.array_equal(a, want), (name, f, k, np.abs(a - want).max())


def test_transformers_quantizes_to_the_same_file(models, bnb_results):
    jobs, _ = bnb_results
    for name, src, f, d, _ in cases(models):
        hf = uq.read_safetensors(jobs[f"quantize/{name}/{f}"]["out"] + "/model.safetensors")
        ours = uq.read_safetensors(d / "model.safetensors")
        # transformers saves no lm_head for a tied model, and we do not either
        assert set(hf) == set(ours), set(hf) ^ set(ours)
        differ = {k for k in hf
                  if hf[k].dtype != ours[k].dtype or hf[k].shape != ours[k].shape or not np.array_equal(hf[k], ours[k])}
        if not f.endswith("-dq"):
            assert not differ, (name, f, sorted(differ))
            continue
        # Double quantization: only nested absmax codes may differ (the offset, nested absmax and
        # every 4-bit code are identical), in <= 1% of blocks, where bnb 0.50's CPU table lookup
        # (65536 bins over [-1, 1]) lands within one bin of the value and ours is the nearest level.
        assert all(k.endswith(".weight.absmax") for k in differ), sorted(differ)
        total = sum(ours[k].size for k in ours if k.endswith(".weight.absmax"))
        moved = sum(int((hf[k] != ours[k]).sum()) for k in differ)
        assert moved <= 0.01 * total, (moved, total)
        orig = uq.read_safetensors(src / "model.safetensors")
        for k in differ:
            w = k[: -len(".absmax")]
            _, absmax = bnb_quantize_4bit(orig[w].astype(np.float16).astype(np.float32))
            off = np.float32(json.loads(bytes(ours[w + ".quant_state.bitsandbytes__nf4"]))["nested_offset"])
            m, na = ours[w + ".nested_quant_map"], ours[w + ".nested_absmax"]
            x = (absmax - off) * (np.float32(1) / np.repeat(na, 256)[: absmax.size])
            d_ours, d_hf = np.abs(m[ours[k]] - x), np.abs(m[hf[k]] - x)
            assert np.all(d_ours <= d_hf), k
            assert np.all(d_hf - d_ours <= 2 / 65535), (k, (d_hf - d_ours).max())


def test_transformers_loads_ours_and_logits_agree(models, bnb_results):
    jobs, info = bnb_results
    for name, _, f, _, _ in all_cases(models):
        job = jobs[f"load/{name}/{f}"]
        li = info[job["key"]]
        assert not any(li["loading"].get(k) for k in ["missing_keys", "unexpected_keys", "mismatched_keys"]), li
        linears = li["linears"]
        four_bit = [k for k, v in linears.items() if v == "Linear4bit"]
        assert len(four_bit) == 7 * (2 if name == "synth" else 5), linears
        assert linears.get("lm_head") == "Linear", linears
        r = uq.read_safetensors(job["out"])
        for a, b in [("logits", "ref_logits"), ("logits1", "ref_logits1")]:
            d = np.abs(r[a] - r[b]).max()
            assert d <= 1e-5 * max(1.0, np.abs(r[b]).max()), (name, f, a, d)


def test_perplexity_matches_transformers(models, bnb_results):
    jobs, info = bnb_results
    for f in FORMATS:
        job = jobs[f"load/stories/{f}"]
        theirs = info[job["key"]]
        text = WIKI.read_text(encoding="utf-8")[: job["chars"]]
        p = models["stories"][1] / "prefix.txt"
        p.write_text(text, encoding="utf-8")
        j = json.loads(run("ppl", job["dir"], "--text", p, "--mode", "hf", "--ctx", job["ctx"],
                           "--stride", job["stride"], "--json").stdout)
        assert j["tokens_scored"] == theirs["tokens_scored"]
        assert abs(j["ppl"] / theirs["ppl"] - 1) < 1e-4, (f, j["ppl"], theirs["ppl"])
