"""quantkit's GGUF files read back by gguf-py, the reference GGUF implementation (PyPI `gguf`)."""
import json

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from conftest import STORIES, SMOL_DIR, SMOL_GGUF, field_value, hf_to_gguf_name, load_safetensors, permute, run

TYPES = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0, "q4_1": Q.Q4_1,
         "q5_0": Q.Q5_0, "q5_1": Q.Q5_1}
FTYPE = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9, "bf16": 32}

# The keys llama.cpp's converter writes for a Llama model with a sentencepiece-style tokenizer.json
# (LlamaModel.set_gguf_parameters + _set_vocab_llama_hf + SpecialVocab).
STORIES_KEYS = {
    "general.architecture", "general.type", "general.name", "general.file_type", "general.quantization_version",
    "llama.block_count", "llama.context_length", "llama.embedding_length", "llama.feed_forward_length",
    "llama.attention.head_count", "llama.attention.head_count_kv", "llama.rope.freq_base",
    "llama.attention.layer_norm_rms_epsilon", "llama.attention.key_length", "llama.attention.value_length",
    "llama.vocab_size", "llama.rope.dimension_count",
    "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token",
}


def stories_expected():
    """Expected GGUF tensors (name → f32 data in GGUF layout), computed here independently."""
    cfg = json.loads((STORIES / "config.json").read_text())
    hf = load_safetensors(STORIES / "model.safetensors")
    out = {}
    for name, w in hf.items():
        g = hf_to_gguf_name(name)
        if name.endswith("q_proj.weight"):
            w = permute(w, cfg["num_attention_heads"])
        if name.endswith("k_proj.weight"):
            w = permute(w, cfg["num_key_value_heads"])
        out[g] = w
    return cfg, out


@pytest.mark.parametrize("tname", list(TYPES))
def test_stories260k_every_type_reads_back_in_gguf_py(tmp_path, bin_ok, shared_ok, tname):
    out = tmp_path / f"stories-{tname}.gguf"
    run("convert", STORIES, "--type", tname, "-o", out)
    cfg, expected = stories_expected()
    r = gguf.GGUFReader(out)
    # Names and shapes follow llama.cpp's converter (tied embeddings: no output.weight).
    assert {t.name for t in r.tensors} == set(expected)
    # quantkit.* keys (recipe, fallbacks) are our additions; the rest is exactly llama.cpp's set.
    keys = {k for k in r.fields if not k.startswith("quantkit.")} - {"GGUF.version", "GGUF.tensor_count",
                                                                     "GGUF.kv_count"}
    assert keys == STORIES_KEYS
    assert field_value(r, "general.file_type") == FTYPE[tname]
    assert field_value(r, "general.architecture") == "llama"
    assert field_value(r, "llama.block_count") == cfg["num_hidden_layers"]
    assert field_value(r, "llama.attention.head_count_kv") == cfg["num_key_value_heads"]
    assert field_value(r, "llama.rope.dimension_count") == cfg["head_dim"]
    assert field_value(r, "tokenizer.ggml.model") == "llama"
    tj = json.loads((STORIES / "tokenizer.json").read_text())
    toks = field_value(r, "tokenizer.ggml.tokens")
    assert all(toks[i] == t for t, i in tj["model"]["vocab"].items())
    # Our f32 dequantization (export-hf) equals gguf-py's dequantization of every tensor, exactly.
    hf_dir = tmp_path / "hf"
    run("export-hf", out, "-o", hf_dir)
    ours = load_safetensors(hf_dir / "model.safetensors")
    for t in r.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))
        assert shape == expected[t.name].shape, t.name
        theirs = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape)
        hf_name = [n for n in ours if hf_to_gguf_name(n) == t.name][0]
        mine = ours[hf_name]
        if t.name.endswith("attn_q.weight"):
            mine = permute(mine, cfg["num_attention_heads"])
        if t.name.endswith("attn_k.weight"):
            mine = permute(mine, cfg["num_key_value_heads"])
        np.testing.assert_array_equal(mine, theirs, err_msg=t.name)
        # And the stored bytes are exactly what gguf-py's reference quantizer produces.
        want_type = t.tensor_type
        ref = gguf.quants.quantize(expected[t.name].astype(np.float32), want_type)
        assert ref.tobytes() == bytes(t.data), f"{t.name} ({want_type.name}) differs from gguf-py's quantization"


def write_test_gguf(path, tensors):
    """A minimal llama GGUF holding arbitrary f32 tensors, written by gguf-py."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(4096)
    w.add_feed_forward_length(4096)
    w.add_head_count(32)
    w.add_head_count_kv(32)
    w.add_layer_norm_rms_eps(1e-5)
    for name, a in tensors.items():
        w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_bit_exact_with_gguf_py_on_random_data_and_ggml_cos_vector(tmp_path, bin_ok):
    rng = np.random.default_rng(1234)
    n = 4096
    i = np.arange(n * 4, dtype=np.float32)
    tensors = {
        "blk.0.ffn_up.weight": rng.standard_normal((64, n)).astype(np.float32),
        "blk.0.ffn_gate.weight": (rng.uniform(-1, 1, (16, n)) * rng.choice([1e-3, 1, 40], (16, 1))).astype(np.float32),
        # heavy tails, exact ties of the absolute maximum, negative-only and constant blocks
        "blk.0.ffn_down.weight": np.concatenate([
            rng.standard_cauchy((4, n)), np.tile([-2.0, 2.0], (4, n // 2)),
            -np.abs(rng.standard_normal((4, n))), np.full((4, n), 0.37)]).astype(np.float32),
        # ggml's test-quantize-fns vector: 0.1 + 2 cos(i)
        "blk.0.attn_q.weight": (0.1 + 2 * np.cos(i)).astype(np.float32).reshape(4, n),
    }
    src = tmp_path / "random.gguf"
    write_test_gguf(src, tensors)
    for tname, qtype in TYPES.items():
        out = tmp_path / f"random-{tname}.gguf"
        run("convert", src, "--type", tname, "--allow-partial", "-o", out)
        r = gguf.GGUFReader(out)
        for t in r.tensors:
            assert t.tensor_type == qtype, (t.name, t.tensor_type)
            ref = gguf.quants.quantize(tensors[t.name], qtype)
            assert ref.tobytes() == bytes(t.data), f"{tname}: {t.name} differs from gguf-py"
            if t.name == "blk.0.attn_q.weight":
                # ggml's test-quantize-fns metric on its vector (first 4096 values): array_rmse is
                # sqrt(sum of squared errors) / n, with the ceiling MAX_QUANTIZATION_TOTAL_ERROR = 0.002.
                deq = gguf.quants.dequantize(t.data, qtype).reshape(-1)[:4096].astype(np.float64)
                err = float(np.sqrt(np.sum((deq - tensors[t.name].reshape(-1)[:4096]) ** 2)) / 4096)
                assert err < 0.002, (tname, err)


def test_tq2_0_bit_exact_with_gguf_py(tmp_path, bin_ok):
    """Ternary TQ2_0 (a type no llama-quantize mix names: chosen per tensor) against gguf-py's
    quantizer, then dequantized by gguf-py to the values our engine reads."""
    rng = np.random.default_rng(7)
    tensors = {"blk.0.ffn_up.weight": rng.standard_normal((8, 1024)).astype(np.float32),
               "blk.0.ffn_down.weight": (rng.uniform(-1, 1, (4, 512)) * [[1e-3], [1], [30], [0]]).astype(np.float32)}
    src = tmp_path / "t.gguf"
    write_test_gguf(src, tensors)
    out = tmp_path / "t-tq2_0.gguf"
    run("convert", src, "--type", "q8_0", "--tensor-type", ".*=tq2_0", "--allow-partial", "-o", out)
    r = gguf.GGUFReader(out)
    for t in r.tensors:
        assert t.tensor_type == Q.TQ2_0, (t.name, t.tensor_type)
        ref = gguf.quants.quantize(tensors[t.name], Q.TQ2_0)
        assert ref.tobytes() == bytes(t.data), f"{t.name} differs from gguf-py"


@pytest.fixture(scope="module")
def smol_export(tmp_path_factory, bin_ok):
    if not SMOL_GGUF.exists():
        pytest.skip("SmolLM2 fixture not present")
    d = tmp_path_factory.mktemp("smol")
    run("export-hf", SMOL_GGUF, "-o", d / "hf")
    return d / "hf"


def test_smollm2_export_then_convert_f32_equals_gguf_dequantization(tmp_path, smol_export):
    cfg = json.loads((smol_export / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (576, 30, 9, 3)
    assert cfg["tie_word_embeddings"] is True and cfg["vocab_size"] == 49152 and cfg["rope_theta"] == 100000
    hf = load_safetensors(smol_export / "model.safetensors")
    assert "model.layers.29.self_attn.q_proj.weight" in hf and "lm_head.weight" not in hf
    assert hf["model.layers.0.mlp.down_proj.weight"].shape == (576, 1536)
    out = tmp_path / "smol-f32.gguf"
    run("convert", smol_export, "--type", "f32", "-o", out)
    orig = gguf.GGUFReader(SMOL_GGUF)
    ours = {t.name: t for t in gguf.GGUFReader(out).tensors}
    assert set(ours) == {t.name for t in orig.tensors}
    for t in orig.tensors:
        want = gguf.quants.dequantize(t.data, t.tensor_type)
        got = np.asarray(ours[t.name].data)
        assert ours[t.name].tensor_type == Q.F32
        np.testing.assert_array_equal(got.reshape(want.shape), want, err_msg=t.name)


TOKENIZER_KEYS = ["tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                  "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                  "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id",
                  "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_space_prefix", "tokenizer.chat_template"]


@pytest.mark.parametrize("tokenizer", ["original", "rebuilt"])
def test_smollm2_gguf_metadata_matches_llama_cpp_converter(tmp_path, bin_ok, smol_export, tokenizer):
    """Converting SmolLM2's HF folder reproduces the llama.cpp-made file's hyperparameters and vocabulary,
    with the original tokenizer files and with the ones export-hf rebuilt from the GGUF vocabulary."""
    src = smol_export
    if tokenizer == "original":
        src = tmp_path / "hf-orig-tok"
        run("export-hf", SMOL_GGUF, "-o", src, "--tokenizer-from", SMOL_DIR)
    out = tmp_path / "smol-q8_0.gguf"
    run("convert", src, "--type", "q8_0", "-o", out)
    a, b = gguf.GGUFReader(SMOL_GGUF), gguf.GGUFReader(out)
    for key in [k for k in a.fields if k.startswith("llama.")] + TOKENIZER_KEYS:
        assert field_value(b, key) == field_value(a, key), key
    assert field_value(b, "general.file_type") == 7


def test_rebuilt_tokenizer_encodes_like_the_original(smol_export, shared_ok):
    tokenizers = pytest.importorskip("tokenizers")
    text = (shared_ok / "data" / "wikitext-2-raw" / "wiki.test.raw").read_text()[:200_000]
    orig = tokenizers.Tokenizer.from_file(str(SMOL_DIR / "tokenizer.json"))
    rebuilt = tokenizers.Tokenizer.from_file(str(smol_export / "tokenizer.json"))
    assert rebuilt.encode(text).ids == orig.encode(text).ids
    sample = "Hello <|im_start|>user\nwhat's 1234+56?<|im_end|>"
    assert rebuilt.encode(sample).ids == orig.encode(sample).ids
    assert rebuilt.decode(orig.encode(text[:5000]).ids) == text[:5000]


def test_iq4_and_fp4_read_back_in_gguf_py(tmp_path, bin_ok):
    """IQ4_NL, IQ4_XS, MXFP4 and NVFP4 tensors (random data with heavy tails, all-zero, constant and tiny
    rows): gguf-py dequantizes our bytes to exactly the values our own dequantization gives, and
    MXFP4's bytes equal gguf-py's reference quantizer's (gguf-py has no IQ4 quantizer: their bytes
    are checked against llama.cpp's in test_mixes.py)."""
    rng = np.random.default_rng(11)
    n = 1024
    base = {
        "blk.0.ffn_up.weight": rng.standard_normal((16, n)),
        "blk.0.ffn_down.weight": np.concatenate([rng.standard_cauchy((4, n)), np.zeros((2, n)),
                                                 np.full((2, n), -0.37), rng.standard_normal((4, n)) * 1e-7]),
        "blk.0.attn_q.weight": (0.1 + 2 * np.cos(np.arange(4 * n))).reshape(4, n),
    }
    tensors = {k: v.astype(np.float32) for k, v in base.items()}
    src = tmp_path / "t.gguf"
    write_test_gguf(src, tensors)
    for tname, qtype in {"iq4_nl": Q.IQ4_NL, "iq4_xs": Q.IQ4_XS, "mxfp4": Q.MXFP4, "nvfp4": Q.NVFP4}.items():
        out = tmp_path / f"t-{tname}.gguf"
        run("convert", src, "--type", "q8_0", "--tensor-type", f".*={tname}", "--allow-partial", "-o", out)
        back = tmp_path / f"t-{tname}-f32.gguf"
        run("convert", out, "--type", "f32", "--allow-partial", "-o", back)
        ours = {t.name: np.array(t.data) for t in gguf.GGUFReader(back).tensors}
        for t in gguf.GGUFReader(out).tensors:
            assert t.tensor_type == qtype, (t.name, t.tensor_type)
            theirs = gguf.quants.dequantize(t.data, qtype).reshape(tensors[t.name].shape)
            np.testing.assert_array_equal(ours[t.name].reshape(theirs.shape), theirs, err_msg=f"{tname} {t.name}")
            if qtype == Q.MXFP4:
                ref = gguf.quants.quantize(tensors[t.name], qtype)
                assert ref.tobytes() == bytes(t.data), f"{t.name} differs from gguf-py's MXFP4"
            # 4-bit non-linear codes: well under a uniform 3-bit grid's error on Gaussian rows.
            if t.name == "blk.0.ffn_up.weight":
                x = tensors[t.name]
                rel = np.sqrt(np.mean((theirs - x) ** 2) / np.mean(x ** 2))
                assert rel < {"iq4_nl": 0.09, "iq4_xs": 0.09, "mxfp4": 0.13, "nvfp4": 0.13}[tname], (tname, rel)
