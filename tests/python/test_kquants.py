"""k-quants: dequantization equals gguf-py's; quantization is bit-exact with llama.cpp's own
quantizer (llama_model_quantize through llama-cpp-python, --pure so every tensor gets one type)."""
import ctypes

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from conftest import run

KQ = {"q2_k": (Q.Q2_K, 10), "q3_k": (Q.Q3_K, 12), "q4_k": (Q.Q4_K, 15), "q5_k": (Q.Q5_K, 17), "q6_k": (Q.Q6_K, 18)}


@pytest.mark.parametrize("tname", list(KQ))
def test_kquant_dequantization_matches_gguf_py(tmp_path, bin_ok, llama256_dir, tname):
    out = tmp_path / f"{tname}.gguf"
    run("convert", llama256_dir, "--type", tname, "--pure", "-o", out)
    hf = tmp_path / "hf"
    run("export-hf", out, "-o", hf)
    from conftest import hf_to_gguf_name, load_safetensors, permute
    ours = {hf_to_gguf_name(k): v for k, v in load_safetensors(hf / "model.safetensors").items()}
    r = gguf.GGUFReader(out)
    for t in r.tensors:
        if len(t.shape) < 2:
            continue
        assert t.tensor_type == KQ[tname][0], t.name
        theirs = gguf.quants.dequantize(t.data, t.tensor_type).reshape(ours[t.name].shape)
        mine = ours[t.name]
        if t.name.endswith("attn_q.weight"):
            mine = permute(mine, 4)
        if t.name.endswith("attn_k.weight"):
            mine = permute(mine, 2)
        np.testing.assert_array_equal(mine, theirs, err_msg=t.name)


@pytest.mark.parametrize("tname", list(KQ))
def test_kquant_bytes_equal_llama_cpp_quantizer(tmp_path, bin_ok, llama256_dir, tname):
    llama_cpp = pytest.importorskip("llama_cpp")
    f32 = tmp_path / "f32.gguf"
    run("convert", llama256_dir, "--type", "f32", "-o", f32)
    theirs_path = tmp_path / f"llama-{tname}.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = KQ[tname][1]
    params.pure = True
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(str(f32).encode(), str(theirs_path).encode(), ctypes.byref(params))
    assert rc == 0
    ours_path = tmp_path / f"ours-{tname}.gguf"
    run("convert", f32, "--type", tname, "--pure", "-o", ours_path)
    theirs = {t.name: t for t in gguf.GGUFReader(theirs_path).tensors}
    ours = {t.name: t for t in gguf.GGUFReader(ours_path).tensors}
    assert set(theirs) == set(ours)
    mismatched = []
    for name, t in theirs.items():
        o = ours[name]
        assert o.tensor_type == t.tensor_type, (name, o.tensor_type, t.tensor_type)
        if bytes(o.data) != bytes(t.data):
            mismatched.append(name)
    assert not mismatched, f"{tname}: bytes differ from llama.cpp in {mismatched}"
