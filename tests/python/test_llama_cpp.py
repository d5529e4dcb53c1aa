"""llama.cpp itself (through llama-cpp-python) loads and runs the GGUF files quantkit writes."""
import json
import math
import pathlib
import subprocess
import sys

import pytest

from conftest import ROOT, SMOL_DIR, SMOL_GGUF, STORIES, WIKI, run

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (QUANTKIT_LLAMA_CPP=0)")


def load(path, **kw):
    return llama_cpp.Llama(model_path=str(path), n_ctx=kw.pop("n_ctx", 512), n_threads=2, verbose=False, **kw)


@pytest.mark.parametrize("tname", ["f32", "q8_0", "q4_0", "q5_1"])
def test_stories260k_loads_tokenizes_like_hf_and_generates(tmp_path, bin_ok, shared_ok, tname):
    tokenizers = pytest.importorskip("tokenizers")
    out = tmp_path / f"stories-{tname}.gguf"
    run("convert", STORIES, "--type", tname, "-o", out)
    llm = load(out, n_ctx=256)
    text = WIKI.read_text()[:20000]
    hf = tokenizers.Tokenizer.from_file(str(STORIES / "tokenizer.json"))
    assert llm.tokenize(text.encode(), add_bos=True) == hf.encode(text).ids
    gen = llm("Once upon a time", max_tokens=16, temperature=0)["choices"][0]["text"]
    if tname == "f32":
        # stories260K's published greedy sample
        assert gen.startswith(", there was a little girl named Lily"), gen
    else:
        assert len(gen.split()) >= 8, gen


def llama_ppl(paths, chunks):
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "llamacpp_ppl.py"), "--text", str(WIKI),
                        "--chunks", str(chunks), *map(str, paths)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    return [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]


def test_smollm2_written_by_us_scores_like_the_original_in_llama_cpp(tmp_path, bin_ok):
    if not SMOL_GGUF.exists():
        pytest.skip("SmolLM2 fixture not present")
    hf = tmp_path / "hf"
    run("export-hf", SMOL_GGUF, "-o", hf, "--tokenizer-from", SMOL_DIR)
    ours = []
    for t in ["f16", "q8_0", "q4_1"]:
        ours.append(tmp_path / f"smol-{t}.gguf")
        run("convert", hf, "--type", t, "-o", ours[-1])
    # Tokenization of our file in llama.cpp equals the HF tokenizer's.
    tokenizers = pytest.importorskip("tokenizers")
    text = WIKI.read_text()[:50000]
    hf_tok = tokenizers.Tokenizer.from_file(str(SMOL_DIR / "tokenizer.json"))
    assert load(ours[1], vocab_only=True).tokenize(text.encode(), add_bos=False) == hf_tok.encode(text).ids
    # 12 chunks of 512, as in ../shared/README.md's llama-perplexity reference figures.
    res = llama_ppl([SMOL_GGUF, *ours], chunks=12)
    base = res[0]["ppl"]
    for r in res[1:]:
        assert math.isfinite(r["ppl"]) and abs(r["ppl"] / base - 1) < 0.01, (r, base)
    # Re-quantizing to the original's own type reproduces its perplexity almost exactly.
    assert abs(res[3]["ppl"] / base - 1) < 0.003, (res[3], base)
    (pathlib.Path(ROOT) / "target").mkdir(exist_ok=True)
    (pathlib.Path(ROOT) / "target" / "llamacpp_ppl_smollm2.json").write_text(json.dumps(res, indent=1))
