#!/usr/bin/env python3
"""Reference logits and greedy tokens from transformers (f32, eager attention), committed as small
fixtures under tests/fixtures/ and compared with the engine by tests/engine.rs.

Needs torch + transformers (`bash scripts/setup-bench.sh` installs them in ~/.cache/quantkit/bench-venv).
SmolLM2's HF checkpoint is our own export of the shared GGUF (f32), made first with
`quantkit export-hf`:

    ~/.cache/quantkit/bench-venv/bin/python scripts/golden_logits.py ../shared/models/stories260K tests/fixtures/stories260k.json
    ~/.cache/quantkit/bench-venv/bin/python scripts/golden_logits.py /tmp/smollm2-hf tests/fixtures/smollm2.json --vocab-sample 256

For big vocabularies only a fixed sample of vocabulary columns (plus each row's top-5 and its
log-sum-exp) is stored, so the fixture stays small.
"""
import argparse
import json

import numpy as np
import torch
from transformers import AutoModelForCausalLM
from tokenizers import Tokenizer

PROMPTS = ["Once upon a time", "The quick brown fox jumps over the lazy dog.",
           "In 1905, Albert Einstein published four papers that"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--vocab-sample", type=int, default=0, help="0: store every logit")
    ap.add_argument("--greedy", type=int, default=24)
    ap.add_argument("--hf-text", help="also score the first --hf-chars characters of this text with the "
                    "sliding-window (HF) method: token-level NLL, windows of --hf-ctx every --hf-stride")
    ap.add_argument("--hf-chars", type=int, default=6000)
    ap.add_argument("--hf-ctx", type=int, default=128)
    ap.add_argument("--hf-stride", type=int, default=64)
    a = ap.parse_args()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.float32, attn_implementation="eager")
    model.eval()
    tok = Tokenizer.from_file(f"{a.model}/tokenizer.json")
    cfg = json.load(open(f"{a.model}/tokenizer_config.json")) if __import__("os").path.exists(
        f"{a.model}/tokenizer_config.json") else {}
    bos = model.config.bos_token_id
    add_bos = bool(cfg.get("add_bos_token", False))
    vocab = model.config.vocab_size
    rng = np.random.default_rng(0)
    cols = sorted(rng.choice(vocab, a.vocab_sample, replace=False).tolist()) if a.vocab_sample else None
    cases = []
    with torch.no_grad():
        for p in PROMPTS:
            ids = tok.encode(p, add_special_tokens=False).ids
            if add_bos and bos is not None:
                ids = [bos] + ids
            logits = model(torch.tensor([ids])).logits[0].double().numpy()
            lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
            case = {"prompt": p, "tokens": ids, "logsumexp": lse.tolist(),
                    "top5": np.argsort(-logits, -1)[:, :5].tolist()}
            if cols is None:
                case["logits"] = logits.astype(np.float32).tolist()
            else:
                case["logits"] = logits[:, cols].astype(np.float32).tolist()
            out = model.generate(torch.tensor([ids]), max_new_tokens=a.greedy, do_sample=False,
                                 pad_token_id=model.config.eos_token_id)
            case["greedy"] = out[0, len(ids):].tolist()
            cases.append(case)
    hf = None
    if a.hf_text:
        text = open(a.hf_text, encoding="utf-8").read()[:a.hf_chars]
        ids = tok.encode(text, add_special_tokens=False).ids
        if add_bos and bos is not None:
            ids = [bos] + ids
        nll, count, prev_end = 0.0, 0, 0
        with torch.no_grad():
            for begin in range(0, len(ids), a.hf_stride):
                end = min(begin + a.hf_ctx, len(ids))
                lp = torch.log_softmax(model(torch.tensor([ids[begin:end]])).logits[0].double(), -1)
                for j in range(max(prev_end, begin + 1), end):  # each token scored once
                    nll -= lp[j - 1 - begin, ids[j]].item()
                    count += 1
                prev_end = end
                if end == len(ids):
                    break
        hf = {"chars": a.hf_chars, "ctx": a.hf_ctx, "stride": a.hf_stride, "tokens_scored": count,
              "ppl": float(np.exp(nll / count))}
    json.dump({"model": a.model.rstrip("/").split("/")[-1], "columns": cols, "add_bos": add_bos, "hf_ppl": hf,
               "transformers": __import__("transformers").__version__, "cases": cases},
              open(a.out, "w"), separators=(",", ":"))


if __name__ == "__main__":
    main()
