#!/usr/bin/env python3
"""Score GGUF files with llama.cpp itself (through llama-cpp-python), the way `llama-perplexity` does:
tokenize the whole text with BOS, cut it into chunks of --ctx tokens, put BOS first in each chunk, and
score the second half of every chunk. Prints one JSON line per model.

    python scripts/llamacpp_ppl.py --text ../shared/data/wikitext-2-raw/wiki.test.raw --chunks 12 a.gguf b.gguf
"""
import argparse
import json
import math
import sys
import time

import numpy as np


def log_softmax_rows(logits):
    m = logits.max(axis=-1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(axis=-1, keepdims=True))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--text", required=True)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import llama_cpp

    text = open(args.text, encoding="utf-8").read()
    for path in args.models:
        t0 = time.time()
        llm = llama_cpp.Llama(model_path=path, n_ctx=args.ctx, n_batch=args.ctx, logits_all=True,
                              n_threads=args.threads, verbose=False)
        tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        n_chunks = min(args.chunks, len(tokens) // args.ctx)
        if n_chunks == 0:
            sys.exit(f"{args.text}: fewer than {args.ctx} tokens")
        bos = llm.token_bos()
        nll, count, nlls = 0.0, 0, []
        first = args.ctx // 2
        for c in range(n_chunks):
            chunk = list(tokens[c * args.ctx:(c + 1) * args.ctx])
            chunk[0] = bos
            llm.reset()
            llm.eval(chunk)
            logits = np.array(llm.scores[: args.ctx], dtype=np.float64)
            lp = log_softmax_rows(logits[first:args.ctx - 1])
            tgt = np.array(chunk[first + 1:args.ctx])
            vals = -lp[np.arange(len(tgt)), tgt]
            nlls.extend(vals.tolist())
            nll += vals.sum()
            count += len(tgt)
        mean = nll / count
        ppl = math.exp(mean)
        # llama-perplexity's error estimate: ppl * std(nll)/sqrt(n)
        sd = float(np.std(np.array(nlls)))
        print(json.dumps({"model": path, "chunks": n_chunks, "ctx": args.ctx, "ppl": ppl,
                          "ppl_err": ppl * sd / math.sqrt(count), "tokens_scored": count,
                          "seconds": round(time.time() - t0, 2)}), flush=True)
        del llm


if __name__ == "__main__":
    main()
