"""The engine's perplexity and KL divergence against llama.cpp's own numbers (llama-cpp-python,
llama-perplexity's method) on the same GGUF files: stories260K f32, Q4_0 and the non-linear 4-bit
types (IQ4_NL, IQ4_XS, MXFP4, NVFP4), wiki.test.raw."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT, STORIES, WIKI, run


@pytest.fixture(scope="module")
def stories_files(tmp_path_factory, bin_ok, shared_ok):
    d = tmp_path_factory.mktemp("engine")
    f32, q4 = d / "f32.gguf", d / "q4_0.gguf"
    run("convert", STORIES, "--type", "f32", "-o", f32)
    run("convert", STORIES, "--type", "q4_0", "-o", q4)
    return f32, q4


def llama(script, *args):
    pytest.importorskip("llama_cpp")
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *map(str, args)],
                       capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_ppl_equals_llama_perplexity(stories_files):
    f32, _ = stories_files
    theirs = llama("llamacpp_ppl.py", "--text", WIKI, "--chunks", 20, f32)
    ours = json.loads(run("ppl", f32, "--text", WIKI, "--chunks", 20, "--json").stdout)
    assert ours["tokens_scored"] == theirs["tokens_scored"]
    assert abs(ours["ppl"] / theirs["ppl"] - 1) < 0.005, (ours["ppl"], theirs["ppl"])


# How each quantized file is made from the f32 one.
KLD_FILES = {"q4_0": [], "iq4_nl": ["--type", "iq4_nl"], "iq4_xs": ["--type", "iq4_xs"],
             "mxfp4": ["--type", "q8_0", "--tensor-type", "(attn|ffn)_.*=mxfp4"], "nvfp4": ["--type", "nvfp4"]}


@pytest.mark.parametrize("tname", list(KLD_FILES))
def test_kld_equals_llama_cpp_kl_divergence(tmp_path, stories_files, tname):
    f32, q4 = stories_files
    if KLD_FILES[tname]:
        q4 = tmp_path / f"{tname}.gguf"
        run("convert", f32, *KLD_FILES[tname], "-o", q4)
    theirs = llama("llamacpp_kld.py", "--text", WIKI, "--chunks", 20, f32, q4)
    ours = json.loads(run("kld", q4, "--base", f32, "--text", WIKI, "--chunks", 20, "--json").stdout)
    assert ours["tokens_scored"] == theirs["tokens_scored"]
    assert ours["mean_kld"] > 0.01
    assert abs(ours["mean_kld"] / theirs["mean_kld"] - 1) < 0.02, (ours["mean_kld"], theirs["mean_kld"])
    assert abs(ours["same_top_p"] - theirs["same_top_p"]) < 0.02
