#!/usr/bin/env python3
"""Write a synthetic Llama GGUF with 7B- or 70B-like layer shapes and random quantized weights,
for bandwidth benchmarks on weights far larger than the last-level cache (docs/kernels.md) and for
measuring calibration time and memory per layer (docs/calibration.md):

    .venv/bin/python scripts/synth_llama.py --type q4_0 --layers 4 -o /tmp/synth-q4_0.gguf
    quantkit bench /tmp/synth-q4_0.gguf -p 64 -n 32 --peer
    .venv/bin/python scripts/synth_llama.py --shape 70b --type q4_k_m --layers 2 -o /tmp/synth70.gguf

Shapes are Llama-2-7B's (width 4096, FFN 11008, 32 heads, vocabulary 32000) or, with `--shape 70b`,
Llama-2-70B's (width 8192, FFN 28672, 64 heads / 8 KV heads) with only `--layers` blocks. The blocks are random bytes with plausible scales (f16 in [0.002, 0.01)), written straight
in the quantized layout, so no float model is ever materialised. `--type q4_k_m` follows
llama.cpp's Q4_K_M mix (Q6_K for attn_v/ffn_down of every other layer and for the output, Q4_K
elsewhere). A minimal SentencePiece vocabulary makes the file loadable by llama.cpp; the text it
would produce is meaningless (random weights), only speed is measured.
"""
import argparse

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

SHAPES = {"7b": (4096, 11008, 32, 32), "70b": (8192, 28672, 64, 8)}
VOCAB = 32000


def random_blocks(rng, ty, rows, cols):
    """`rows` rows of `cols` weights of type `ty`: random codes, small positive f16 scales."""
    bs, ts = gguf.GGML_QUANT_SIZES[ty]
    nb = cols // bs
    raw = rng.integers(0, 256, size=(rows * nb, ts), dtype=np.uint8)

    def put_f16(col, lo, hi):
        d = rng.uniform(lo, hi, size=rows * nb).astype(np.float16)
        raw[:, col:col + 2] = d.view(np.uint8).reshape(-1, 2)

    if ty in (T.Q4_0, T.Q8_0):
        put_f16(0, 0.002, 0.01)
    elif ty == T.Q4_K:
        put_f16(0, 0.0005, 0.002)   # d (times 6-bit scales)
        put_f16(2, 0.0005, 0.002)   # dmin
    elif ty == T.Q6_K:
        raw[:, 192:208] = rng.integers(-32, 32, size=(rows * nb, 16), dtype=np.int8).view(np.uint8)
        put_f16(208, 0.0001, 0.0005)
    elif ty == T.F32:
        raise ValueError("not a block type")
    return raw.reshape(rows, nb * ts)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--type", choices=["q4_0", "q8_0", "q4_k_m"], default="q4_0")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--output", required=True)
    a = ap.parse_args()
    WIDTH, FFN, HEADS, KV = SHAPES[a.shape]
    kv_width = WIDTH // HEADS * KV
    rng = np.random.default_rng(a.seed)
    base = {"q4_0": T.Q4_0, "q8_0": T.Q8_0, "q4_k_m": T.Q4_K}[a.type]

    def pick(name, layer):
        if a.type != "q4_k_m":
            return base
        if name == "output" or (name in ("attn_v", "ffn_down") and layer % 2 == 0):
            return T.Q6_K
        return T.Q4_K

    w = gguf.GGUFWriter(a.output, "llama")
    w.add_name(f"synthetic-{a.shape}-shape-{a.layers}l-{a.type}")
    w.add_context_length(4096)
    w.add_embedding_length(WIDTH)
    w.add_block_count(a.layers)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(VOCAB)
    w.add_file_type({"q4_0": 2, "q8_0": 7, "q4_k_m": 15}[a.type])
    # A minimal SentencePiece vocabulary: specials, the 256 byte tokens, then filler pieces.
    toks = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    toks += [f"▁t{i}" for i in range(VOCAB - len(toks))]
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores([0.0] * 3 + [0.0] * 256 + [-float(i) for i in range(VOCAB - 259)])
    w.add_token_types([2, 3, 3] + [6] * 256 + [1] * (VOCAB - 259))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    def quant(name, layer, rows, cols):
        ty = pick(name.split(".")[-2] if "." in name else name, layer)
        w.add_tensor(name, random_blocks(rng, ty, rows, cols), raw_dtype=ty)

    w.add_tensor("token_embd.weight", random_blocks(rng, base, VOCAB, WIDTH), raw_dtype=base)
    w.add_tensor("output_norm.weight", np.ones(WIDTH, dtype=np.float32))
    quant("output.weight", -1, VOCAB, WIDTH)
    for l in range(a.layers):
        p = f"blk.{l}."
        w.add_tensor(p + "attn_norm.weight", np.ones(WIDTH, dtype=np.float32))
        w.add_tensor(p + "ffn_norm.weight", np.ones(WIDTH, dtype=np.float32))
        for n, rows in (("attn_q", WIDTH), ("attn_k", kv_width), ("attn_v", kv_width), ("attn_output", WIDTH)):
            quant(p + n + ".weight", l, rows, WIDTH)
        quant(p + "ffn_gate.weight", l, FFN, WIDTH)
        quant(p + "ffn_up.weight", l, FFN, WIDTH)
        quant(p + "ffn_down.weight", l, WIDTH, FFN)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
