#!/usr/bin/env python3
"""The 4-bit GGUF formats side by side (issue 21's table): Q4_0, Q4_K_S, IQ4_NL, IQ4_XS, MXFP4, NVFP4 —
quantkit's (RTN, + imatrix, GPTQ-fed) and llama.cpp's (+ imatrix) — on SmolLM2-135M and/or the 1.5B
benchmark model, each scored by llama.cpp (`llama-perplexity --kl-divergence`) and by quantkit's engine
on wiki.test.raw against the model's own F16 dequantization. Writes docs/formats-4bit.md.

    python3 scripts/formats_table.py --model smollm2            # minutes
    python3 scripts/formats_table.py --model qwen1.5b           # ~1–2 h on 2 cores (no GPTQ rows)
    python3 scripts/formats_table.py --model qwen1.5b --gptq    # … plus the GPTQ-fed rows (hours)
    python3 scripts/formats_table.py --table-only               # rewrite the page from the cache

Steps are cached (as scripts/scoreboard.py does, whose helpers this uses) under
~/.cache/quantkit/formats-table/<model>/, so a rerun resumes. Caveats: SmolLM2's weights lie on a Q4_1
grid and its width (576) is not a multiple of 256, so IQ4_XS falls back to IQ4_NL and Q4_K to Q5_0 in
most tensors there; the 1.5B model's weights lie on Q4_K/Q6_K grids (see docs/scoreboard.md).
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scoreboard as sb  # noqa: E402

MODELS = {"smollm2": "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized)",
          "qwen1.5b": "Qwen2.5-Coder-1.5B-Instruct (upstream Q4_K_M GGUF, dequantized)"}
OUT_MD = sb.ROOT / "docs" / "formats-4bit.md"

# (row id, label, maker): maker is "lcpp-imat:<ftype>", "qk:<type>", "qk-imat:<type>", "qk-gptq:<type>" or
# "qk-ct:<format>" (a `quantkit quantize --method rtn --format <format>` checkpoint folder from the F16
# reference: llama.cpp cannot read it, so only our engine scores it; bits/w = model.safetensors bytes × 8 /
# the model's weights, embeddings and norms included, as for the GGUF rows).
ROWS = [
    ("qk-q4_0", "Q4_0 (= llama.cpp's)", "qk:q4_0"),
    ("qk-imat-q4_0", "Q4_0 + imatrix, ours", "qk-imat:q4_0"),
    ("lcpp-imat-q4_0", "Q4_0 + imatrix, llama.cpp", "lcpp-imat:Q4_0"),
    ("qk-imat-q4_k_s", "Q4_K_S + imatrix, ours", "qk-imat:q4_k_s"),
    ("lcpp-imat-q4_k_s", "Q4_K_S + imatrix, llama.cpp", "lcpp-imat:Q4_K_S"),
    ("qk-iq4_nl", "IQ4_NL (= llama.cpp's)", "qk:iq4_nl"),
    ("qk-imat-iq4_nl", "IQ4_NL + imatrix, ours", "qk-imat:iq4_nl"),
    ("lcpp-imat-iq4_nl", "IQ4_NL + imatrix, llama.cpp", "lcpp-imat:IQ4_NL"),
    ("qk-iq4_xs", "IQ4_XS (= llama.cpp's)", "qk:iq4_xs"),
    ("qk-imat-iq4_xs", "IQ4_XS + imatrix, ours", "qk-imat:iq4_xs"),
    ("lcpp-imat-iq4_xs", "IQ4_XS + imatrix, llama.cpp", "lcpp-imat:IQ4_XS"),
    ("qk-gptq-iq4_xs", "IQ4_XS GPTQ-fed, ours", "qk-gptq:iq4_xs"),
    ("qk-mxfp4", "MXFP4 (quantkit's mix)", "qk:mxfp4"),
    ("qk-gptq-mxfp4", "MXFP4 GPTQ-fed, ours", "qk-gptq:mxfp4"),
    ("qk-nvfp4", "NVFP4 (quantkit's mix)", "qk:nvfp4"),
    ("qk-ct-nvfp4", "NVFP4 compressed-tensors (`ct-nvfp4`, NVFP4A16), ours", "qk-ct:ct-nvfp4"),
]


def folder_info(t, folder):
    """A checkpoint folder's model.safetensors bytes, the model's weights and bits per weight."""
    j = json.loads(sb.sh_out([t.qk, "inspect", folder, "--json"]))
    st = folder / "model.safetensors"
    return {"bytes": st.stat().st_size, "params": j["params"], "bpw": st.stat().st_size * 8 / j["params"],
            "sha256": sb.sha256(st)}


def setup(model):
    """Point scoreboard's module-level paths at this model's cache."""
    sb.WORK = sb.CACHE / "formats-table" / model
    sb.FILES, sb.RESULTS = sb.WORK / "files", sb.WORK / "results"
    for d in (sb.FILES, sb.RESULTS, sb.WORK / "logs"):
        d.mkdir(parents=True, exist_ok=True)


def source(model):
    if model == "smollm2":
        p = sb.SHARED / "models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf"
        if not p.is_file():
            sys.exit(f"no SmolLM2 fixture at {p}")
        return p
    return Path(sb.sh_out(["bash", str(sb.ROOT / "scripts/fetch-models.sh")]).strip().splitlines()[-1])


def compute(model, gptq):
    setup(model)
    t = sb.Tools.__new__(sb.Tools)  # llama.cpp tools and our binary, but this model
    t.bin = Path(sb.sh_out(["bash", str(sb.ROOT / "scripts/setup-llamacpp-tools.sh")]).strip().splitlines()[-1])
    t.qk = Path(sb.os.environ.get("QUANTKIT", sb.ROOT / "target/release/quantkit"))
    t.model = source(model)
    sk, n = f"c{sb.CTX}-n{sb.CHUNKS}", sb.CALIB_CHUNKS
    W, F, R = sb.WORK, sb.FILES, sb.RESULTS

    ref = F / "ref-f16.gguf"
    sb.cached("make-ref-f16", lambda: {"seconds": round(sb.run_timed(
        [t.qk, "convert", t.model, "--type", "f16", "-o", ref], W / "logs/make-ref.log")[0], 1)} | sb.file_info(t, ref))
    base_lcpp, base_qk = F / f"base-{sk}.kld", F / f"base-{sk}.qklogits"
    if not base_lcpp.is_file():
        (R / f"lcpp-base-{sk}.json").unlink(missing_ok=True)
    sb.cached(f"lcpp-base-{sk}", lambda: {"seconds": round(sb.run_timed(
        [t.ll("llama-perplexity"), "-m", ref, "-f", sb.WIKI, "-c", sb.CTX, "--chunks", sb.CHUNKS, "-t", sb.THREADS,
         "--kl-divergence-base", base_lcpp], W / "logs/lcpp-base.log")[0], 1)})
    if not base_qk.is_file():
        (R / f"qk-base-{sk}.json").unlink(missing_ok=True)
    sb.cached(f"qk-base-{sk}", lambda: {"seconds": round(sb.run_timed(
        [t.qk, "kld", "--base", ref, "--text", sb.WIKI, "--ctx", sb.CTX, "--chunks", sb.CHUNKS, "--save-base", base_qk,
         "--quiet", "--threads", sb.THREADS], W / "logs/qk-base.log")[0], 1)})

    imat = F / f"imatrix-lcpp-{n}.gguf"
    if not imat.is_file():
        (R / f"lcpp-imatrix-{n}.json").unlink(missing_ok=True)
    sb.cached(f"lcpp-imatrix-{n}", lambda: {"seconds": round(sb.run_timed(
        [t.ll("llama-imatrix"), "-m", t.model, "-f", sb.CALIB, "-c", sb.CTX, "--chunks", n, "-t", sb.THREADS,
         "-o", imat], W / "logs/lcpp-imatrix.log")[0], 1)})
    qdir = F / f"qk-imatrix-{n}"
    qimat = qdir / "imatrix.gguf"
    if not qimat.is_file():
        (R / f"qk-imatrix-{n}.json").unlink(missing_ok=True)
    sb.cached(f"qk-imatrix-{n}", lambda: {"seconds": round(sb.run_timed(
        [t.qk, "quantize", t.model, "--method", "rtn", "--calib", sb.CALIB, "--samples", n, "--seqlen", sb.CTX,
         "--imatrix", "--format", "gguf:q8_0", "-o", qdir, "--quiet", "--threads", sb.THREADS],
        W / "logs/qk-imatrix.log")[0], 1)})

    for row, _, maker in ROWS:
        kind, ty = maker.split(":")
        if kind == "qk-gptq" and not gptq:
            continue
        if kind == "qk-ct":
            qdir_ct = F / row
            out = qdir_ct / ty
            cmd = [t.qk, "quantize", ref, "--method", "rtn", "--format", ty, "-o", qdir_ct, "--quiet",
                   "--threads", sb.THREADS]
            if not out.is_dir():
                (R / f"make-{row}.json").unlink(missing_ok=True)
            sb.cached(f"make-{row}", lambda: {"seconds": round(sb.run_timed(cmd, W / "logs" / f"make-{row}.log")[0], 1)}
                      | folder_info(t, out))
            sb.cached(f"score-qk-{sk}-{row}", lambda: sb.score_quantkit(t, out, base_qk, row))
            write_page()
            continue
        if kind == "lcpp-imat":
            out = F / f"{row}.gguf"
            cmd = [t.ll("llama-quantize"), "--imatrix", imat, ref, out, ty, sb.THREADS]
        elif kind == "qk-gptq":
            gdir = F / row
            out = gdir / f"model-{ty.upper()}.gguf"
            cmd = [t.qk, "quantize", t.model, "--method", "gptq", "--calib", sb.CALIB, "--samples", n, "--seqlen",
                   sb.CTX, "--format", f"gguf:{ty}", "-o", gdir, "--quiet", "--threads", sb.THREADS]
        else:
            out = F / f"{row}.gguf"
            cmd = [t.qk, "convert", ref, "--type", ty, "-o", out, "--quiet"] + (
                ["--imatrix", qimat] if kind == "qk-imat" else [])
        if not out.is_file():
            (R / f"make-{row}.json").unlink(missing_ok=True)
        sb.cached(f"make-{row}", lambda: {"seconds": round(sb.run_timed(cmd, W / "logs" / f"make-{row}.log")[0], 1)}
                  | sb.file_info(t, out))
        for which, fn in (("lcpp", lambda: sb.score_llamacpp(t, out, base_lcpp, row)),
                          ("qk", lambda: sb.score_quantkit(t, out, base_qk, row))):
            sb.cached(f"score-{which}-{sk}-{row}", fn)
        write_page()


def section(model):
    setup(model)  # write_page() restores the caller's paths
    sk = f"c{sb.CTX}-n{sb.CHUNKS}"
    f = lambda v, d: "–" if v is None else f"{v:.{d}f}"
    ref, qb = sb.load("make-ref-f16"), sb.load(f"lcpp-base-{sk}")
    if ref is None:
        return []
    L = [f"## {MODELS[model]}\n",
         f"Reference: its F16 dequantization ({ref['bytes'] / 1e6:.0f} MB, {ref['params']} weights). "
         f"wiki.test.raw, ctx {sb.CTX}, {sb.CHUNKS} chunks ({sb.CHUNKS * sb.CTX // 2} scored tokens); imatrices "
         f"from {sb.CALIB_CHUNKS} × {sb.CTX} tokens of tinyshakespeare (llama-imatrix / `quantkit quantize --method "
         f"rtn --imatrix`); GPTQ-fed rows: `quantkit quantize --method gptq --samples {sb.CALIB_CHUNKS} --seqlen "
         f"{sb.CTX} --format gguf:TYPE` from the source file.\n",
         "| file | MB | bits/w | PPL lcpp | KLD lcpp | top % lcpp | PPL ours | KLD ours | top % ours |",
         "|---|---|---|---|---|---|---|---|---|"]
    missing = []
    for row, label, maker in ROWS:
        mk, sl, sq = sb.load(f"make-{row}"), sb.load(f"score-lcpp-{sk}-{row}"), sb.load(f"score-qk-{sk}-{row}")
        if mk is None or (sl is None and not maker.startswith("qk-ct:")) or sq is None:
            missing.append(row)
            if mk is None:
                continue
        L.append(f"| {label} | {f(mk['bytes'] / 1e6, 1)} | {f(mk['bpw'], 3)} | {f(sl and sl['ppl'], 4)} | "
                 f"{f(sl and sl['mean_kld'], 5)} | {f(sl and sl['same_top'], 2)} | {f(sq and sq['ppl'], 4)} | "
                 f"{f(sq and sq['mean_kld'], 5)} | {f(sq and sq['same_top'], 2)} |")
    if missing:
        L.append(f"\nNot computed yet: {', '.join(missing)}.")
    return L + [""]


def write_page():
    here = (sb.WORK, sb.FILES, sb.RESULTS)  # section() repoints them per model; the caller's stay
    L = ["# The 4-bit GGUF formats side by side\n",
         "Generated by `python3 scripts/formats_table.py` (do not edit by hand; it rewrites this page from the "
         "results cached in `~/.cache/quantkit/formats-table/`). llama.cpp: the tools of "
         "`scripts/setup-llamacpp-tools.sh` (commit 0c1e57098); quantkit: commit " + sb.git_head(sb.ROOT) + ". "
         "*lcpp* = scored by `llama-perplexity --kl-divergence`; *ours* = by `quantkit kld`. KLD = mean KL(reference ‖ "
         "file) per token; top % = positions where both rank the same token first. Rows marked \"= llama.cpp's\" "
         "are byte-identical with llama-quantize's output (tests/python/test_mixes.py); MXFP4/NVFP4 are quantkit's "
         "mixes (llama-quantize makes neither for a dense model). The compressed-tensors NVFP4 row is a checkpoint "
         "folder (FP4 E2M1, an E4M3 scale per 16 weights and an f32 global scale per tensor, embeddings f16), "
         "which llama.cpp cannot read: scored by our engine only.\n",
         "**Caveats.** SmolLM2's weights lie on a Q4_1 grid and its width (576) is not a multiple of 256: IQ4_XS "
         "falls back to IQ4_NL and Q4_K to Q5_0 in most of its tensors, so its IQ4_XS/Q4_K_S rows are not those "
         "formats. The 1.5B model's weights lie on Q4_K/Q6_K grids (its Q4_K_S row is nearly free).\n"]
    for m in MODELS:
        L += section(m)
    sb.WORK, sb.FILES, sb.RESULTS = here
    OUT_MD.write_text("\n".join(L) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=list(MODELS), default="smollm2")
    ap.add_argument("--gptq", action="store_true", help="also the GPTQ-fed rows (minutes on SmolLM2, hours on 1.5B)")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    if not args.table_only:
        compute(args.model, args.gptq)
    write_page()
    sb.log("wrote", OUT_MD)


if __name__ == "__main__":
    main()
