"""`check`, `verify` and the container readers never report something that isn't true (issue 12).

- check names the master it used, refuses to guess between several, and fails what it could not verify;
- verify reports the parity limits it applied (given, default or floor-widened) and `--strict` applies them as given;
- a content fault in OUT (non-ternary code, bad scale, a container its real loader refuses) is exit 1, not 2;
- `verify X --ref X` is refused;
- safetensors and GGUF containers are judged by the real loaders' rules, and each rule is checked against the real
  loader (the safetensors library; ggml's gguf.cpp through llama-cpp-python's libggml-base).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bitconv import pipeline
from bitconv.cli import app
from bitconv.core.errors import FormatError, SourceError, UsageError
from bitconv.formats.gguf.kv import KV, ValueType, encode_string
from bitconv.formats.gguf.reader import read_gguf
from bitconv.formats.gguf.types import pad
from bitconv.formats.gguf.writer import MAGIC
from bitconv.formats.safetensors import read_header
from bitconv.sinks.gguf import pack_gguf
from bitconv.sources import open_source
from bitconv.verify import Thresholds, verify
from bitconv.verify.check import check
from bitconv.verify.parity import ParityMetrics, effective_limits

runner = CliRunner()


def cli(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def repo(models, tmp_path_factory) -> Path:
    """A model repo as `bitconv demo --keep` lays it out: master, packed, unpacked copy, ternary, one GGUF."""
    base = tmp_path_factory.mktemp("trust-repo")
    master = base / "master"
    shutil.copytree(models("1bitllm"), master)
    pipeline.pack_hf(master, base / "hf-autobitlinear")
    pipeline.unpack_hf(base / "hf-autobitlinear", base / "hf-bf16")
    pipeline.quantize(master, base / "ternary")
    (base / "gguf-tq2_0").mkdir()
    pack_gguf(master, base / "gguf-tq2_0" / "model-tq2_0.gguf", "tq2_0")
    return base


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------------------------------------ check


def test_check_picks_the_real_master_not_the_unpacked_copy(repo):
    rep = check(repo, run_parity=False)
    assert rep.exit_code == 0, rep.summary
    assert rep.master == str(repo / "master") and rep.master_source == "found under PATH"
    by = {Path(a.path).name: a for a in rep.artifacts}
    assert by["master"].role == "master" and by["hf-bf16"].role == "artifact"
    assert by["hf-bf16"].status == "verified" and by["hf-bf16"].master == str(repo / "master")
    assert rep.counts == {"verified": 4, "failed": 0, "unverified": 0, "config-only": 0}
    assert json.loads(json.dumps(rep.to_dict()))["master"] == str(repo / "master")


def test_check_with_ref_names_the_master_for_every_artifact(repo, tmp_path):
    r = cli("check", repo, "--ref", repo / "master", "--no-parity", "--report", tmp_path / "c.json")
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "c.json").read_text())
    assert rep["master_source"] == "--ref"
    arts = [a for a in rep["artifacts"] if a["role"] == "artifact"]
    assert len(arts) == 4 and all(a["master"] == str(repo / "master") and a["status"] == "verified" for a in arts)
    assert "4 verified, 0 failed, 0 unverified" in r.output


def test_check_refuses_to_guess_between_two_masters(repo, tmp_path):
    r2 = _copy(repo, tmp_path / "r")
    _copy(r2 / "master", r2 / "master-copy")
    r = cli("check", r2, "--no-parity")
    assert r.exit_code == 2
    assert "2 candidate masters" in r.output and "master-copy" in r.output and "--ref" in r.output
    r = cli("check", r2, "--no-parity", "--ref", r2 / "master")
    assert r.exit_code == 0, r.output  # the second copy is verified against the named master


def test_packed_repo_without_master_is_unverified_not_passed(repo, tmp_path):
    only = _copy(repo / "hf-autobitlinear", tmp_path / "packed-repo")
    rep = check(only, run_parity=False)
    assert rep.exit_code == 1 and rep.counts["unverified"] == 1 and rep.master is None
    assert "no master to verify against" in rep.artifacts[0].findings[-1].message
    r = cli("check", only, "--no-parity")
    assert r.exit_code == 1 and "1 unverified" in r.output
    r = cli("check", only, "--config-only")
    assert r.exit_code == 0 and "nothing was verified" in r.output
    r = cli("check", only, "--no-parity", "--ref", repo / "master")  # the master lives in another repo
    assert r.exit_code == 0 and "1 verified" in r.output


def test_removing_the_master_makes_check_fail(repo, tmp_path):
    r2 = _copy(repo, tmp_path / "r")
    assert check(r2, run_parity=False).exit_code == 0
    shutil.rmtree(r2 / "master")
    rep = check(r2, run_parity=False)
    assert rep.exit_code == 1 and rep.counts["unverified"] == 4 and rep.counts["verified"] == 0


def test_ref_must_be_a_master(repo):
    with pytest.raises(UsageError, match="--ref must be a bf16 master"):
        check(repo, ref=repo / "ternary", run_parity=False)


@pytest.mark.slow
def test_demo_output_checks_with_and_without_ref(tmp_path):
    d = tmp_path / "D"
    r = cli("demo", "--keep", d)
    assert r.exit_code == 0, r.output
    for extra in ((), ("--ref", d / "master")):
        r = cli("check", d, *extra, "--report", tmp_path / "c.json")
        assert r.exit_code == 0, r.output
        rep = json.loads((tmp_path / "c.json").read_text())
        assert rep["master"] == str(d / "master") and rep["counts"]["failed"] == 0
        assert rep["counts"]["unverified"] == 0 and rep["counts"]["verified"] >= 10


# ------------------------------------------------------------------------------------------------ verify


def test_effective_limits_say_where_each_came_from():
    th = Thresholds(min_top1=0.95, given=frozenset({"min_top1"}))
    floor = ParityMetrics(max_dlogit=1.0, rel_dlogit=0.2, mean_kl=0.001, top1=0.71, top5=0.9)
    lims = {lim.name: lim for lim in effective_limits(th, floor)}
    assert lims["min_top1"].source == "floor-widened" and lims["min_top1"].requested == 0.95
    assert lims["min_top1"].applied == pytest.approx(0.66) and lims["min_top1"].widened_by == pytest.approx(-0.29)
    assert lims["max_rel_dlogit"].source == "floor-widened" and lims["max_rel_dlogit"].applied == pytest.approx(0.255)
    assert lims["min_top5"].source == "default" and lims["max_dlogit"].source == "off"
    out = ParityMetrics(max_dlogit=1.0, rel_dlogit=0.2, mean_kl=0.001, top1=0.70, top5=0.9)
    assert out.failures(th, floor) == []  # within the widened limits
    assert any("top-1" in m for m in out.failures(th, None))  # --strict: as given
    strict = {lim.name: lim for lim in effective_limits(th, None)}
    assert strict["min_top1"].source == "given" and strict["min_top1"].applied == 0.95


def test_verify_json_reports_applied_thresholds_and_strict(repo, tmp_path):
    art = repo / "hf-autobitlinear"
    r = cli("verify", art, "--ref", repo / "master", "--min-top1", "0.9", "--report", tmp_path / "v.json")
    rep = json.loads((tmp_path / "v.json").read_text())
    par = rep["parity"]
    assert par["thresholds"]["min_top1"] == 0.9 and par["thresholds_given"] == ["min_top1"]
    lim = {x["name"]: x for x in par["limits"]}
    assert lim["min_top1"]["requested"] == 0.9
    assert lim["min_top1"]["applied"] == par["effective_thresholds"]["min_top1"]
    assert lim["min_top1"]["source"] in ("given", "floor-widened") and lim["max_kl"]["source"] in ("default",
                                                                                                  "floor-widened")
    assert r.exit_code == rep["exit_code"]
    rs = cli("verify", art, "--ref", repo / "master", "--strict", "--min-top1", "1.0", "--min-top5", "1.0",
             "--max-kl", "0", "--max-rel-dlogit", "0", "--report", tmp_path / "s.json")
    srep = json.loads((tmp_path / "s.json").read_text())
    assert srep["parity"]["strict"] is True
    assert all(x["source"] in ("given", "off") for x in srep["parity"]["limits"])
    if srep["parity"]["out_vs_ref"]["max_dlogit"] > 0:  # any difference at all breaks a zero limit
        assert rs.exit_code == 1


def test_verify_against_itself_is_refused(repo, tmp_path):
    r = cli("verify", repo / "master", "--ref", repo / "master")
    assert r.exit_code == 2 and "same checkpoint" in r.output
    link = tmp_path / "alias"
    link.symlink_to(repo / "hf-autobitlinear", target_is_directory=True)
    with pytest.raises(UsageError, match="same checkpoint"):
        verify(link, repo / "hf-autobitlinear", run_parity=False)
    hard = tmp_path / "hard"
    hard.mkdir()
    for f in (repo / "master").iterdir():
        os.link(f, hard / f.name)  # another folder whose weight file is the same inode
    with pytest.raises(UsageError, match="same checkpoint"):
        verify(hard, repo / "master", run_parity=False)


def _poke_packed(folder: Path, value: int) -> str:
    from bitconv.formats.safetensors import read_header as rh

    infos, _ = rh(folder / "model.safetensors")
    name = next(n for n, t in infos.items() if t.dtype == "U8")
    with open(folder / "model.safetensors", "r+b") as f:
        f.seek(infos[name].offset)
        f.write(bytes([value]))
    return name


def test_packed_bit_pair_11_is_a_verification_failure(repo, tmp_path):
    bad = _copy(repo / "hf-autobitlinear", tmp_path / "bad")
    name = _poke_packed(bad, 0xFF)
    r = cli("verify", bad, "--ref", repo / "master", "--report", tmp_path / "v.json")
    assert r.exit_code == 1, r.output
    rep = json.loads((tmp_path / "v.json").read_text())
    hit = [f for f in rep["findings"] if f["fault"] == "content"]
    assert hit and hit[0]["subject"] == name and "0b11" in hit[0]["message"]
    with pytest.raises(FormatError, match="0b11"):  # as the input of a conversion: bad input (exit 2)
        pipeline.pack_hf(bad, tmp_path / "out")
    assert cli("pack", bad, "--to", "hf", "-o", tmp_path / "out2").exit_code == 2


def test_i2s_code_3_is_a_verification_failure(repo, tmp_path):
    (tmp_path / "g").mkdir()
    out = pack_gguf(repo / "master", tmp_path / "g" / "m.gguf", "i2_s").out
    g = read_gguf(out)
    t = next(t for t in g.tensors.values() if t.type.name == "I2_S")
    raw = bytearray(out.read_bytes())
    raw[t.offset] = 0xFF
    out.write_bytes(bytes(raw))
    rep = verify(out, repo / "master")
    assert rep.exit_code == 1 and any(f.fault == "content" and "0b11" in f.message for f in rep.findings)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0.0, -0.5])
def test_bad_stored_scale_is_a_verification_failure(repo, tmp_path, value):
    bad = _copy(repo / "ternary", tmp_path / "bad")
    infos, _ = read_header(bad / "model.safetensors")
    name = next(n for n in infos if n.endswith("weight_scale"))
    with open(bad / "model.safetensors", "r+b") as f:
        f.seek(infos[name].offset)
        f.write(np.array([value], dtype="<f4").tobytes())
    rep = verify(bad, repo / "master", run_parity=False)
    assert rep.exit_code == 1
    assert any(f.fault == "content" and "finite and > 0" in f.message for f in rep.findings)
    with pytest.raises(FormatError, match="finite and > 0"):
        pipeline.pack_hf(bad, tmp_path / "o")


# ------------------------------------------------------------------------------------------------ safetensors rules


def _st(path: Path, header: dict, data: bytes) -> Path:
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(struct.pack("<Q", len(head)) + head + data)
    return path


ST_BAD = {
    "gap": ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
             "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]}}, bytes(20), "unused bytes"),
    "trailing": ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(12), "trailing bytes"),
    "leading-gap": ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12), "unused bytes"),
}


@pytest.mark.parametrize("case", sorted(ST_BAD))
def test_safetensors_rules_match_the_library(tmp_path, case):
    from safetensors import SafetensorError, safe_open

    header, data, fragment = ST_BAD[case]
    p = _st(tmp_path / "x.safetensors", header, data)
    with pytest.raises(SafetensorError):  # the real loader refuses the file
        with safe_open(str(p), "np") as f:
            [f.get_tensor(k) for k in f.keys()]
    with pytest.raises(FormatError, match=fragment):
        read_header(p)
    good = _st(tmp_path / "ok.safetensors", {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(8))
    with safe_open(str(good), "np") as f:
        assert f.get_tensor("a").shape == (2,)
    assert read_header(good)[0]["a"].nbytes == 8


def test_safetensors_gap_in_out_fails_verify_exit_1(repo, tmp_path):
    bad = _copy(repo / "hf-autobitlinear", tmp_path / "bad")
    with open(bad / "model.safetensors", "ab") as f:
        f.write(b"\0" * 16)
    r = cli("verify", bad, "--ref", repo / "master")
    assert r.exit_code == 1 and "trailing bytes" in r.output
    with pytest.raises(SourceError, match="trailing bytes"):
        open_source(bad)


# ------------------------------------------------------------------------------------------------ GGUF rules


def _ggml_loader():
    """ggml's own gguf.cpp loader from llama-cpp-python's libggml-base, or None when it is not installed."""
    try:
        import llama_cpp
    except ImportError:
        return None
    lib = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so"))

    class Params(ctypes.Structure):
        _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]

    lib.gguf_init_from_file.restype = ctypes.c_void_p
    lib.gguf_init_from_file.argtypes = [ctypes.c_char_p, Params]
    lib.gguf_free.argtypes = [ctypes.c_void_p]

    def loads(path: Path) -> bool:
        ctx = lib.gguf_init_from_file(str(path).encode(), Params(True, None))
        if ctx:
            lib.gguf_free(ctx)
        return bool(ctx)

    return loads


def _raw_gguf(path: Path, kvs: list[KV], tensors: list[tuple[str, int, int | None]], align: int = 32) -> Path:
    """F32 1-D tensors (name, n, offset or None for the laid-out one), data placed at the given offsets."""
    laid, off = [], 0
    for _name, n, given in tensors:
        laid.append(off if given is None else given)
        off += pad(4 * n, align)
    head = MAGIC + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(kv.encode() for kv in kvs)
    for (name, n, _), o in zip(tensors, laid):
        head += encode_string(name) + struct.pack("<IQIQ", 1, n, 0, o)
    head += bytes(pad(len(head), align) - len(head))
    size = max(o + 4 * n for (_, n, _), o in zip(tensors, laid))
    data = bytearray(pad(size, align))
    for (_, n, _), o in zip(tensors, laid):
        data[o:o + 4 * n] = np.arange(n, dtype="<f4").tobytes()
    path.write_bytes(head + bytes(data))
    return path


ARCH = KV.string("general.architecture", "llama")
GGUF_BAD = {
    "duplicate-key": ([ARCH, KV.u32("general.alignment", 32), KV.u32("general.alignment", 32)],
                      [("a", 8, None)], "appears twice"),
    "empty-key": ([ARCH, KV.u32("", 1)], [("a", 8, None)], "key is empty"),
    "alignment-not-power-of-two": ([ARCH, KV.u32("general.alignment", 48)], [("a", 8, None)], "not a power of two"),
    "alignment-not-u32": ([ARCH, KV("general.alignment", ValueType.UINT64, 32)], [("a", 8, None)], "requires UINT32"),
    "data-out-of-order": ([ARCH], [("a", 8, 32), ("b", 8, 0)], "out of tensor-info order"),
    "data-gap": ([ARCH], [("a", 8, None), ("b", 8, 64)], "out of tensor-info order or follows a gap"),
    "duplicate-tensor": ([ARCH], [("a", 8, None), ("a", 8, None)], "appears twice"),
}


@pytest.mark.parametrize("case", sorted(GGUF_BAD))
def test_gguf_rules_match_ggml(tmp_path, case):
    kvs, tensors, fragment = GGUF_BAD[case]
    p = _raw_gguf(tmp_path / "bad.gguf", kvs, tensors)
    with pytest.raises(FormatError, match=fragment):
        read_gguf(p)
    ok = _raw_gguf(tmp_path / "ok.gguf", [ARCH], [("a", 8, None), ("b", 8, None)])
    assert set(read_gguf(ok).tensors) == {"a", "b"}
    loads = _ggml_loader()
    if loads is None:
        pytest.skip("llama-cpp-python (the ggml loader oracle) is not installed: pip install 'bitconv[llamacpp]'")
    assert loads(ok) and not loads(p)


def test_gguf_out_of_order_out_fails_verify_exit_1(repo, tmp_path):
    src = repo / "gguf-tq2_0" / "model-tq2_0.gguf"
    g = read_gguf(src)
    first = min(g.tensors.values(), key=lambda t: t.offset)
    raw = bytearray(src.read_bytes())
    # point the first tensor's info at the second tensor's data: out of info order for ggml
    pos = raw.index(encode_string(first.name)) + len(encode_string(first.name))
    n_dims = struct.unpack_from("<I", raw, pos)[0]
    at = pos + 4 + 8 * n_dims + 4
    second = sorted(g.tensors.values(), key=lambda t: t.offset)[1]
    raw[at:at + 8] = struct.pack("<Q", second.offset - g.data_start)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(raw))
    rep = verify(bad, repo / "master", run_parity=False)
    assert rep.exit_code == 1 and rep.findings[0].fault == "container"
    assert cli("inspect", bad).exit_code == 2  # as an input it is bad input
