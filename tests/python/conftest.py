"""Shared fixtures: the quantkit binary, the ../shared fixtures, helpers that read files
independently of quantkit (numpy safetensors reader, gguf-py)."""
import json
import os
import pathlib
import subprocess

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SHARED = pathlib.Path(os.environ.get("QUANTKIT_SHARED", ROOT.parent / "shared"))
BIN = pathlib.Path(os.environ.get("QUANTKIT_BIN", ROOT / "target" / "release" / "quantkit"))

STORIES = SHARED / "models" / "stories260K"
SMOL_DIR = SHARED / "models" / "smollm2-135m"
SMOL_GGUF = SMOL_DIR / "SmolLM2-135M-Instruct.Q4_1.gguf"
WIKI = SHARED / "data" / "wikitext-2-raw" / "wiki.test.raw"


def run(*args, check=True):
    p = subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"quantkit {' '.join(map(str, args))} failed ({p.returncode}):\n{p.stderr}")
    return p


def load_safetensors(path):
    """A minimal independent safetensors reader (numpy), not quantkit's."""
    raw = pathlib.Path(path).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    dtypes = {"F32": np.float32, "F16": np.float16}
    out = {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        buf = raw[8 + n + b:8 + n + e]
        if info["dtype"] == "BF16":
            a = (np.frombuffer(buf, np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            a = np.frombuffer(buf, dtypes[info["dtype"]]).astype(np.float32)
        out[name] = a.reshape(info["shape"])
    return out


def permute(w, n_head):
    """llama.cpp's converter permutation of q/k rows (numpy transcription of LlamaModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_to_gguf_name(name):
    g = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
    layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    stem, suffix = name.rsplit(".", 1)
    if stem in g:
        return f"{g[stem]}.{suffix}"
    parts = stem.split(".")
    assert parts[:2] == ["model", "layers"], name
    return f"blk.{parts[2]}.{layer['.'.join(parts[3:])]}.{suffix}"


def field_value(reader, key):
    """A GGUF metadata value through gguf-py."""
    import gguf
    f = reader.fields[key]
    t = f.types
    if t[0] == gguf.GGUFValueType.ARRAY:
        if t[-1] == gguf.GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        return [f.parts[i].tolist()[0] for i in f.data]
    if t[0] == gguf.GGUFValueType.STRING:
        return bytes(f.parts[-1]).decode("utf-8")
    return f.parts[-1].tolist()[0]


@pytest.fixture(scope="session")
def bin_ok():
    if not BIN.exists():
        pytest.fail(f"{BIN} not built (run cargo build --release)")
    return BIN


@pytest.fixture(scope="session")
def shared_ok():
    if not STORIES.exists():
        pytest.skip(f"{SHARED} fixtures not present")
    return SHARED


def save_safetensors(path, tensors):
    """A minimal independent safetensors writer (numpy, f32)."""
    header, offset, blobs = {}, 0, []
    for name, a in tensors.items():
        b = np.ascontiguousarray(a, dtype=np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for b in blobs:
            f.write(b)


def synthetic_checkpoint(d, *, arch, model_type, tokenizer_dir, w, h, f, layers, heads, kv, vocab,
                         tied, biases, **config):
    """Write an HF Llama-family folder with weights drawn from `w(*shape)`; returns the tensors."""
    hd = h // heads
    cfg = {"architectures": [arch], "model_type": model_type, "hidden_size": h, "intermediate_size": f,
           "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
           "vocab_size": vocab, "tie_word_embeddings": tied, "bos_token_id": 1, "eos_token_id": 2,
           "torch_dtype": "float32", **config}
    (d / "config.json").write_text(json.dumps(cfg))
    for n in ["tokenizer.json", "tokenizer_config.json"]:
        (d / n).write_bytes((tokenizer_dir / n).read_bytes())
    t = {"model.embed_tokens.weight": w(vocab, h), "model.norm.weight": 1 + w(h)}
    if not tied:
        t["lm_head.weight"] = w(vocab, h)
    for i in range(layers):
        p = f"model.layers.{i}."
        t.update({p + "input_layernorm.weight": 1 + w(h), p + "post_attention_layernorm.weight": 1 + w(h)})
        for proj, rows in [("q", heads * hd), ("k", kv * hd), ("v", kv * hd)]:
            t[p + f"self_attn.{proj}_proj.weight"] = w(rows, h)
            if biases:
                t[p + f"self_attn.{proj}_proj.bias"] = w(rows)
        t.update({p + "self_attn.o_proj.weight": w(h, heads * hd), p + "mlp.gate_proj.weight": w(f, h),
                  p + "mlp.up_proj.weight": w(f, h), p + "mlp.down_proj.weight": w(h, f)})
    save_safetensors(d / "model.safetensors", t)
    return t


def outlier_weights(rng):
    """A weight generator: N(0, 0.02²) with rare heavy-tailed outliers, as real weights have."""
    def w(*s):
        a = rng.standard_normal(s) * 0.02
        a += (rng.random(s) < 0.002) * rng.standard_normal(s) * 0.3
        return a.astype(np.float32)
    return w


@pytest.fixture(scope="session")
def qwen2_dir(tmp_path_factory):
    """A small synthetic Qwen2ForCausalLM checkpoint (random weights, q/k/v biases) with SmolLM2's
    BPE tokenizer, to exercise the qwen2 path (no q/k permutation, biases, gpt2 vocabulary)."""
    if not SMOL_DIR.exists():
        pytest.skip("SmolLM2 tokenizer fixture not present")
    d = tmp_path_factory.mktemp("qwen2")
    rng = np.random.default_rng(7)
    t = synthetic_checkpoint(d, arch="Qwen2ForCausalLM", model_type="qwen2", tokenizer_dir=SMOL_DIR,
                             w=lambda *s: (rng.standard_normal(s) * 0.05).astype(np.float32),
                             h=64, f=128, layers=2, heads=4, kv=2, vocab=49152, tied=True, biases=True,
                             max_position_embeddings=1024, rms_norm_eps=1e-6, rope_theta=1000000.0)
    return d, t


@pytest.fixture(scope="session")
def llama256_dir(tmp_path_factory):
    """A synthetic Llama whose every row is a multiple of 256 (so k-quants apply everywhere), with
    stories260K's tokenizer: weights are random with heavy-tailed outliers, as real weights have."""
    if not STORIES.exists():
        pytest.skip("stories260K fixture not present")
    d = tmp_path_factory.mktemp("llama256")
    synthetic_checkpoint(d, arch="LlamaForCausalLM", model_type="llama", tokenizer_dir=STORIES,
                         w=outlier_weights(np.random.default_rng(11)),
                         h=256, f=768, layers=2, heads=4, kv=2, vocab=512, tied=False, biases=False,
                         max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=10000.0)
    return d
