#!/usr/bin/env python3
"""KL divergence of a model against a base model computed by llama.cpp itself (llama-cpp-python),
the way `llama-perplexity --kl-divergence` does: llama-perplexity chunks (first token replaced by
BOS when the model adds one), the second half of each chunk, KL(base || model) per position, mean,
and the share of positions where both models' top token agrees. Prints one JSON line.

    python scripts/llamacpp_kld.py --text wiki.test.raw --chunks 8 base-f32.gguf model-q4_0.gguf
"""
import argparse
import json
import time

import numpy as np


def log_softmax_rows(logits):
    m = logits.max(axis=-1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(axis=-1, keepdims=True))


def chunk_logits(llm, chunk, ctx):
    llm.reset()
    llm.eval(chunk)
    return np.array(llm.scores[:ctx], dtype=np.float64)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base")
    ap.add_argument("model")
    ap.add_argument("--text", required=True)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    import llama_cpp
    t0 = time.time()
    kw = dict(n_ctx=a.ctx, n_batch=a.ctx, logits_all=True, n_threads=a.threads, verbose=False)
    base = llama_cpp.Llama(model_path=a.base, **kw)
    model = llama_cpp.Llama(model_path=a.model, **kw)
    text = open(a.text, encoding="utf-8").read()
    tokens = base.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    add_bos = base.tokenize(b"x", add_bos=True, special=False)[0] == base.token_bos()
    n_chunks = min(a.chunks, len(tokens) // a.ctx)
    first = a.ctx // 2
    klds, same = [], 0
    for c in range(n_chunks):
        chunk = list(tokens[c * a.ctx:(c + 1) * a.ctx])
        if add_bos:
            chunk[0] = base.token_bos()
        lb = log_softmax_rows(chunk_logits(base, chunk, a.ctx)[first:a.ctx - 1])
        lm = log_softmax_rows(chunk_logits(model, chunk, a.ctx)[first:a.ctx - 1])
        klds.extend((np.exp(lb) * (lb - lm)).sum(axis=-1).tolist())
        same += int((lb.argmax(-1) == lm.argmax(-1)).sum())
    k = np.array(klds)
    print(json.dumps({"base": a.base, "model": a.model, "chunks": n_chunks, "tokens_scored": len(k),
                      "mean_kld": float(k.mean()), "kld_err": float(k.std(ddof=1) / np.sqrt(len(k))),
                      "same_top_p": same / len(k), "seconds": round(time.time() - t0, 2)}))


if __name__ == "__main__":
    main()
