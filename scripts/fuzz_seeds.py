#!/usr/bin/env python3
"""Write the small committed seed corpus of the fuzz targets (tests/fuzz/corpus/<target>/).

Seeds are tiny but *valid* files of each kind (written here with gguf-py and by hand, not by
quantkit), so that mutation starts from inputs that reach deep into the parsers: a GGUF with one
tensor of every block format and llama hyperparameters, GGUF tokenizers (BPE and SentencePiece),
safetensors files, config.json variants (plain, Qwen2, RoPE scaling, GPTQ/AWQ/compressed-tensors
quantization_config), an index, and imatrix files in both formats.

    .venv/bin/python scripts/fuzz_seeds.py tests/fuzz/corpus
"""
import json
import pathlib
import struct
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

rng = np.random.default_rng(0)


def llama_meta(w, n_embd=32, n_head=4, n_kv=2, n_layer=1, vocab=16):
    w.add_name("seed")
    w.add_context_length(64)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(64)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(vocab)


def tokenizer_meta(w, kind):
    if kind == "gpt2":
        toks = ["<s>", "</s>", "a", "b", "c", "d", "Ġ", "Ġa", "ab", "cd", "abcd", "Ġb", "!", "1", "2", "3"]
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("smollm")
        w.add_token_list(toks)
        w.add_token_types([3, 3] + [1] * (len(toks) - 2))
        w.add_token_merges(["Ġ a", "a b", "c d", "ab cd", "Ġ b"])
    else:
        toks = ["<unk>", "<s>", "</s>", "<0x0A>", "▁", "▁a", "a", "b", "c", "▁the", "h", "e", "t", "<0x41>", "▁b", "ab"]
        w.add_tokenizer_model("llama")
        w.add_token_list(toks)
        w.add_token_scores([0.0, 0.0, 0.0, 0.0] + [-float(i) for i in range(len(toks) - 4)])
        w.add_token_types([2, 3, 3, 6] + [1] * (len(toks) - 4))
    w.add_bos_token_id(1 if kind != "gpt2" else 0)
    w.add_eos_token_id(2 if kind != "gpt2" else 1)
    w.add_add_bos_token(True)


def write_gguf(path, build):
    w = gguf.GGUFWriter(str(path), "llama")
    build(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def all_types(w):
    llama_meta(w)
    # One small tensor of each block format, rows of one block (raw bytes, random content).
    for ty in [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL,
               T.IQ4_XS, T.MXFP4]:
        bs, ts = gguf.GGML_QUANT_SIZES[ty]
        raw = rng.integers(0, 256, size=(2, ts), dtype=np.uint8)
        w.add_tensor(f"blk.0.{ty.name.lower()}.weight", raw, raw_dtype=ty)
    w.add_tensor("token_embd.weight", rng.standard_normal((16, 32)).astype(np.float32))
    w.add_tensor("output_norm.weight", np.ones(32, dtype=np.float16))


def tiny_model(w):
    llama_meta(w, n_embd=32, n_head=4, n_kv=2)
    tokenizer_meta(w, "gpt2")
    shapes = {
        "token_embd.weight": (16, 32), "output_norm.weight": (32,),
        "blk.0.attn_norm.weight": (32,), "blk.0.ffn_norm.weight": (32,),
        "blk.0.attn_q.weight": (32, 32), "blk.0.attn_k.weight": (16, 32), "blk.0.attn_v.weight": (16, 32),
        "blk.0.attn_output.weight": (32, 32), "blk.0.ffn_gate.weight": (64, 32),
        "blk.0.ffn_up.weight": (64, 32), "blk.0.ffn_down.weight": (32, 64),
    }
    for n, s in shapes.items():
        a = rng.standard_normal(s).astype(np.float32) * 0.1
        if len(s) == 2 and n.startswith("blk"):
            q = np.clip(np.round(a / 0.01), -127, 127).astype(np.int8)
            blocks = np.concatenate(
                [np.full((s[0], 1), 0.01, np.float16).view(np.uint8), q.view(np.uint8)], axis=1
            )  # one Q8_0 block per row (32 columns); the 64-wide row takes two
            if s[1] == 64:
                blocks = np.concatenate([blocks[:, :34], blocks[:, :34]], axis=1)
            w.add_tensor(n, np.ascontiguousarray(blocks[:, : 34 * (s[1] // 32)]), raw_dtype=T.Q8_0)
        else:
            w.add_tensor(n, a)


def tokenizer_only(kind):
    def build(w):
        llama_meta(w)
        tokenizer_meta(w, kind)
    return build


def imatrix_gguf(w):
    w.add_string("general.type", "imatrix")
    w.add_array("imatrix.datasets", ["seed.txt"])
    w.add_uint32("imatrix.chunk_count", 2)
    w.add_uint32("imatrix.chunk_size", 64)
    for n in ["blk.0.attn_q.weight", "blk.0.ffn_down.weight"]:
        w.add_tensor(f"{n}.in_sum2", rng.random((1, 32)).astype(np.float32))
        w.add_tensor(f"{n}.counts", np.array([[2.0]], dtype=np.float32))


def imatrix_legacy():
    out = struct.pack("<i", 2)
    for n in ["blk.0.attn_q.weight", "blk.0.ffn_down.weight"]:
        b = n.encode()
        vals = rng.random(8).astype(np.float32)
        out += struct.pack("<i", len(b)) + b + struct.pack("<ii", 3, len(vals)) + vals.tobytes()
    out += struct.pack("<i", 3) + struct.pack("<i", 8) + b"seed.txt"
    return out


def safetensors(tensors, meta=None):
    header, blobs, off = {}, [], 0
    if meta:
        header["__metadata__"] = meta
    for name, (dtype, arr) in tensors.items():
        b = arr.tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def kld_bases():
    """KLD base files, laid out here by hand from the format descriptions (not by quantkit): vocab 5
    (odd: llama.cpp pads each row to an even count), ctx 4 (one scored position per chunk), 2 chunks."""
    r = np.random.default_rng(5)
    vocab, ctx, chunks = 5, 4, 2
    rows = chunks * (ctx - 1 - ctx // 2)
    toks = r.integers(0, vocab, size=chunks * ctx).astype("<u4")
    logits = r.standard_normal((rows, vocab)) * 3
    lp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    full = b"QKLOGIT1" + struct.pack("<3I", vocab, ctx, len(toks)) + toks.tobytes()
    full += np.round((np.maximum(lp, -30) + 30) / (30 / 65535)).astype("<u2").tobytes()
    topk = {}
    for k, dt, tail in [(2, 0, 0), (5, 1, 0), (2, 1, 3)]:
        b = b"QKLOGIT2" + struct.pack("<6I", vocab, ctx, len(toks), k, dt, tail) + toks.tobytes()
        for i in range(rows):
            order = sorted(range(vocab), key=lambda j: (-lp[i, j], j))
            order = order[:k] + order[k:k + 1] * tail  # tail samples: any tokens outside the top k
            b += np.array(order, dtype="<u4").tobytes()
            b += lp[i, order].astype("<f4" if dt == 0 else "<f2").tobytes()
            target = toks[(i + 1) * ctx - 1]
            rest = float(np.exp(lp[i, [j for j in range(vocab) if j not in order[:k]]]).sum())
            b += struct.pack("<ff", lp[i, target], rest)
        topk[(k, tail)] = b
    llama = b"_logits_" + struct.pack("<Iii", ctx, vocab, chunks) + toks.astype("<i4").tobytes()
    nv = 2 * ((vocab + 1) // 2) + 4
    for i in range(rows):
        mx, mn = logits[i].max(), max(logits[i].min(), logits[i].max() - 16)
        scale = np.float32((mx - mn) / 65535)
        lse = np.log(np.exp(logits[i] - mx).sum())
        codes = np.where(logits[i] > mn, np.round((logits[i] - mn) / scale), 0).astype("<u2")
        row = struct.pack("<ff", scale, mn - mx - lse) + codes.tobytes()
        llama += row + b"\0" * (2 * nv - len(row))
    return {"full.qklogits": full, "top2-f32.qklogits": topk[(2, 0)], "top5-f16.qklogits": topk[(5, 0)],
            "top2-tail3-f16.qklogits": topk[(2, 3)], "llama.kldbase": llama}


CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32,
    "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 1,
    "vocab_size": 16, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 64,
    "tie_word_embeddings": True, "torch_dtype": "float32",
}


def calib_resid():
    """A residual checkpoint of `quantize`'s pass: 1 block done, 2 sequences of 8 values."""
    vals = np.linspace(-1, 1, 16, dtype=np.float32)
    return b"QKRESID1" + struct.pack("<3Q", 1, 2, 8) + vals.tobytes()


def calib_layer():
    """A block checkpoint: a Q8_0 tensor (1 row of 32) and a 4-bit 2×4 integer matrix."""
    q8 = struct.pack("<e", 0.01) + bytes(range(32))
    codes = bytes([1, 2, 3, 4, 5, 6, 7, 8])
    params = struct.pack("<2f", 0.5, 0.25) + bytes([8, 8])
    header = {
        "layer": 0,
        "reports": [],
        "imatrix": {"blk.0.attn_q.weight": [[1.0, 2.0], 7]},
        "norms": {"blk.0.attn_norm.weight": [1.0, 0.5]},
        "tensors": [
            {"name": "blk.0.attn_k.weight", "rows": 1, "cols": 32, "offset": 0, "len": len(q8),
             "kind": {"Gguf": {"ty": 8}}},
            {"name": "blk.0.attn_q.weight", "rows": 2, "cols": 4, "offset": len(q8), "len": len(codes) + len(params),
             "kind": {"Int": {"bits": 4, "sym": True, "group": None, "zero_min": 0, "groups": 1, "g_idx": 0}}},
        ],
    }
    j = json.dumps(header).encode()
    return b"QKLAYER1" + struct.pack("<Q", len(j)) + j + q8 + codes + params


NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                0.7229568362236023, 1.0], dtype=np.float32)


def bnb_module(prefix, rows, cols, nested):
    """One bitsandbytes NF4 module by hand (docs/quantized-layouts.md): codes two a byte, first in the
    high nibble, absmax per 64 weights (U8 codes + nested state with double quantization)."""
    g = np.random.default_rng(rows * 1000 + cols + nested)
    n = rows * cols
    nb = -(-n // 64)
    codes = g.integers(0, 16, size=n + n % 2).astype(np.uint8)
    t = {f"{prefix}.weight": ("U8", ((codes[0::2] << 4) | codes[1::2]).reshape(-1, 1)),
         f"{prefix}.weight.quant_map": ("F32", NF4)}
    st = {"quant_type": "nf4", "blocksize": 64, "dtype": "float16", "shape": [rows, cols]}
    if nested:
        t[f"{prefix}.weight.absmax"] = ("U8", g.integers(0, 256, size=nb).astype(np.uint8))
        t[f"{prefix}.weight.nested_absmax"] = ("F32", g.random(-(-nb // 256)).astype(np.float32))
        t[f"{prefix}.weight.nested_quant_map"] = ("F32", np.linspace(-1, 1, 256).astype(np.float32))
        st.update({"nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.0123})
    else:
        t[f"{prefix}.weight.absmax"] = ("F32", (g.random(nb) * 0.1).astype(np.float32))
    t[f"{prefix}.weight.quant_state.bitsandbytes__nf4"] = ("U8", np.frombuffer(json.dumps(st).encode(), np.uint8))
    return t


def bnb_seeds(out):
    (out / "bnb_nf4").mkdir(parents=True, exist_ok=True)
    (out / "bnb_nf4/nf4.safetensors").write_bytes(safetensors({
        **bnb_module("model.layers.0.self_attn.q_proj", 4, 64, False),
        **bnb_module("model.layers.0.mlp.down_proj", 3, 43, False),  # 129 weights: a ragged block, odd count
    }, {"format": "pt"}))
    (out / "bnb_nf4/nf4-dq.safetensors").write_bytes(safetensors(
        bnb_module("model.layers.0.mlp.up_proj", 8, 64, True), {"format": "pt"}))


def nvfp4_module(prefix, rows, cols):
    """One compressed-tensors NVFP4 module by hand (docs/quantized-layouts.md): E2M1 codes two a byte,
    first in the low nibble; an E4M3 scale per 16 columns (finite codes); an f32 global scale."""
    g = np.random.default_rng(rows * 100 + cols)
    codes = g.integers(0, 16, size=(rows, cols)).astype(np.uint8)
    scales = g.integers(1, 0x7E, size=(rows, cols // 16)).astype(np.uint8)
    return {f"{prefix}.weight_packed": ("U8", codes[:, 0::2] | (codes[:, 1::2] << 4)),
            f"{prefix}.weight_scale": ("F8_E4M3", scales),
            f"{prefix}.weight_global_scale": ("F32", np.array([2688.0 / 0.37], dtype=np.float32))}


def nvfp4_seeds(out):
    (out / "ct_nvfp4").mkdir(parents=True, exist_ok=True)
    (out / "ct_nvfp4/nvfp4.safetensors").write_bytes(safetensors({
        **nvfp4_module("model.layers.0.self_attn.q_proj", 4, 32),
        **nvfp4_module("model.layers.0.mlp.up_proj", 3, 16),
    }, {"format": "pt"}))


def main():
    out = pathlib.Path(sys.argv[1])
    bnb_seeds(out)
    nvfp4_seeds(out)
    (out / "calib_resid").mkdir(parents=True, exist_ok=True)
    (out / "calib_resid/one-block.bin").write_bytes(calib_resid())
    (out / "calib_layer").mkdir(parents=True, exist_ok=True)
    (out / "calib_layer/two-tensors.bin").write_bytes(calib_layer())
    for t in ["gguf", "gguf_tokenizer", "imatrix", "safetensors", "hf_config", "hf_index", "base_logits"]:
        (out / t).mkdir(parents=True, exist_ok=True)
    write_gguf(out / "gguf/all-types.gguf", all_types)
    write_gguf(out / "gguf/tiny-llama-q8_0.gguf", tiny_model)
    write_gguf(out / "gguf_tokenizer/bpe.gguf", tokenizer_only("gpt2"))
    write_gguf(out / "gguf_tokenizer/spm.gguf", tokenizer_only("llama"))
    write_gguf(out / "imatrix/imatrix.gguf", imatrix_gguf)
    (out / "imatrix/legacy.dat").write_bytes(imatrix_legacy())
    (out / "safetensors/f32-f16.safetensors").write_bytes(safetensors({
        "model.norm.weight": ("F32", rng.standard_normal(8).astype(np.float32)),
        "model.layers.0.mlp.up_proj.weight": ("F16", rng.standard_normal((4, 8)).astype(np.float16)),
    }, {"format": "pt"}))
    (out / "safetensors/bf16-i32.safetensors").write_bytes(safetensors({
        "a": ("BF16", rng.integers(0, 65535, size=(3, 4), dtype=np.uint16)),
        "qweight": ("I32", rng.integers(-2**31, 2**31 - 1, size=(2, 2), dtype=np.int32)),
    }))
    quant = {
        "gptq": {"quant_method": "gptq", "bits": 4, "group_size": 32, "sym": True, "desc_act": True,
                 "checkpoint_format": "gptq", "dynamic": {"-:lm_head": {}}},
        "awq": {"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True, "version": "gemm",
                "modules_to_not_convert": ["lm_head"]},
        "ct": {"quant_method": "compressed-tensors", "format": "pack-quantized", "ignore": ["lm_head"],
               "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
                   "num_bits": 4, "type": "int", "symmetric": False, "strategy": "group", "group_size": 32,
                   "actorder": "static"}}}},
        "bnb-nf4": {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                    "bnb_4bit_use_double_quant": True, "bnb_4bit_quant_storage": "uint8",
                    "llm_int8_skip_modules": ["lm_head"]},
    }
    # compressed-tensors 8-bit: int8 W8A8, FP8 weight-only, FP8_DYNAMIC (quantkit's ct-* outputs)
    w8 = lambda t: {"num_bits": 8, "type": t, "symmetric": True, "strategy": "channel", "dynamic": False}  # noqa: E731
    a8 = lambda t: {"num_bits": 8, "type": t, "symmetric": True, "strategy": "token", "dynamic": True}  # noqa: E731
    for k, fmt, t, acts in [("ct-w8a8", "int-quantized", "int", True), ("ct-fp8", "naive-quantized", "float", False),
                            ("ct-fp8-dynamic", "float-quantized", "float", True)]:
        quant[k] = {"quant_method": "compressed-tensors", "format": fmt, "ignore": ["lm_head"],
                    "config_groups": {"group_0": {"targets": ["Linear"], "format": fmt, "weights": w8(t),
                                                  "input_activations": a8(t) if acts else None,
                                                  "output_activations": None}}}
    # compressed-tensors NVFP4A16 (quantkit's ct-nvfp4 output)
    quant["ct-nvfp4"] = {"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized", "ignore": ["lm_head"],
                         "config_groups": {"group_0": {"targets": ["Linear"], "format": "nvfp4-pack-quantized",
                                                       "weights": {"num_bits": 4, "type": "float", "symmetric": True,
                                                                   "strategy": "tensor_group", "group_size": 16,
                                                                   "dynamic": False,
                                                                   "scale_dtype": "torch.float8_e4m3fn"},
                                                       "input_activations": None, "output_activations": None}}}
    (out / "hf_config/llama.json").write_text(json.dumps(CONFIG))
    (out / "hf_config/qwen2.json").write_text(json.dumps({**CONFIG, "architectures": ["Qwen2ForCausalLM"],
                                                         "model_type": "qwen2", "head_dim": 8}))
    (out / "hf_config/llama3-rope.json").write_text(json.dumps({**CONFIG, "rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}}))
    for k, q in quant.items():
        (out / f"hf_config/{k}.json").write_text(json.dumps({**CONFIG, "quantization_config": q}))
    for name, b in kld_bases().items():
        (out / "base_logits" / name).write_bytes(b)
    (out / "hf_index/index.json").write_text(json.dumps({"metadata": {"total_size": 1024}, "weight_map": {
        "model.norm.weight": "model-00001-of-00002.safetensors",
        "model.embed_tokens.weight": "model-00002-of-00002.safetensors"}}))


if __name__ == "__main__":
    main()
