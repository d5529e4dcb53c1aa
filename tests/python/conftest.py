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
