#!/usr/bin/env python3
"""Tiny random checkpoints for the architectures/options the shared fixtures do not cover (Qwen2 with
q/k/v biases and half-split RoPE; Llama with Llama-3 RoPE scaling; Llama with linear RoPE
scaling), with transformers' logits and greedy tokens for a fixed token sequence. Committed under
tests/fixtures/tiny/ (~100 KB each) and checked by tests/engine.rs.

    ~/.cache/quantkit/bench-venv/bin/python scripts/tiny_models.py ../shared/models/stories260K tests/fixtures/tiny
"""
import json
import pathlib
import shutil
import sys

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

VARIANTS = {
    "qwen2": (Qwen2Config, dict(tie_word_embeddings=True, rope_theta=1000000.0)),
    "llama3rope": (LlamaConfig, dict(tie_word_embeddings=False, rope_theta=500000.0, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64})),
    "mistral": (MistralConfig, dict(tie_word_embeddings=False, rope_theta=1000000.0, sliding_window=None)),
    "linearrope": (LlamaConfig, dict(tie_word_embeddings=False, rope_theta=10000.0,
                                     rope_scaling={"rope_type": "linear", "factor": 2.0})),
}


def main():
    tok_dir, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    tokens = [1] + [(i * 37 + 11) % 509 + 3 for i in range(47)]
    for name, (cls, extra) in VARIANTS.items():
        torch.manual_seed(1234)
        cfg = cls(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                  rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, torch_dtype="float32", **extra)
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float().eval()
        with torch.no_grad():
            for p in model.parameters():  # larger than the default init, so RoPE and biases matter
                p.normal_(0.0, 0.08)
            d = out / name
            d.mkdir(parents=True, exist_ok=True)
            model.save_pretrained(d, safe_serialization=True)
            for f in ["tokenizer.json", "tokenizer_config.json"]:
                shutil.copy(tok_dir / f, d / f)
            logits = model(torch.tensor([tokens])).logits[0]
            greedy = model.generate(torch.tensor([tokens[:8]]), max_new_tokens=16, do_sample=False,
                                    pad_token_id=2)[0, 8:].tolist()
        rows = list(range(0, len(tokens), 4))  # every 4th position keeps the fixture small
        json.dump({"tokens": tokens, "rows": rows, "logits": logits[rows].tolist(), "greedy_prompt": tokens[:8],
                   "greedy": greedy},
                  open(d / "logits.json", "w"), separators=(",", ":"))
        (d / "generation_config.json").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
