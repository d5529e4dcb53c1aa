"""llama-quantize's mixes and importance matrices, checked against llama.cpp itself
(`llama_model_quantize` through llama-cpp-python) on the same f32 GGUF input:

* per-tensor type choice for every named mix, side by side, on SmolLM2 (width 576: fallbacks) and
  on a synthetic 16-layer Llama whose rows are all multiples of 256;
* the bytes of every tensor, without and with an importance matrix, for every type;
* --tensor-type / --output-tensor-type / --token-embedding-type as llama.cpp's params;
* our GGUF and legacy .dat imatrix readers against values computed here with numpy.
"""
import ctypes
import json

import gguf
import numpy as np
import pytest

from conftest import SMOL_GGUF, STORIES, outlier_weights, run, synthetic_checkpoint

MIXES = {"q2_k": 10, "q3_k_s": 11, "q3_k_m": 12, "q3_k_l": 13, "q4_k_s": 14, "q4_k_m": 15,
         "q5_k_s": 16, "q5_k_m": 17, "q6_k": 18, "q4_0": 2, "q4_1": 3, "q5_0": 8, "q5_1": 9, "q8_0": 7,
         "iq4_nl": 25, "iq4_xs": 30}
TYPES = {"q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "q2_k": 10, "q3_k": 11, "q4_k": 12,
         "q5_k": 13, "q6_k": 14, "iq4_nl": 20, "iq4_xs": 23, "mxfp4": 39, "nvfp4": 40}
PURE_FTYPE = {"q4_0": 2, "q4_1": 3, "q5_0": 8, "q5_1": 9, "q8_0": 7, "q2_k": 10, "q3_k": 12, "q4_k": 15,
              "q5_k": 17, "q6_k": 18, "iq4_nl": 25, "iq4_xs": 30, "mxfp4": 38}
# Types ggml quantizes without the imatrix.
IMATRIX_BLIND = {"q8_0", "mxfp4"}


def our_pure(tname):
    """`quantkit convert` arguments for llama-quantize's --pure at type `tname` (our MXFP4 mix is not
    llama.cpp's MXFP4_MOE, but pure they are the same: every tensor MXFP4)."""
    return ["--type", tname, "--pure"]


def llama_quantize(src, dst, ftype, *, pure=False, imatrix=None, overrides=(), output_type=None,
                   embd_type=None):
    """llama.cpp's quantizer (what llama-quantize runs), with an imatrix given as name → values."""
    llama_cpp = pytest.importorskip("llama_cpp")
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype, p.pure, p.nthread = ftype, pure, 2
    keep = []
    if imatrix:
        arr = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, v) in enumerate(imatrix.items()):
            v = np.ascontiguousarray(v, dtype=np.float32)
            keep.append(v)
            arr[i].name = name.encode()
            arr[i].data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            arr[i].size = v.size
        arr[len(imatrix)].name = None
        p.imatrix = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        keep.append(arr)
    if overrides:
        arr = (llama_cpp.llama_model_tensor_override * (len(overrides) + 1))()
        for i, (pat, t) in enumerate(overrides):
            arr[i].pattern = pat.encode()
            arr[i].type = TYPES[t]
        arr[len(overrides)].pattern = None
        p.tt_overrides = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
        keep.append(arr)
    if output_type:
        p.output_tensor_type = TYPES[output_type]
    if embd_type:
        p.token_embedding_type = TYPES[embd_type]
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(p))
    assert rc == 0, "llama_model_quantize failed"


def tensors(path):
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def compare(ours_path, theirs_path, label):
    """Types side by side (the table is the failure message) and bytes of every tensor."""
    ours, theirs = tensors(ours_path), tensors(theirs_path)
    assert set(ours) == set(theirs), label
    rows, bad_types, bad_bytes = [], [], []
    for name, t in theirs.items():
        o = ours[name]
        mark = "" if o.tensor_type == t.tensor_type else "  <-- differs"
        rows.append(f"{name:<28} llama.cpp {t.tensor_type.name:<6} quantkit {o.tensor_type.name:<6}{mark}")
        if mark:
            bad_types.append(name)
        elif bytes(o.data) != bytes(t.data):
            bad_bytes.append(name)
    table = "\n".join(rows)
    assert not bad_types, f"{label}: type choice differs\n{table}"
    assert not bad_bytes, f"{label}: bytes differ in {bad_bytes}"
    return table


@pytest.fixture(scope="session")
def mix_model(tmp_path_factory):
    """A synthetic 16-layer Llama, every row a multiple of 256, grouped-query attention (4 q heads per
    kv head), untied output: enough layers for every layer rule of the mixes to show."""
    if not STORIES.exists():
        pytest.skip("stories260K fixture not present")
    d = tmp_path_factory.mktemp("mix16")
    synthetic_checkpoint(d, arch="LlamaForCausalLM", model_type="llama", tokenizer_dir=STORIES,
                         w=outlier_weights(np.random.default_rng(5)),
                         h=256, f=512, layers=16, heads=8, kv=2, vocab=512, tied=False, biases=False,
                         max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=10000.0)
    f32 = d / "model-f32.gguf"
    run("convert", d, "--type", "f32", "-o", f32)
    return d, f32


@pytest.fixture(scope="session")
def smol_f32(tmp_path_factory):
    if not SMOL_GGUF.exists():
        pytest.skip("SmolLM2 fixture not present")
    d = tmp_path_factory.mktemp("smolf32")
    f32 = d / "smollm2-f32.gguf"
    run("convert", SMOL_GGUF, "--type", "f32", "-o", f32)
    return f32


def random_imatrix(f32_path, seed=3):
    """Plausible importance values (mean x² per column: positive, spread over decades) for every
    quantizable weight, keyed by GGUF name."""
    rng = np.random.default_rng(seed)
    out = {}
    for t in gguf.GGUFReader(f32_path).tensors:
        if len(t.shape) >= 2 and t.name != "token_embd.weight":
            out[t.name] = np.exp(rng.standard_normal(int(t.shape[0])) * 1.5).astype(np.float32)
    return out


def write_imatrix_gguf(path, values, counts=7):
    """llama.cpp's GGUF imatrix layout, written with gguf-py: in_sum2 = values·count, counts."""
    w = gguf.GGUFWriter(str(path), arch="imatrix")
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", ["synthetic"])
    w.add_uint32("imatrix.chunk_count", 3)
    w.add_uint32("imatrix.chunk_size", 512)
    for name, v in values.items():
        w.add_tensor(f"{name}.in_sum2", (v * counts).astype(np.float32).reshape(1, -1))
        w.add_tensor(f"{name}.counts", np.array([[counts]], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    # llama-quantize's loader: values = in_sum2 / count.
    return {k: (v * counts).astype(np.float32) / np.float32(counts) for k, v in values.items()}


def write_imatrix_dat(path, values, ncall=5):
    """The legacy .dat layout: n; per entry name length, name, ncall, nval, values·ncall; trailer."""
    with open(path, "wb") as f:
        f.write(np.int32(len(values)).tobytes())
        for name, v in values.items():
            f.write(np.int32(len(name)).tobytes() + name.encode())
            f.write(np.int32(ncall).tobytes() + np.int32(v.size).tobytes())
            f.write((v * ncall).astype(np.float32).tobytes())
        f.write(np.int32(3).tobytes() + np.int32(9).tobytes() + b"synthetic")
    return {k: (v * ncall).astype(np.float32) / np.float32(ncall) for k, v in values.items()}


@pytest.mark.parametrize("mix", list(MIXES))
def test_mix_matches_llama_quantize_synthetic(tmp_path, bin_ok, mix_model, mix):
    _, f32 = mix_model
    theirs = tmp_path / "llama.gguf"
    llama_quantize(f32, theirs, MIXES[mix])
    ours = tmp_path / "ours.gguf"
    run("convert", f32, "--type", mix, "-o", ours)
    compare(ours, theirs, f"{mix} (synthetic 16-layer)")
    r = gguf.GGUFReader(ours)
    assert int(r.fields["general.file_type"].parts[-1][0]) == MIXES[mix]


@pytest.mark.parametrize("mix", ["q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s",
                                 "q5_k_m", "q6_k", "iq4_nl", "iq4_xs"])
def test_mix_matches_llama_quantize_smollm2(tmp_path, bin_ok, smol_f32, mix):
    theirs = tmp_path / "llama.gguf"
    llama_quantize(smol_f32, theirs, MIXES[mix])
    ours = tmp_path / "ours.gguf"
    run("convert", smol_f32, "--type", mix, "-o", ours)
    table = compare(ours, theirs, f"{mix} (SmolLM2)")
    print(f"\n{mix} SmolLM2, per tensor:\n{table}")
    # Our dry run predicts the same plan without writing anything.
    plan = json.loads(run("convert", smol_f32, "--type", mix, "--dry-run", "--json").stdout)
    assert {p["name"]: p["ty"] for p in plan["tensors"]} == \
        {n: t.tensor_type.name.lower() for n, t in tensors(ours).items()}


@pytest.mark.parametrize("tname", list(PURE_FTYPE))
def test_imatrix_quantization_bit_exact_every_type(tmp_path, bin_ok, mix_model, tname):
    _, f32 = mix_model
    values = random_imatrix(f32)
    im = tmp_path / "imatrix.gguf"
    used = write_imatrix_gguf(im, values)
    theirs = tmp_path / "llama.gguf"
    llama_quantize(f32, theirs, PURE_FTYPE[tname], pure=True, imatrix=used)
    ours = tmp_path / "ours.gguf"
    run("convert", f32, *our_pure(tname), "--imatrix", im, "-o", ours)
    compare(ours, theirs, f"{tname} --pure with imatrix")
    # And the imatrix changed the result (except Q8_0 and MXFP4, which ggml quantizes without it).
    plain = tmp_path / "plain.gguf"
    run("convert", f32, *our_pure(tname), "-o", plain)
    a, b = tensors(ours)["blk.3.attn_q.weight"], tensors(plain)["blk.3.attn_q.weight"]
    assert (bytes(a.data) == bytes(b.data)) == (tname in IMATRIX_BLIND)
    # Without an imatrix too, the bytes are llama-quantize's.
    theirs_plain = tmp_path / "llama-plain.gguf"
    llama_quantize(f32, theirs_plain, PURE_FTYPE[tname], pure=True)
    compare(plain, theirs_plain, f"{tname} --pure")


@pytest.mark.parametrize("mix", ["q4_k_m", "q3_k_m", "q2_k", "q4_0", "iq4_xs"])
def test_mix_with_legacy_imatrix_matches_llama_quantize(tmp_path, bin_ok, mix_model, mix):
    _, f32 = mix_model
    im = tmp_path / "imatrix.dat"
    used = write_imatrix_dat(im, random_imatrix(f32, seed=4))
    theirs = tmp_path / "llama.gguf"
    llama_quantize(f32, theirs, MIXES[mix], imatrix=used)
    ours = tmp_path / "ours.gguf"
    out = json.loads(run("convert", f32, "--type", mix, "--imatrix", im, "-o", ours, "--json").stdout)
    assert out["imatrix_tensors"] > 0
    compare(ours, theirs, f"{mix} with legacy imatrix")
    r = gguf.GGUFReader(ours)
    assert bytes(r.fields["quantize.imatrix.dataset"].parts[-1]) == b"synthetic"
    if mix == "q4_0":  # llama.cpp's imatrix-only rule: first eighth of ffn_down → Q4_1
        assert tensors(ours)["blk.0.ffn_down.weight"].tensor_type == gguf.GGMLQuantizationType.Q4_1


def test_nvfp4_matches_llama_cpp(tmp_path, bin_ok, mix_model):
    """NVFP4 has no llama-quantize file type: asked for per tensor on both sides, the bytes agree
    (ggml ignores an imatrix for it)."""
    _, f32 = mix_model
    theirs = tmp_path / "llama.gguf"
    llama_quantize(f32, theirs, MIXES["q8_0"], pure=True, overrides=[(".*", "nvfp4")])
    ours = tmp_path / "ours.gguf"
    run("convert", f32, "--type", "nvfp4", "--pure", "-o", ours)
    compare(ours, theirs, "nvfp4 --pure")
    assert tensors(ours)["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.NVFP4


def test_overrides_match_llama_quantize(tmp_path, bin_ok, mix_model):
    _, f32 = mix_model
    overrides = [(r"blk\.0\.attn_v", "q8_0"), ("ffn_up", "q5_0"), (r"attn_q\.weight", "q6_k")]
    theirs = tmp_path / "llama.gguf"
    llama_quantize(f32, theirs, MIXES["q4_k_s"], overrides=overrides, output_type="q8_0", embd_type="q5_k")
    ours = tmp_path / "ours.gguf"
    args = [a for p, t in overrides for a in ("--tensor-type", f"{p}={t}")]
    run("convert", f32, "--type", "q4_k_s", *args, "--output-tensor-type", "q8_0",
        "--token-embedding-type", "q5_k", "-o", ours)
    compare(ours, theirs, "q4_k_s with overrides")


def test_recipe_roundtrips_through_toml(tmp_path, bin_ok, mix_model):
    _, f32 = mix_model
    toml_text = run("convert", f32, "--type", "q4_k_m", "--tensor-type", "attn_k=q8_0", "--print-recipe").stdout
    assert 'name = "Q4_K_M"' in toml_text and "attn_k" in toml_text
    recipe = tmp_path / "r.toml"
    recipe.write_text(toml_text)
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    run("convert", f32, "--recipe", recipe, "-o", a)
    run("convert", f32, "--type", "q4_k_m", "--tensor-type", "attn_k=q8_0", "-o", b)
    assert a.read_bytes() == b.read_bytes()
