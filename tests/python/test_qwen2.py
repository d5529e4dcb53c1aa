"""The Qwen2 path on a synthetic checkpoint: arch keys, biases, no q/k permutation, exact round trip."""
import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from conftest import field_value, hf_to_gguf_name, load_safetensors, run


def test_qwen2_converts_like_llama_cpp_and_roundtrips(tmp_path, bin_ok, qwen2_dir):
    src, weights = qwen2_dir
    out = tmp_path / "qwen2.gguf"
    run("convert", src, "--type", "f32", "-o", out)
    r = gguf.GGUFReader(out)
    assert field_value(r, "general.architecture") == "qwen2"
    assert field_value(r, "qwen2.attention.head_count_kv") == 2
    assert field_value(r, "qwen2.rope.freq_base") == 1000000.0
    # Qwen2Model writes neither of these (LlamaModel does), nor add_space_prefix (gpt2 path).
    for k in ["qwen2.vocab_size", "qwen2.rope.dimension_count", "tokenizer.ggml.add_space_prefix"]:
        assert k not in r.fields, k
    assert field_value(r, "tokenizer.ggml.pre") == "smollm"
    tensors = {t.name: t for t in r.tensors}
    assert tensors["blk.0.attn_q.bias"].tensor_type == Q.F32
    for name, w in weights.items():
        t = tensors[hf_to_gguf_name(name)]
        # No permutation for qwen2: the data is HF's, row for row.
        np.testing.assert_array_equal(np.asarray(t.data).reshape(w.shape), w, err_msg=name)
    back = tmp_path / "hf"
    run("export-hf", out, "-o", back)
    import json
    cfg = json.loads((back / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen2ForCausalLM"] and cfg["num_key_value_heads"] == 2
    rt = load_safetensors(back / "model.safetensors")
    assert set(rt) == set(weights)
    for name, w in weights.items():
        np.testing.assert_array_equal(rt[name], w, err_msg=name)


def test_qwen2_runs_in_llama_cpp(tmp_path, bin_ok, qwen2_dir):
    llama_cpp = pytest.importorskip("llama_cpp")
    src, _ = qwen2_dir
    for t in ["f16", "q8_0"]:
        out = tmp_path / f"qwen2-{t}.gguf"
        run("convert", src, "--type", t, "-o", out)
        llm = llama_cpp.Llama(model_path=str(out), n_ctx=128, n_threads=2, verbose=False, logits_all=True)
        toks = llm.tokenize(b"Hello world, this is a test.", add_bos=False)
        llm.eval(toks)
        logits = np.array(llm.scores[: len(toks)])
        assert logits.shape[1] == 49152 and np.isfinite(logits).all()
