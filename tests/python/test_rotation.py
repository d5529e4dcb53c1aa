"""QuaRot's offline rotation seen by the real loaders: a model rotated by `--rotate hadamard` is an
ordinary checkpoint with the original's function —
* llama.cpp (llama-cpp-python, llama-perplexity's method) scores the rotated f32 GGUF at the
  original's perplexity (within 0.1 %) on wiki.test.raw, for stories260K and SmolLM2;
* transformers, loading the rotated model exported as safetensors (`export-hf`), gives the
  original's logits (within 1e-4 of each position's logit scale).
(The engine's side: tests/rotate.rs.)"""
import json
import subprocess
import sys

import pytest

from conftest import ROOT, SMOL_GGUF, STORIES, WIKI, run
from test_quantized_layouts import ct_python  # noqa: F401  (the fixture)


def llama_ppl(*files, chunks):
    pytest.importorskip("llama_cpp")
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "llamacpp_ppl.py"), "--text", str(WIKI),
                        "--chunks", str(chunks), *map(str, files)], capture_output=True, text=True, check=True)
    return [json.loads(line) for line in p.stdout.strip().splitlines()[-len(files):]]


@pytest.mark.parametrize("model,chunks", [(STORIES, 20), (SMOL_GGUF, 4)], ids=["stories260K", "smollm2"])
def test_llama_cpp_scores_the_rotated_gguf_as_the_original(tmp_path, bin_ok, shared_ok, model, chunks):
    orig, rot = tmp_path / "orig.gguf", tmp_path / "rot.gguf"
    run("convert", model, "--type", "f32", "-o", orig)
    run("convert", model, "--type", "f32", "--rotate", "hadamard", "-o", rot)
    a, b = llama_ppl(orig, rot, chunks=chunks)
    assert a["tokens_scored"] == b["tokens_scored"]
    assert abs(b["ppl"] / a["ppl"] - 1) < 1e-3, (a["ppl"], b["ppl"])


TF_SCRIPT = r"""
import json, sys
import torch
from transformers import AutoModelForCausalLM
spec = json.loads(sys.argv[1])
torch.manual_seed(0)
ids = torch.tensor([spec["tokens"]])
out = {}
for k in ("orig", "rot"):
    m = AutoModelForCausalLM.from_pretrained(spec[k], torch_dtype=torch.float32)
    with torch.no_grad():
        out[k] = m(ids).logits[0]
gap = ((out["rot"] - out["orig"]).abs().amax(-1) / out["orig"].abs().amax(-1)).max().item()
print(json.dumps({"gap": gap, "tied": bool(m.config.tie_word_embeddings)}))
"""


def test_transformers_runs_the_rotated_safetensors_as_the_original(tmp_path, bin_ok, shared_ok, ct_python):
    rot_gguf, rot_hf = tmp_path / "rot.gguf", tmp_path / "rot-hf"
    run("convert", STORIES, "--type", "f32", "--rotate", "hadamard", "-o", rot_gguf)
    run("export-hf", rot_gguf, "-o", rot_hf, "--dtype", "f32")
    cfg = json.loads((rot_hf / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False  # the folded output norm unties the output
    spec = {"orig": str(STORIES), "rot": str(rot_hf), "tokens": [1] + [(i * 37 + 5) % 512 for i in range(40)]}
    p = subprocess.run([ct_python, "-c", TF_SCRIPT, json.dumps(spec)], capture_output=True, text=True)
    if p.returncode != 0:
        raise AssertionError(f"transformers failed:\n{p.stderr[-4000:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["gap"] < 1e-4, r
    assert r["tied"] is False


R4_SCRIPT = r"""
import json, sys, math, warnings
warnings.filterwarnings("ignore")
import torch
torch.set_num_threads(1)
from safetensors.torch import load_file
from compressed_tensors.transform import TransformConfig
from transformers import AutoModelForCausalLM, CompressedTensorsConfig
spec = json.loads(sys.argv[1])
d = spec["dir"]
cfg = json.load(open(d + "/config.json"))
tc = TransformConfig.model_validate(cfg["quantization_config"]["transform_config"])  # the schema accepts ours
h = load_file(d + "/model.safetensors")["model.layers.0.mlp.down_proj.R4_input.weight"].double()
n = h.shape[0]
ortho = (h @ h.T / n - torch.eye(n, dtype=torch.float64)).abs().max().item()
model = AutoModelForCausalLM.from_pretrained(d, quantization_config=CompressedTensorsConfig(dequantize=True),
                                             dtype=torch.float32)
tokens = torch.tensor(spec["tokens"])
with torch.no_grad():
    plain = torch.log_softmax(model(tokens).logits.float(), -1)
    # What the transform config says (and vLLM does): x <- x @ H / sqrt(n) before every down_proj.
    hf = h.float() / math.sqrt(n)
    hooks = [m.register_forward_pre_hook(lambda mod, a: (a[0] @ hf,)) for name, m in model.named_modules()
             if name.endswith("mlp.down_proj")]
    hooked = torch.log_softmax(model(tokens).logits.float(), -1)
torch.save({"plain": plain, "hooked": hooked}, spec["out"])
print(json.dumps({"groups": list(tc.config_groups), "ortho": ortho, "hooks": len(hooks), "n": n}))
"""


def test_quarot_checkpoint_carries_r4_as_a_compressed_tensors_transform(tmp_path, bin_ok, shared_ok, ct_python):
    """A `quarot` compressed-tensors checkpoint states R4 in compressed-tensors' own transform config
    (validated by the package) with the ±1 matrix stored as compressed-tensors stores a shared transform;
    applying it as that config says (x @ H / √n before every down_proj, what vLLM does) gives our engine's
    log-probabilities, and transformers 5.25 — which ignores transform configs — does not."""
    import numpy as np
    from test_ct8 import read_full_base
    out = tmp_path / "q"
    run("quantize", STORIES, "--rotate", "quarot", "--method", "rtn", "--bits", 8, "--group", -1,
        "-f", "ct-w8a8", "-o", out)
    d = out / "ct-w8a8"
    base = tmp_path / "engine.qklogits"
    text = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
    run("kld", "--base", d, "--text", text, "--ctx", 64, "--chunks", 2, "--top-k", 0, "--save-base", base,
        "--dequantize")
    ctx, toks, ours = read_full_base(base)
    res = tmp_path / "r4.pt"
    p = subprocess.run([ct_python, "-c", R4_SCRIPT, json.dumps({"dir": str(d), "tokens": toks.tolist(),
                                                               "out": str(res)})], capture_output=True, text=True)
    if p.returncode != 0:
        raise AssertionError(f"compressed-tensors / transformers failed:\n{p.stderr[-4000:]}")
    info = json.loads(p.stdout.strip().splitlines()[-1])
    assert info["groups"] == ["R4"] and info["n"] == 172 and info["hooks"] == 5 and info["ortho"] < 1e-9, info
    cp = subprocess.run([ct_python, "-c", "import torch,sys,numpy as np; r=torch.load(sys.argv[1]); "
                         "np.save(sys.argv[2], r['hooked'].numpy()); np.save(sys.argv[3], r['plain'].numpy())",
                         str(res), str(tmp_path / "hooked.npy"), str(tmp_path / "plain.npy")], capture_output=True, text=True)
    assert cp.returncode == 0, cp.stderr
    first = ctx // 2
    hooked = np.load(tmp_path / "hooked.npy").astype(np.float64)[:, first:ctx - 1, :]
    plain = np.load(tmp_path / "plain.npy").astype(np.float64)[:, first:ctx - 1, :]
    mask = hooked > -29.0
    assert np.abs(hooked - ours)[mask].max() < 3e-4
    assert np.abs(plain - ours)[mask].max() > 0.05  # without R4 the function is lost
