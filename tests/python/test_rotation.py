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
