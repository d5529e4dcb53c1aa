#!/usr/bin/env python3
"""Regenerate docs/scoreboard.md: llama.cpp's quantization mixes vs quantkit's on the 1.5B benchmark model.

Every row is a GGUF made from the same reference (the dequantized upstream Q4_K_M as an F16 GGUF), scored
on wiki.test.raw (ctx 512, a fixed number of chunks) by llama.cpp (`llama-perplexity --kl-divergence`
against a base file saved once from the reference) and by quantkit's engine (`quantkit kld` against base
log-probabilities saved once). Each step's result is cached as JSON under ~/.cache/quantkit/scoreboard/
(the made files under .../files/), so a rerun or a crash resumes: only missing steps are computed, and the
table is rewritten from whatever is cached after every step.

    python3 scripts/scoreboard.py                 # everything but the GPTQ rows
    python3 scripts/scoreboard.py --gptq          # … and then the GPTQ-fed rows (slow: ~50 min each on 2 cores)
    python3 scripts/scoreboard.py --table-only    # rewrite docs/scoreboard.md from the cache
    python3 scripts/scoreboard.py --mixes iq4_xs,q4_k_s   # only these mixes this run
    SCOREBOARD_CHUNKS=20 python3 scripts/scoreboard.py   # another chunk count (cached separately)

Needs: scripts/fetch-models.sh (the model), scripts/setup-llamacpp-tools.sh (llama.cpp's tools), and a
release build of quantkit (`cargo build --release --bin quantkit`; QUANTKIT=path overrides the binary).
"""
import argparse
import hashlib
import json
import os
import platform
import re
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("QUANTKIT_CACHE", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "quantkit"))
SHARED = Path(os.environ.get("QUANTKIT_SHARED", ROOT.parent / "shared"))
if not (SHARED / "data").is_dir():
    SHARED = Path("/work/shared")
WIKI = SHARED / "data/wikitext-2-raw/wiki.test.raw"
CALIB = SHARED / "data/tinyshakespeare/input.txt"

CTX = 512
CHUNKS = int(os.environ.get("SCOREBOARD_CHUNKS", "4"))
CALIB_CHUNKS = int(os.environ.get("SCOREBOARD_CALIB_CHUNKS", "8"))  # × 512 tokens, both sides
THREADS = int(os.environ.get("SCOREBOARD_THREADS", "2"))
MIXES = ["q2_k", "q3_k_m", "iq4_xs", "q4_k_s", "q4_k_m", "iq4_nl", "q5_k_m", "q6_k", "q8_0"]
GPTQ_MIXES = ["q3_k_m", "iq4_xs"]

WORK = CACHE / "scoreboard"
FILES = WORK / "files"
RESULTS = WORK / "results"
OUT_MD = ROOT / "docs" / "scoreboard.md"


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def sh_out(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def run_timed(cmd, logfile):
    """Run cmd (niced), its output into logfile; return (seconds, peak RSS MB of the child, output text)."""
    log("$", " ".join(shlex.quote(str(c)) for c in cmd))
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.time()
    with open(logfile, "w") as f:
        p = subprocess.run(["nice", "-n", "10", *map(str, cmd)], stdout=f, stderr=subprocess.STDOUT)
    secs = time.time() - t
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    text = Path(logfile).read_text(errors="replace")
    if p.returncode != 0:
        sys.exit(f"command failed ({p.returncode}), see {logfile}:\n{text[-3000:]}")
    # ru_maxrss of children is the max over all children so far: only meaningful when it grew.
    return secs, (rss / 1024 if rss > before else None), text


# ---------------------------------------------------------------- cached steps

def cached(key, fn):
    """The JSON result of step `key`, computed by fn() once."""
    path = RESULTS / f"{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    r = fn()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(r, indent=1))
    tmp.rename(path)
    return r


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 24), b""):
            h.update(b)
    return h.hexdigest()


class Tools:
    def __init__(self):
        self.bin = Path(sh_out(["bash", str(ROOT / "scripts/setup-llamacpp-tools.sh")]).strip().splitlines()[-1])
        target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
        self.qk = Path(os.environ.get("QUANTKIT", target / "release/quantkit"))
        if not self.qk.is_file():
            sys.exit(f"no quantkit binary at {self.qk}: cargo build --release --bin quantkit (or set QUANTKIT)")
        self.model = Path(sh_out(["bash", str(ROOT / "scripts/fetch-models.sh")]).strip().splitlines()[-1])

    def ll(self, name):
        return self.bin / name


def file_info(t, path):
    """File bytes, weights, bits per weight (tensor data / weights, as llama.cpp prints it), sha256."""
    j = json.loads(sh_out([t.qk, "inspect", path, "--json"]))
    return {"bytes": path.stat().st_size, "params": j["params"], "bpw": j["bits_per_weight"], "sha256": sha256(path),
            "tensor_sha256": tensor_sha256(path, j["tensors"])}


def tensor_sha256(path, tensors):
    """A hash of the tensors alone (name, type, shape, bytes; metadata left out): our conversions carry
    their own metadata keys, so equal tensors are the test of 'the same file as llama.cpp's'."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for x in sorted(tensors, key=lambda x: x["name"]):
            h.update(f"{x['name']}:{x['type']}:{x['shape']}:".encode())
            f.seek(x["offset"])
            left = x["bytes"]
            while left:
                b = f.read(min(left, 1 << 24))
                if not b:
                    sys.exit(f"{path}: truncated tensor {x['name']}")
                h.update(b)
                left -= len(b)
    return h.hexdigest()


# ---------------------------------------------------------------- scoring (one place: switch formats here)

def score_llamacpp(t, model, base_kld, tag):
    """llama-perplexity --kl-divergence against the saved base: PPL, mean KLD, same top %."""
    secs, _, text = run_timed([t.ll("llama-perplexity"), "-m", model, "-f", WIKI, "-c", CTX, "--chunks", CHUNKS,
                               "-t", THREADS, "--kl-divergence-base", base_kld, "--kl-divergence"],
                              WORK / "logs" / f"lcpp-score-{tag}.log")
    return parse_llamacpp_kld(text) | {"seconds": round(secs, 1)}


def parse_llamacpp_kld(text):
    def num(pat):
        m = re.search(pat, text)
        return float(m.group(1)) if m else None
    return {
        "ppl": num(r"Mean PPL\(Q\)\s*:\s*([0-9.]+)"),
        "ppl_err": num(r"Mean PPL\(Q\)\s*:\s*[0-9.]+\s*±\s*([0-9.]+)"),
        "ppl_base": num(r"Mean PPL\(base\)\s*:\s*([0-9.]+)"),
        "mean_kld": num(r"Mean\s+KLD:\s*([-0-9.e]+)"),
        "kld_err": num(r"Mean\s+KLD:\s*[-0-9.e]+\s*±\s*([0-9.e-]+)"),
        "same_top": num(r"Same top p:\s*([0-9.]+)"),
    }


def score_quantkit(t, model, qk_base, tag):
    """quantkit kld MODEL --base SAVED: the same quantities from our engine (stored format, fused kernels)."""
    secs, _, text = run_timed([t.qk, "kld", model, "--base", qk_base, "--json", "--quiet", "--threads", THREADS],
                              WORK / "logs" / f"qk-score-{tag}.log")
    j = json.loads(text[text.index("{"):])
    return {"ppl": j["ppl"], "ppl_err": j["ppl_err"], "ppl_base": j["ppl_base"], "mean_kld": j["mean_kld"],
            "kld_err": j["kld_err"], "same_top": 100 * j["same_top_p"], "seconds": round(secs, 1)}


# ---------------------------------------------------------------- the board

def rows():
    """(row id, group, label) in table order."""
    out = [("ref-f16", "reference", "F16 (dequantized upstream Q4_K_M)")]
    for m in MIXES:
        out += [(f"lcpp-{m}", m, f"llama.cpp {m.upper()}"), (f"lcpp-imat-{m}", m, f"llama.cpp {m.upper()} + imatrix"),
                (f"qk-{m}", m, f"quantkit {m.upper()} (RTN)"), (f"qk-imat-{m}", m, f"quantkit {m.upper()} + imatrix")]
        if m in GPTQ_MIXES:
            out.append((f"qk-gptq-{m}", m, f"quantkit {m.upper()} GPTQ-fed"))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gptq", action="store_true", help="also make and score the GPTQ-fed rows (slow)")
    ap.add_argument("--table-only", action="store_true", help="rewrite docs/scoreboard.md from the cache only")
    ap.add_argument("--no-ours-scoring", action="store_true", help="score with llama.cpp only")
    ap.add_argument("--mixes", help="compute only these mixes this run (comma-separated, e.g. iq4_xs,q4_k_s); "
                                    "the table still shows every cached row")
    args = ap.parse_args()
    todo = args.mixes.split(",") if args.mixes else MIXES
    unknown = sorted(set(todo) - set(MIXES))
    if unknown:
        sys.exit(f"--mixes: unknown {', '.join(unknown)} (the board's mixes: {', '.join(MIXES)})")
    for d in (FILES, RESULTS, WORK / "logs"):
        d.mkdir(parents=True, exist_ok=True)
    if args.table_only:
        write_table(None)
        return
    t = Tools()
    sk = f"c{CTX}-n{CHUNKS}"  # scoring settings key

    # The reference: the upstream Q4_K_M dequantized into an F16 GGUF; llama.cpp must load it.
    ref = FILES / "ref-f16.gguf"

    def make_ref():
        secs, _, _ = run_timed([t.qk, "convert", t.model, "--type", "f16", "-o", ref], WORK / "logs/make-ref.log")
        return {"seconds": round(secs, 1)} | file_info(t, ref)
    cached("make-ref-f16", make_ref)

    base_lcpp = FILES / f"base-{sk}.kld"
    base_qk = FILES / f"base-{sk}.qklogits"

    def lcpp_base():
        secs, _, text = run_timed([t.ll("llama-perplexity"), "-m", ref, "-f", WIKI, "-c", CTX, "--chunks", CHUNKS,
                                   "-t", THREADS, "--kl-divergence-base", base_lcpp], WORK / "logs/lcpp-base.log")
        m = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", text)
        return {"ppl": float(m.group(1)), "ppl_err": float(m.group(2)), "seconds": round(secs, 1)}
    if not base_lcpp.is_file():
        (RESULTS / f"lcpp-base-{sk}.json").unlink(missing_ok=True)
    lb = cached(f"lcpp-base-{sk}", lcpp_base)
    # The reference against itself: its perplexity, KLD 0, the same top token everywhere.
    (RESULTS / f"row-lcpp-{sk}-ref-f16.json").write_text(json.dumps(
        {"ppl": lb["ppl"], "ppl_err": lb["ppl_err"], "ppl_base": lb["ppl"], "mean_kld": 0.0, "kld_err": 0.0,
         "same_top": 100.0, "seconds": lb["seconds"]}))

    # llama.cpp's imatrix on tinyshakespeare.
    imat = FILES / f"imatrix-lcpp-{CALIB_CHUNKS}.gguf"

    def lcpp_imatrix():
        secs, rss, _ = run_timed([t.ll("llama-imatrix"), "-m", t.model, "-f", CALIB, "-c", CTX, "--chunks", CALIB_CHUNKS,
                                  "-t", THREADS, "-o", imat], WORK / "logs/lcpp-imatrix.log")
        return {"seconds": round(secs, 1), "peak_rss_mb": rss}
    if not imat.is_file():
        (RESULTS / f"lcpp-imatrix-{CALIB_CHUNKS}.json").unlink(missing_ok=True)
    cached(f"lcpp-imatrix-{CALIB_CHUNKS}", lcpp_imatrix)

    def make(row, cmd, out):
        def go():
            secs, rss, _ = run_timed(cmd, WORK / "logs" / f"make-{row}.log")
            return {"seconds": round(secs, 1), "peak_rss_mb": rss} | file_info(t, out)
        if not out.is_file():
            (RESULTS / f"make-{row}.json").unlink(missing_ok=True)
        return cached(f"make-{row}", go)

    def score(row, path, which):
        info = json.loads((RESULTS / f"make-{row}.json").read_text())
        # Identical tensors score identically: key the score by their hash.
        if "tensor_sha256" not in info:
            j = json.loads(sh_out([t.qk, "inspect", path, "--json"]))
            info["tensor_sha256"] = tensor_sha256(path, j["tensors"])
            (RESULTS / f"make-{row}.json").write_text(json.dumps(info, indent=1))
        key = f"score-{which}-{sk}-t{info['tensor_sha256'][:16]}"
        old = RESULTS / f"score-{which}-{sk}-{info['sha256'][:16]}.json"  # keyed by the whole file before
        if old.is_file() and not (RESULTS / f"{key}.json").is_file():
            old.rename(RESULTS / f"{key}.json")
        if which == "lcpp":
            r = cached(key, lambda: score_llamacpp(t, path, base_lcpp, row))
        else:
            r = cached(key, lambda: score_quantkit(t, path, base_qk, row))
        link = RESULTS / f"row-{which}-{sk}-{row}.json"
        link.write_text(json.dumps(r))
        write_table(t)

    # Our imatrix (llama.cpp's recipe: Σx² per input column) from our calibration pass over the upstream
    # file, as llama-imatrix's; applied to the reference by `quantkit convert --imatrix`, as llama-quantize.
    qdir = FILES / f"qk-imatrix-{CALIB_CHUNKS}"
    qimat = qdir / "imatrix.gguf"

    def ours_imatrix():
        cmd = [t.qk, "quantize", t.model, "--method", "rtn", "--calib", CALIB, "--samples", CALIB_CHUNKS,
               "--seqlen", CTX, "--imatrix", "--format", "gguf:q8_0", "-o", qdir, "--quiet", "--threads", THREADS]
        secs, rss, _ = run_timed(cmd, WORK / "logs/qk-imatrix.log")
        return {"seconds": round(secs, 1), "peak_rss_mb": rss}
    if not qimat.is_file():
        (RESULTS / f"qk-imatrix-{CALIB_CHUNKS}.json").unlink(missing_ok=True)
    cached(f"qk-imatrix-{CALIB_CHUNKS}", ours_imatrix)

    def qk_base():
        secs, _, _ = run_timed([t.qk, "kld", "--base", ref, "--text", WIKI, "--ctx", CTX, "--chunks", CHUNKS,
                                "--save-base", base_qk, "--quiet", "--threads", THREADS], WORK / "logs/qk-base.log")
        return {"seconds": round(secs, 1)}

    # Per mix, lowest bits first (the fair comparisons come first if the run is cut short): llama.cpp's
    # two files and our two, made from the reference, scored by llama.cpp, then by our engine.
    for m in (m for m in MIXES if m in todo):
        for row in (f"lcpp-{m}", f"lcpp-imat-{m}"):
            out = row_file(row)
            cmd = [t.ll("llama-quantize")] + (["--imatrix", imat] if "imat" in row else []) + [ref, out, m.upper(), THREADS]
            make(row, cmd, out)
            score(row, out, "lcpp")
        for row in (f"qk-{m}", f"qk-imat-{m}"):
            out = row_file(row)
            make(row, [t.qk, "convert", ref, "--type", m, "-o", out, "--quiet"]
                 + (["--imatrix", qimat] if "imat" in row else []), out)
            score(row, out, "lcpp")
        if not args.no_ours_scoring:
            if not base_qk.is_file():
                (RESULTS / f"qk-base-{sk}.json").unlink(missing_ok=True)
            cached(f"qk-base-{sk}", qk_base)
            for row in (f"lcpp-{m}", f"lcpp-imat-{m}", f"qk-{m}", f"qk-imat-{m}"):
                score(row, row_file(row), "qk")
    if not args.no_ours_scoring:
        score("ref-f16", ref, "qk")
    # Last: GPTQ-fed rows (expensive), from the upstream file itself.
    if args.gptq:
        for m in (m for m in GPTQ_MIXES if m in todo):
            row = f"qk-gptq-{m}"
            gdir = FILES / f"{row}-{CALIB_CHUNKS}"
            out = gdir / f"model-{m}.gguf"
            make(row, [t.qk, "quantize", t.model, "--method", "gptq", "--calib", CALIB, "--samples", CALIB_CHUNKS,
                       "--seqlen", CTX, "--format", f"gguf:{m}", "-o", gdir, "--quiet", "--threads", THREADS], out)
            score(row, out, "lcpp")
            if not args.no_ours_scoring:
                score(row, out, "qk")
    write_table(t)
    log("wrote", OUT_MD)


def row_file(row):
    if row == "ref-f16":
        return FILES / "ref-f16.gguf"
    if row.startswith("qk-imat-"):
        return FILES / f"{row}-{CALIB_CHUNKS}.gguf"
    if row.startswith("qk-gptq-"):
        return FILES / f"{row}-{CALIB_CHUNKS}" / f"model-{row[8:]}.gguf"
    if row.startswith("lcpp-imat-"):
        return FILES / f"{row}-{CALIB_CHUNKS}.gguf"
    return FILES / f"{row}.gguf"


# ---------------------------------------------------------------- the table

def load(name):
    p = RESULTS / f"{name}.json"
    return json.loads(p.read_text()) if p.is_file() else None


def git_head(path):
    try:
        return sh_out(["git", "-C", path, "rev-parse", "--short", "HEAD"]).strip()
    except Exception:
        return "?"


def cpu_name():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def write_table(t):
    sk = f"c{CTX}-n{CHUNKS}"
    f = lambda v, d: "–" if v is None else f"{v:.{d}f}"
    ref = load("make-ref-f16")
    lb = load(f"lcpp-base-{sk}")
    li = load(f"lcpp-imatrix-{CALIB_CHUNKS}")
    qi = load(f"qk-imatrix-{CALIB_CHUNKS}")
    qb = load(f"qk-base-{sk}")
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    L = []
    L.append("# Scoreboard: Qwen2.5-Coder-1.5B-Instruct, llama.cpp's mixes vs quantkit's\n")
    L.append("Generated by `python3 scripts/scoreboard.py` (do not edit by hand; it rewrites this file from the "
             "results cached in `~/.cache/quantkit/scoreboard/`). How to reproduce: [evaluation.md](evaluation.md).\n")
    L.append("**Caveat.** The benchmark model is the upstream *Q4_K_M* GGUF of Qwen2.5-Coder-1.5B-Instruct; the reference "
             "here is its dequantization (an F16 GGUF). Its weights already lie on Q4_K/Q6_K grids, so re-quantizing to "
             "Q4_K_M (and anything at ≥ 4 bits) is nearly free and flatters those rows; the fair comparisons are the "
             "≤ 3.5-bit rows and same-type ours-vs-llama.cpp pairs.\n")
    L.append("| setting | value |\n|---|---|")
    L.append(f"| machine | {cpu_name()}, {os.cpu_count()} cores, {mem:.0f} GiB; {THREADS} threads everywhere |")
    L.append(f"| llama.cpp | commit 0c1e57098 (vendored by llama-cpp-python 0.3.36), built by "
             "`scripts/setup-llamacpp-tools.sh` (AVX2, no AVX-512/AMX) |")
    L.append(f"| quantkit | commit {git_head(ROOT)} (`target/release/quantkit`) |")
    L.append(f"| model | `qwen2.5-coder-1.5b-instruct-q4_k_m.gguf` (sha256 cc324af0…, `scripts/fetch-models.sh`); "
             f"reference F16 GGUF {f(ref and ref['bytes'] / 1e6, 0)} MB, {ref['params'] if ref else '?'} weights |")
    L.append(f"| evaluation | `wiki.test.raw`, ctx {CTX}, first {CHUNKS} chunks ({CHUNKS * CTX // 2} scored tokens), "
             "KLD against the reference's log-probabilities |")
    L.append(f"| calibration | `tinyshakespeare/input.txt`, {CALIB_CHUNKS} × {CTX} tokens, both imatrices collected on the "
             f"upstream Q4_K_M file (the same function as the reference; llama.cpp's F16 path is several times slower "
             f"here) and applied to the reference: llama.cpp `llama-imatrix -c {CTX} --chunks {CALIB_CHUNKS}` "
             f"({f(li and li['seconds'], 0)} s{', peak RSS %.1f GB' % (li['peak_rss_mb'] / 1024) if li and li.get('peak_rss_mb') else ''}), "
             f"then `llama-quantize --imatrix`; quantkit `quantize --method rtn --imatrix --samples {CALIB_CHUNKS} "
             f"--seqlen {CTX}` (seeded random windows of the file; {f(qi and qi['seconds'], 0)} s"
             f"{', peak RSS %.1f GB' % (qi['peak_rss_mb'] / 1024) if qi and qi.get('peak_rss_mb') else ''}), then "
             f"`quantkit convert --imatrix` |")
    L.append(f"| reference PPL | llama.cpp {f(lb and lb['ppl'], 4)} ± {f(lb and lb['ppl_err'], 4)} "
             f"({f(lb and lb['seconds'], 0)} s); quantkit: see the F16 row |")
    L.append("")
    L.append("PPL = perplexity of the quantized file; KLD = mean KL(reference ‖ quantized) per token; top % = share of "
             "positions where both put the same token first. *lcpp* = scored by `llama-perplexity --kl-divergence`, "
             "*ours* = scored by `quantkit kld` (stored format through quantkit's kernels). Times are wall-clock on "
             "this machine, shared with other jobs (± noisy); an imatrix row's make time excludes the imatrix. "
             "The GPTQ-fed row quantizes the upstream file's weights (`quantkit quantize M --method gptq --samples "
             f"{CALIB_CHUNKS} --seqlen {CTX} --format gguf:q3_k_m`); the others quantize the F16 reference.\n")
    L.append("| mix | file | made by | MB | bits/w | make s | PPL lcpp | KLD lcpp | top % lcpp | PPL ours | KLD ours | top % ours |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    missing = []
    for row, group, label in rows():
        mk = load("make-ref-f16") if row == "ref-f16" else load(f"make-{row}")
        sl = load(f"row-lcpp-{sk}-{row}")
        sq = load(f"row-qk-{sk}-{row}")
        if mk is None or sl is None or sq is None:
            missing.append(row)
        how = {"ref": "quantkit convert --type f16", "lcpp": "llama-quantize", "qk": "quantkit"}[row.split("-")[0]]
        if row.startswith("qk-imat"):
            how = "quantkit convert --imatrix (ours)"
        elif row.startswith("qk-gptq"):
            how = "quantkit quantize --method gptq"
        elif row.startswith("qk-"):
            how = "quantkit convert (RTN)"
        elif row.startswith("lcpp-imat"):
            how = "llama-quantize --imatrix"
        same = ""
        if mk and row.startswith("qk-"):
            twin = load(f"make-lcpp-{row[3:]}") if not row.startswith("qk-gptq") else None
            if twin and twin.get("tensor_sha256") and twin.get("tensor_sha256") == mk.get("tensor_sha256"):
                same = " (= llama.cpp's tensors)"
        make_s = "–" if mk is None else (f"{mk['seconds']:.0f}" + (" (shared)" if mk.get("shared_pass") else ""))
        L.append(f"| {group.upper() if group != 'reference' else 'F16'} | {label}{same} | {how} | "
                 f"{f(mk and mk['bytes'] / 1e6, 0)} | {f(mk and mk['bpw'], 3)} | {make_s} | "
                 f"{f(sl and sl['ppl'], 4)} | {f(sl and sl['mean_kld'], 5)} | {f(sl and sl['same_top'], 2)} | "
                 f"{f(sq and sq['ppl'], 4)} | {f(sq and sq['mean_kld'], 5)} | {f(sq and sq['same_top'], 2)} |")
    L.append("")
    if qb:
        L.append(f"quantkit's saved base log-probabilities took {qb['seconds']:.0f} s.")
    if missing:
        L.append(f"\nMissing or incomplete rows (not yet computed; rerun the script to resume): {', '.join(missing)}.")
    OUT_MD.write_text("\n".join(L) + "\n")


if __name__ == "__main__":
    main()
