"""`bitconv verify OUT.gguf --ref MASTER --runtime llama.cpp`: every arch x type that upstream llama.cpp runs passes
in the real runtime (llama-cpp-python, the `llamacpp` extra, installed by .ci/run); a relu2 model in llama.cpp's
SiLU `bitnet` graph, an inverted or negated scale and permuted rows fail (exit 1) and say which; what llama.cpp
cannot load and a missing llama-cpp-python are bad input (exit 2). The llama.cpp emulation (Q8_K) is checked
against a literal transcription of ggml's quantizer."""

from __future__ import annotations

import shutil
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bitconv.cli import app
from bitconv.core.errors import UsageError
from bitconv.formats.gguf.reader import read_gguf
from bitconv.sinks.gguf import pack_gguf
from bitconv.sources import open_source
from bitconv.verify import verify
from bitconv.verify.parity import default_tokens
from bitconv.verify.reference import q8_0, q8k
from bitconv.verify.runtime import EMULATION_LIMIT, REFERENCE_LIMIT, check_runnable, runtime_check

try:
    import llama_cpp  # noqa: F401
    IMPORT_ERROR = None
except ImportError as e:
    IMPORT_ERROR = e
try:  # installed (as .ci/run does) but not importable is a failure below, never a skip
    INSTALLED = bool(version("llama-cpp-python"))
except PackageNotFoundError:
    INSTALLED = False

needs_llama_cpp = pytest.mark.skipif(IMPORT_ERROR is not None and not INSTALLED, reason="llama-cpp-python is not "
                                     "installed (pip install 'bitconv[llamacpp]'; .ci/run installs it, so these run "
                                     "in CI)")
runner = CliRunner()

# HF arch -> GGUF arch upstream llama.cpp loads for it (bitconv's default for both)
UPSTREAM = {"1bitllm": "bitnet", "llama-bitnet": "llama"}
TYPES = ("tq1_0", "tq2_0", "f16", "bf16", "f32")


def cli(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="session")
def ggufs(models, tmp_path_factory):
    base = tmp_path_factory.mktemp("runtime-ggufs")
    cache: dict = {}

    def get(arch: str, gtype: str, garch: str | None = None) -> tuple[Path, Path]:
        key = (arch, gtype, garch)
        if key not in cache:
            master = models(arch)
            out = base / f"{arch}-{garch}-{gtype}.gguf"
            # a relu2 model as arch bitnet runs correctly nowhere: pack refuses it unless forced (the file under test)
            pack_gguf(master, out, gtype, arch=garch, force=arch == "bitnet-2b4t" and garch == "bitnet")
            cache[key] = (out, master)
        return cache[key]

    return get


# ------------------------------------------------------------------------------------------------ emulation


def _q8k_literal(x: np.ndarray) -> np.ndarray:
    """ggml-quants.c quantize_row_q8_K_ref + dequantize_row_q8_K, one element at a time, float32 throughout."""
    out = np.zeros_like(x)
    for b in range(0, x.size, 256):
        blk = x[b:b + 256]
        mx, amax = np.float32(0), np.float32(0)
        for v in blk:
            if abs(v) > amax:
                amax, mx = abs(v), v
        if amax == 0:
            continue
        iscale = np.float32(-127.0) / mx
        q = np.minimum(127, np.rint(iscale * blk))  # nearest_int: round half to even
        out[b:b + 256] = q.astype(np.float32) * (np.float32(1.0) / iscale)
    return out


def test_q8k_matches_ggml_quantizer_element_by_element():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4 * 256, generator=g) * torch.tensor([0.01, 1.0, 30.0, 1e-3]).repeat_interleave(256)
    x[256:512] = 0.0  # an all-zero block: d = 0
    x[600], x[700] = 5.0, -5.0  # a tie in |x| with opposite signs: the first one sets the sign of iscale
    x[900:904] = torch.tensor([0.5, -0.5, 1.5, 2.5]) / 127 * x[768:1024].abs().max()  # exact .5 products
    got = q8k(x.float()).numpy()
    want = _q8k_literal(x.float().numpy())
    assert np.array_equal(got, want)
    assert np.all(got[256:512] == 0)
    # a broken quantizer (round half away from zero, or 128 levels) differs
    assert not np.array_equal(q8k(x.float() * 1.001).numpy(), want)


def test_q8_0_is_int8_per_32_with_fp16_scale():
    x = torch.linspace(-3, 5, 64)
    y = q8_0(x)
    for blk_x, blk_y in zip(x.view(2, 32), y.view(2, 32)):
        d = float(torch.tensor(float(blk_x.abs().max()) / 127).half())
        q = blk_y / d
        assert torch.allclose(q, q.round(), atol=1e-4) and q.abs().max() <= 127
    assert float((x - y).abs().max()) <= 5 / 127 / 2 * 1.01


# ------------------------------------------------------------------------------ bad input (no llama.cpp needed)


@pytest.mark.parametrize("gtype", ["i2_s", "tl2"])
def test_types_llama_cpp_cannot_run_exit_2(ggufs, models, tmp_path, gtype):
    master = models("1bitllm")
    out = tmp_path / gtype / f"model-{gtype}.gguf"
    out.parent.mkdir()
    pack_gguf(master, out, gtype, force=gtype == "tl2")  # K = 256 TL2 runs nowhere: pack refuses unless forced
    r = cli("verify", out, "--ref", master, "--runtime", "llama.cpp")
    assert r.exit_code == 2, r.output
    assert f"llama.cpp cannot run GGML type {gtype.upper()}" in r.output and "runs on: bitnet.cpp" in r.output


def test_arch_llama_cpp_cannot_load_exit_2(ggufs):
    out, master = ggufs("bitnet-2b4t", "tq2_0")  # default arch bitnet-b1.58: unknown upstream
    with pytest.raises(UsageError, match="cannot run GGUF architecture 'bitnet-b1.58'.*runs on: bitnet.cpp"):
        check_runnable(open_source(out), "llama.cpp")
    assert cli("verify", out, "--ref", master, "--runtime", "llama.cpp").exit_code == 2


def test_missing_llama_cpp_python_exit_2_with_install_command(ggufs, monkeypatch):
    out, master = ggufs("1bitllm", "tq2_0")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails as if not installed
    r = cli("verify", out, "--ref", master, "--runtime", "llama.cpp")
    assert r.exit_code == 2
    assert "pip install 'bitconv[llamacpp]'" in r.output and "CMAKE_ARGS" in r.output


def test_unknown_runtime_non_gguf_and_bad_tokens_exit_2(ggufs, models, tmp_path):
    out, master = ggufs("1bitllm", "tq2_0")
    assert cli("verify", out, "--ref", master, "--runtime", "vllm").exit_code == 2
    assert cli("verify", master, "--ref", master, "--runtime", "llama.cpp").exit_code == 2
    (tmp_path / "ids.txt").write_text("1 2 512\n")  # vocab is 512: id 512 would abort llama.cpp
    with pytest.raises(UsageError, match="token ids must be"):
        runtime_check(open_source(out), open_source(master), torch.tensor([[1, 2, 512]]),
                      runner=lambda p, i: pytest.fail("ran the runtime on a bad id"))
    r = cli("verify", out, "--ref", master, "--runtime", "llama.cpp", "--no-parity", "--tokens", tmp_path / "ids.txt")
    assert r.exit_code == 2 and "token ids must be" in r.output


def test_diagnosis_without_the_runtime(ggufs):
    """The oracles and diagnoses on logits that stand in for a runtime: the emulation itself passes; the
    emulation run with SiLU on a relu2 model fails naming the activation; shuffled logits match nothing."""
    from bitconv.verify.reference import RefConfig, TensorCache, Weights, forward

    out, master = ggufs("bitnet-2b4t", "tq2_0", "bitnet")
    out_ck, ref_ck = open_source(out), open_source(master)
    ids = default_tokens(512, 1, 16)
    _, _, types = check_runnable(out_ck, "llama.cpp")
    cfg = RefConfig.from_hf(ref_ck.config)

    def emulate(act: str) -> torch.Tensor:
        import dataclasses

        from bitconv.verify.roundtrip import stored_scale
        w = Weights(ref_ck, "ggml", TensorCache(ref_ck), scale_fn=lambda s: stored_scale(s, ("F16", False)),
                    ggml=types)
        return forward(dataclasses.replace(cfg, act=act), [w], ids)[0]

    good = runtime_check(out_ck, ref_ck, ids, runner=lambda p, i: emulate("relu2"))
    assert good.ok, good.failures
    assert good.emulation.metrics.rel_dlogit == 0.0
    silu = runtime_check(out_ck, ref_ck, ids, runner=lambda p, i: emulate("silu"))
    assert not silu.ok and not silu.emulation.ok
    assert any("runs a silu FFN, but the model needs relu2" in d for d in silu.diagnosis), silu.diagnosis
    noise = runtime_check(out_ck, ref_ck, ids, runner=lambda p, i: emulate("relu2").flip(-1))
    assert not noise.ok and noise.diagnosis[0].startswith("no known fault explains")


# ------------------------------------------------------------------------------------------------ real llama.cpp


@needs_llama_cpp
def test_installed_llama_cpp_python_imports():
    assert IMPORT_ERROR is None, f"llama-cpp-python is installed but does not import: {IMPORT_ERROR}"


def _runtime_table_row(rep) -> str:
    r = rep.runtime
    return (f"{r.arch} {'/'.join(r.types)}: reference {r.reference.metrics.rel_dlogit:.3%} top-1 "
            f"{r.reference.metrics.top1:.1%}; emulation {r.emulation.metrics.rel_dlogit:.4%} top-1 "
            f"{r.emulation.metrics.top1:.1%}")


@pytest.mark.slow
@needs_llama_cpp
@pytest.mark.parametrize("gtype", TYPES)
@pytest.mark.parametrize("arch", list(UPSTREAM))
def test_every_upstream_arch_and_type_passes_in_llama_cpp(ggufs, arch, gtype):
    out, master = ggufs(arch, gtype)
    rep = verify(out, master, runtime="llama.cpp")
    assert rep.runtime.arch == UPSTREAM[arch]
    assert rep.ok, [f.message for f in rep.findings]
    r = rep.runtime
    assert r.emulation.metrics.rel_dlogit <= EMULATION_LIMIT and r.emulation.metrics.top1 >= 0.99
    assert r.reference.metrics.rel_dlogit <= REFERENCE_LIMIT[gtype.upper()]
    print(_runtime_table_row(rep))


@pytest.mark.slow
@needs_llama_cpp
def test_cli_runtime_pass_and_report(ggufs, tmp_path):
    out, master = ggufs("1bitllm", "tq2_0")
    r = cli("verify", out, "--ref", master, "--runtime", "llama.cpp", "--report", tmp_path / "r.json")
    assert r.exit_code == 0, r.output
    assert "llama.cpp vs emulation" in r.output and "llama.cpp vs reference" in r.output
    import json
    d = json.loads((tmp_path / "r.json").read_text())
    assert d["runtime"]["ok"] and d["runtime"]["emulation"]["metrics"]["rel_dlogit"] <= EMULATION_LIMIT


@pytest.mark.slow
@needs_llama_cpp
@pytest.mark.parametrize("gtype", ["tq2_0", "f16"])
def test_relu2_model_in_llama_cpp_bitnet_graph_fails_naming_activation(ggufs, gtype):
    out, master = ggufs("bitnet-2b4t", gtype, "bitnet")
    r = cli("verify", out, "--ref", master, "--runtime", "llama.cpp", "--no-parity")
    assert r.exit_code == 1, r.output
    text = " ".join(r.output.split())
    assert "runs a silu FFN, but the model needs relu2" in text and "wrong activation" in text


# byte-level mutations of one projection in a GGUF file: the file still loads


def _tensor(path: Path, name: str):
    return read_gguf(path).tensors[name]


def _mutate(src: Path, dst: Path, name: str, fn) -> None:
    shutil.copy(src, dst)
    t = _tensor(dst, name)
    with open(dst, "r+b") as f:
        f.seek(t.offset)
        data = np.frombuffer(f.read(t.nbytes), dtype=np.uint8).copy()
        new = fn(data, t)
        f.seek(t.offset)
        f.write(new.tobytes())


def _tq2_d(data: np.ndarray) -> np.ndarray:
    return data.reshape(-1, 66)[:, 64:66].copy().view("<f2")


def _tq2_set_d(data: np.ndarray, d: np.ndarray) -> np.ndarray:
    blocks = data.reshape(-1, 66)
    blocks[:, 64:66] = d.astype("<f2").view(np.uint8).reshape(-1, 2)
    return data


def _invert_tq2(data, t):
    d = _tq2_d(data).astype(np.float32)
    return _tq2_set_d(data, np.where(d != 0, 1.0 / np.where(d != 0, d, 1), 0))


def _negate_tq2(data, t):
    return _tq2_set_d(data, -_tq2_d(data))


def _permute_rows(data, t):
    rows = data.reshape(t.shape[0], -1)  # one row per output feature
    perm = np.arange(rows.shape[0])
    perm[[0, 5, 17, 40]] = perm[[40, 0, 5, 17]]
    return rows[perm].copy()


def _invert_f16(data, t):
    w = data.view("<f2").astype(np.float32)
    return np.where(w != 0, 1.0 / np.where(w != 0, w, 1), 0).astype("<f2").view(np.uint8)


MUTATIONS = {
    "tq2_0 inverted scale": ("tq2_0", _invert_tq2),
    "tq2_0 permuted rows": ("tq2_0", _permute_rows),
    "tq1_0 permuted rows": ("tq1_0", _permute_rows),
    "f16 inverted scale": ("f16", _invert_f16),
}


@pytest.mark.slow
@needs_llama_cpp
@pytest.mark.parametrize("what", MUTATIONS)
def test_mutated_file_fails_in_llama_cpp(ggufs, tmp_path, what):
    gtype, fn = MUTATIONS[what]
    out, master = ggufs("1bitllm", gtype)
    bad = tmp_path / "bad.gguf"
    _mutate(out, bad, "blk.1.ffn_down.weight", fn)
    rep = verify(bad, master, runtime="llama.cpp", run_parity=False)
    assert rep.exit_code == 1
    r = rep.runtime
    assert not r.emulation.ok and not r.reference.ok, _runtime_table_row(rep)
    assert any(d.startswith("llama.cpp computes what the file holds, but the file's weights are not REF's")
               for d in r.diagnosis), r.diagnosis
    assert any(f.check == "roundtrip" and f.subject == "model.layers.1.mlp.down_proj.weight" for f in rep.findings)


def test_non_finite_runtime_logits_fail(ggufs):
    out, master = ggufs("1bitllm", "tq2_0")
    out_ck, ref_ck = open_source(out), open_source(master)
    ids = default_tokens(512, 1, 8)

    def nan_runner(path, i):
        x = torch.zeros(i.shape[0], i.shape[1], 512)
        x[0, 3, 7] = float("nan")
        return x

    rep = runtime_check(out_ck, ref_ck, ids, runner=nan_runner)
    assert not rep.ok and "non-finite logits (1 values)" in rep.failures[0]


def test_negated_tq_scale_is_refused_naming_the_tensor(ggufs, tmp_path):
    """A negative block scale is no model any runtime should run: a content fault of OUT, so verify fails (exit 1,
    the tensor named) without asking llama.cpp; it never passes."""
    out, master = ggufs("1bitllm", "tq2_0")
    bad = tmp_path / "neg.gguf"
    _mutate(out, bad, "blk.1.ffn_down.weight", _negate_tq2)
    r = cli("verify", bad, "--ref", master, "--runtime", "llama.cpp")
    assert r.exit_code == 1
    assert "blk.1.ffn_down.weight" in r.output and "finite and > 0" in " ".join(r.output.split())
