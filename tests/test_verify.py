"""bitconv verify / check: every layout bitconv writes passes on every fixture architecture; every real-world
mistake (flipped codes, inverted scale, permuted or shifted rows, changed sub-norm, re-quantized codes, q/k
permutation applied twice) fails with a message that names the tensor and the fault; CLI exit codes and reports."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from bitconv import pipeline
from bitconv.cli import app
from bitconv.core import dtypes
from bitconv.core.naming import module_of
from bitconv.core.tensors import Ternary
from bitconv.layouts import get_layout
from bitconv.quant import dequantize, ternarize
from bitconv.sinks import nanotron as convert
from bitconv.sinks.gguf import pack_gguf
from bitconv.sources import open_source
from bitconv.verify import FAULTS, Thresholds, verify
from bitconv.verify.check import check, find_checkpoints
from bitconv.verify.parity import ParityMetrics, tokens_from_file, tokens_from_prompt
from bitconv.verify.roundtrip import permute_qk, row_permutation, stored_scale

GGUF_TYPES = ("i2_s", "tl1", "tl2", "tq1_0", "tq2_0", "f16", "bf16", "f32", "iq1_bn", "iq2_bn", "iq2_bn_r4")
HF_FORMATS = ("hf-autobitlinear", "hf-bitlinear", "bitconv-ternary")
ARCHS = [("bitnet-2b4t", True), ("bitnet-2b4t", False), ("llama-bitnet", None), ("1bitllm", None)]

runner = CliRunner()


def cli(*args: object, env: dict | None = None):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False, env=env)


def make(fmt: str, src: Path, out: Path, compute: str = "float32") -> Path:
    """Write `fmt` from `src` (a master or a bitconv ternary checkpoint); returns the artifact path."""
    if fmt == "bitconv-ternary":
        return pipeline.quantize(src, out, compute=compute).out
    if fmt.startswith("hf-"):
        return pipeline.pack_hf(src, out, linear_class=fmt[3:], compute=compute).out
    out.mkdir()  # TL types write kernel_config.ini next to the file: one folder per artifact
    # the tiny models have K = 256, whose TL2 tilings bitnet.cpp cannot run: forced, the bytes are still checked
    return pack_gguf(src, out / f"model-{fmt[5:]}.gguf", fmt[5:], compute=compute, force=fmt == "gguf-tl2").out


FORMATS = HF_FORMATS + tuple(f"gguf-{t}" for t in GGUF_TYPES)


@pytest.fixture(scope="session")
def artifacts(models, tmp_path_factory):
    base = tmp_path_factory.mktemp("verify-artifacts")
    cache: dict = {}

    def get(arch: str, tied: bool | None, fmt: str, compute: str = "float32") -> tuple[Path, Path]:
        key = (arch, tied, fmt, compute)
        if key not in cache:
            master = models(arch, tied=tied)
            cache[key] = (make(fmt, master, base / "-".join(map(str, key)), compute), master)
        return cache[key]

    return get


# ------------------------------------------------------------------------------------------------ round trips pass


# the inner loop (`-m "not slow"`) keeps one arch per packed family; CI runs every (arch, format) pair
FAST_ROUND_TRIPS = {("hf-autobitlinear", "bitnet-2b4t", True), ("hf-bitlinear", "llama-bitnet", None),
                    ("bitconv-ternary", "1bitllm", None), ("gguf-i2_s", "bitnet-2b4t", False),
                    ("gguf-tq2_0", "bitnet-2b4t", True)}
ROUND_TRIPS = [pytest.param(fmt, arch, tied, marks=[] if (fmt, arch, tied) in FAST_ROUND_TRIPS else [pytest.mark.slow])
               for arch, tied in ARCHS for fmt in FORMATS]


@pytest.mark.parametrize("fmt,arch,tied", ROUND_TRIPS)
def test_every_layout_round_trips_on_every_arch(artifacts, arch, tied, fmt):
    out, master = artifacts(arch, tied, fmt)
    rep = verify(out, master)
    assert rep.ok, [f.message for f in rep.findings]
    assert rep.exit_code == 0
    assert rep.roundtrip.compute == "float32"
    assert rep.roundtrip.n_ternary == 14
    assert rep.parity.out_vs_ref.top1 >= 0.9 and rep.parity.out_vs_ref.rel_dlogit < 0.03


@pytest.mark.parametrize("fmt", ["bitconv-ternary", "hf-bitlinear"])
def test_bfloat16_compute_is_detected(artifacts, fmt):
    out, master = artifacts("bitnet-2b4t", False, fmt, "bfloat16")
    rep = verify(out, master)
    assert rep.ok, [f.message for f in rep.findings]
    assert rep.roundtrip.compute == "bfloat16" and "onebitllms" in rep.roundtrip.compute_note
    assert rep.parity.ref_mode == "online (bfloat16)"


@pytest.mark.slow
def test_golden_artifacts_verify(golden_hf):
    for name in ("packed-autobitlinear-offline", "packed-bitlinear"):
        rep = verify(golden_hf / name, golden_hf / "input")
        assert rep.ok and rep.roundtrip.compute == "float32", [f.message for f in rep.findings]


# ------------------------------------------------------------------------------------------------ mutations

UP = "model.layers.0.mlp.up_proj.weight"
DOWN = "model.layers.1.mlp.down_proj.weight"
Q = "model.layers.0.self_attn.q_proj.weight"
K = "model.layers.1.self_attn.k_proj.weight"
SUB_NORM = "model.layers.1.mlp.ffn_sub_norm.weight"
Mutation = Callable[[dict[str, Ternary], dict[str, torch.Tensor], dict], str]


def _flip_row(t: dict, p: dict, cfg: dict) -> str:
    c = t[UP].codes.copy()
    c[5, :16] = np.where(c[5, :16] == 0, 1, -c[5, :16])
    t[UP] = Ternary(c, t[UP].scale)
    return UP


def _invert_scale(t: dict, p: dict, cfg: dict) -> str:
    t[DOWN] = Ternary(t[DOWN].codes, np.float32(1.0) / t[DOWN].scale)
    return DOWN


def _permute_rows(t: dict, p: dict, cfg: dict) -> str:
    c = t[DOWN].codes.copy()
    c[[3, 40]] = c[[40, 3]]
    t[DOWN] = Ternary(c, t[DOWN].scale)
    return DOWN


def _shift_rows(t: dict, p: dict, cfg: dict) -> str:
    t[UP] = Ternary(np.roll(t[UP].codes, 4, axis=0), t[UP].scale)
    return UP


def _sub_norm(t: dict, p: dict, cfg: dict) -> str:
    name = SUB_NORM if SUB_NORM in p else "model.layers.1.post_attention_layernorm.weight"
    p[name] = (p[name].float() * 1.25).to(p[name].dtype)
    return name


def _requantize(t: dict, p: dict, cfg: dict) -> str:
    t[DOWN] = ternarize(dequantize(t[DOWN]))  # bf16(codes * scale), ternarized again
    return DOWN


def _qk_twice(t: dict, p: dict, cfg: dict) -> str:
    heads = cfg["num_key_value_heads"]
    t[K] = Ternary(permute_qk(permute_qk(t[K].codes, heads), heads), t[K].scale)
    return K


MUTATIONS: dict[str, tuple[Mutation, tuple[str, ...]]] = {
    "flipped codes in one row": (_flip_row, ("codes",)),
    "inverted scale": (_invert_scale, ("scale-inverted",)),
    "rows permuted": (_permute_rows, ("rows-permuted",)),
    "rows shifted": (_shift_rows, ("rows-shifted",)),
    "sub-norm weight changed": (_sub_norm, ("sub-norm", "passthrough")),
    "re-quantized ternary weights": (_requantize, ("requantized",)),
    "q/k permutation applied twice": (_qk_twice, ("qk-permutation",)),
}


def mutate(src: Path, dst: Path, layout: str, mutation: Mutation) -> str:
    """Copy an HF-layout artifact (packed or bitconv ternary) with one logical mutation, re-encoded in `layout`."""
    ck = open_source(src)
    shutil.copytree(src, dst)
    stored = load_file(dst / "model.safetensors")
    terns = {t.name: t.ternary() for t in ck.ternary_tensors()}
    passthrough = {n: stored[n] for n, t in ck.tensors.items() if not t.is_ternary}
    before = dict(terns)
    target = mutation(terns, passthrough, ck.config)
    lay = get_layout(layout)
    for name, t in terns.items():
        if t is before[name]:
            continue
        specs = lay.spec(t.shape)
        for field, arr in lay.pack(t).items():
            stored[f"{module_of(name)}.{field}"] = dtypes.from_numpy_storage(
                np.asarray(arr), specs[field].dtype).reshape(specs[field].shape).clone()
    stored.update(passthrough)
    save_file(stored, dst / "model.safetensors", metadata={"format": "pt"})
    return target


def mutated(artifacts, tmp_path: Path, fmt: str, mutation: Mutation, arch: str = "bitnet-2b4t",
            tied: bool | None = False) -> tuple[Path, Path, str]:
    if fmt in HF_FORMATS:
        out, master = artifacts(arch, tied, fmt)
        target = mutate(out, tmp_path / "mut", fmt, mutation)
        return tmp_path / "mut", master, target
    tern, master = artifacts(arch, tied, "bitconv-ternary")  # GGUF: mutate the ternary source, then pack it
    target = mutate(tern, tmp_path / "mut-tern", "bitconv-ternary", mutation)
    return make(fmt, tmp_path / "mut-tern", tmp_path / "mut"), master, target


MUT_FORMATS = [*HF_FORMATS, "gguf-i2_s", "gguf-tq2_0", "gguf-tl2"]


def assert_fails_naming(rep, target: str, faults: tuple[str, ...]) -> None:
    assert rep.exit_code == 1 and not rep.ok
    hits = [f for f in rep.findings if f.subject == target and f.fault in faults]
    assert hits, [f.message for f in rep.findings]
    assert target in hits[0].message and FAULTS[hits[0].fault] in hits[0].message


@pytest.mark.parametrize("fmt", MUT_FORMATS)
@pytest.mark.parametrize("what", MUTATIONS)
def test_mutation_fails_naming_tensor_and_fault(artifacts, tmp_path, fmt, what):
    mutation, faults = MUTATIONS[what]
    out, master, target = mutated(artifacts, tmp_path, fmt, mutation)
    assert_fails_naming(verify(out, master, run_parity=False), target, faults)


def test_llama_gguf_q_k_permutation_twice(artifacts, tmp_path):
    """Llama GGUFs permute q/k once on write; a source permuted twice more is still named."""
    out, master, target = mutated(artifacts, tmp_path, "gguf-i2_s", _qk_twice, "llama-bitnet", None)
    assert_fails_naming(verify(out, master, run_parity=False), target, ("qk-permutation",))


@pytest.mark.slow
@pytest.mark.parametrize("what", ["inverted scale", "rows shifted", "re-quantized ternary weights"])
def test_mutations_also_break_logit_parity(artifacts, tmp_path, what):
    out, master, _ = mutated(artifacts, tmp_path, "hf-autobitlinear", MUTATIONS[what][0])
    rep = verify(out, master)
    assert rep.parity is not None and not rep.parity.ok, rep.parity.out_vs_ref
    assert any(f.check == "parity" and f.fault == "logit-parity" for f in rep.findings)


def test_missing_and_unexpected_tensors(artifacts, tmp_path):
    out, master = artifacts("bitnet-2b4t", False, "hf-autobitlinear")
    shutil.copytree(out, tmp_path / "m")
    st = load_file(tmp_path / "m" / "model.safetensors")
    st.pop(SUB_NORM)
    st["model.extra.weight"] = torch.zeros(4, dtype=torch.bfloat16)
    save_file(st, tmp_path / "m" / "model.safetensors")
    rep = verify(tmp_path / "m", master, run_parity=False)
    faults = {(f.subject, f.fault) for f in rep.findings}
    assert (SUB_NORM, "missing") in faults and ("model.extra.weight", "unexpected") in faults


def test_dropped_lm_head_is_a_tying_fault(artifacts, tmp_path):
    out, master = artifacts("bitnet-2b4t", False, "bitconv-ternary")
    shutil.copytree(out, tmp_path / "m")
    st = load_file(tmp_path / "m" / "model.safetensors")
    st.pop("lm_head.weight")
    save_file(st, tmp_path / "m" / "model.safetensors")
    rep = verify(tmp_path / "m", master, run_parity=False)
    assert [f.fault for f in rep.findings if f.subject == "lm_head.weight"] == ["tied"]


def test_config_mismatch_is_reported(artifacts, tmp_path):
    out, master = artifacts("bitnet-2b4t", True, "hf-autobitlinear")
    shutil.copytree(out, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["hidden_act"] = "silu"
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    rep = verify(tmp_path / "m", master, run_parity=False)
    assert [f.subject for f in rep.findings] == ["hidden_act"] and rep.exit_code == 1


# ------------------------------------------------------------------------------------------------ helpers


def test_stored_scale_and_row_permutation():
    assert stored_scale(0.0159, ("F32", False)) == float(np.float32(0.0159))
    bf = stored_scale(0.0159, ("BF16", True))
    assert bf != float(np.float32(0.0159)) and abs(bf / 0.0159 - 1) < 2**-8
    codes = np.random.default_rng(1).integers(-1, 2, size=(16, 64), dtype=np.int8)
    perm = np.random.default_rng(2).permutation(16)
    assert np.array_equal(row_permutation(codes, codes[perm]), perm)
    assert row_permutation(codes, -codes) is None


def test_parity_metrics_identical_and_different():
    a = torch.randn(2, 5, 50, generator=torch.Generator().manual_seed(0))
    same = ParityMetrics.between(a, a.clone())
    assert same.max_dlogit == 0 and same.top1 == 1 and same.top5 == 1 and same.mean_kl == 0
    assert not same.failures(Thresholds())
    other = ParityMetrics.between(a, -a)
    assert len(other.failures(Thresholds())) >= 3


def test_tokens_from_prompt_and_file(models, tmp_path):
    for arch in ("bitnet-2b4t", "1bitllm"):  # tokenizer.json (tokenizers) and tokenizer.model (sentencepiece)
        ids = tokens_from_prompt("the model reads a list of numbers", open_source(models(arch)))
        assert ids.shape[0] == 1 and ids.shape[1] > 3 and int(ids.max()) < 512
    (tmp_path / "t.json").write_text("[[1, 2, 3], [4, 5, 6]]")
    (tmp_path / "t.txt").write_text("1 2 3\n4 5 6\n")
    assert torch.equal(tokens_from_file(tmp_path / "t.json"), tokens_from_file(tmp_path / "t.txt"))


# ------------------------------------------------------------------------------------------------ CLI


@pytest.mark.slow
def test_cli_verify_pass_writes_reports(artifacts, tmp_path):
    out, master = artifacts("bitnet-2b4t", False, "hf-bitlinear")
    summary = tmp_path / "summary.md"
    summary.write_text("# earlier step\n")
    r = cli("verify", out, "--ref", master, "--report", tmp_path / "r.json", "--junit", tmp_path / "r.xml",
            env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert r.exit_code == 0, r.output
    assert "PASS" in r.output and "compute=float32" in r.output
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["ok"] and rep["exit_code"] == 0 and rep["roundtrip"]["compute"] == "float32"
    assert rep["parity"]["out_vs_ref"]["top1"] >= 0.9 and rep["parity"]["out_vs_plain"] is not None
    suite = ET.parse(tmp_path / "r.xml").getroot().find("testsuite")
    assert int(suite.get("tests")) == 1 + 25 + 1 and suite.get("failures") == "0"
    text = summary.read_text()
    assert text.startswith("# earlier step\n") and "bitconv verify ✅ pass" in text


def test_cli_verify_failure_exit_1_and_junit_failure(artifacts, tmp_path):
    out, master, target = mutated(artifacts, tmp_path, "hf-autobitlinear", _invert_scale)
    r = cli("verify", out, "--ref", master, "--junit", tmp_path / "r.xml", "--no-parity")
    assert r.exit_code == 1
    assert "FAIL" in r.output and target in r.output and "scale inverted" in r.output
    fails = ET.parse(tmp_path / "r.xml").getroot().findall(".//failure")
    assert [f.get("type") for f in fails] == ["scale-inverted"]


@pytest.mark.slow
def test_cli_verify_json_stdout_and_threshold_flags(artifacts):
    out, master = artifacts("llama-bitnet", None, "hf-autobitlinear")
    r = cli("verify", out, "--ref", master, "--json", "--max-rel-dlogit", "0", "--min-top1", "0.5",
            "--prompt", "the model")
    assert r.exit_code == 0, r.output  # a limit below the floor (what OUT's own arithmetic costs) is widened to it
    rep = json.loads(r.stdout)
    assert rep["parity"]["token_source"] == "prompt" and rep["parity"]["thresholds"]["max_rel_dlogit"] == 0
    assert rep["parity"]["thresholds"]["min_top1"] == 0.5 and rep["parity"]["out_vs_floor"]["max_dlogit"] == 0


@pytest.mark.parametrize("args,match", [
    (["--ref", "MISSING"], "no such file"),
    (["--min-top1", "1.5"], "--min-top1"),
    (["--prompt", "x", "--tokens", "t.txt"], "at most one"),
])
def test_cli_verify_bad_input_exit_2(artifacts, tmp_path, args, match):
    out, master = artifacts("bitnet-2b4t", True, "bitconv-ternary")
    args = [str(tmp_path / a) if a in ("MISSING", "t.txt") else a for a in args]
    if "--ref" not in args:
        args += ["--ref", str(master)]
    (tmp_path / "t.txt").write_text("1 2 3\n")
    r = cli("verify", out, *args)
    assert r.exit_code == 2 and match in r.output


def _repo(artifacts, base: Path) -> Path:
    out, master = artifacts("bitnet-2b4t", True, "hf-autobitlinear")
    tern, _ = artifacts("bitnet-2b4t", True, "bitconv-ternary")
    shutil.copytree(master, base / "bf16")
    shutil.copytree(out, base / "packed")
    shutil.copytree(tern, base / "ternary")
    if pack_gguf is not None:
        gg, _ = artifacts("bitnet-2b4t", True, "gguf-i2_s")
        shutil.copytree(gg.parent, base / "gguf")
    (base / ".git").mkdir()
    return base


def _online(folder: Path) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                  "quantization_mode": "online"}
    (folder / "config.json").write_text(json.dumps(cfg))


@pytest.mark.slow
def test_check_repo_folder_passes(artifacts, tmp_path):
    repo = _repo(artifacts, tmp_path / "repo")
    _online(repo / "bf16")
    want = ["bf16", "gguf/model-i2_s.gguf", "packed", "ternary"] if pack_gguf else ["bf16", "packed", "ternary"]
    assert [p.relative_to(repo).as_posix() for p in find_checkpoints(repo)] == want
    summary = tmp_path / "s.md"
    r = cli("check", repo, "--junit", tmp_path / "c.xml", "--report", tmp_path / "c.json",
            env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "c.json").read_text())
    roles = {Path(a["path"]).name: a["role"] for a in rep["artifacts"]}
    assert roles["bf16"] == "master" and roles["packed"] == "artifact" and roles["ternary"] == "artifact"
    assert all(a["verify"]["ok"] for a in rep["artifacts"] if a["role"] == "artifact")
    assert "bitconv check ✅ pass" in summary.read_text()
    assert ET.parse(tmp_path / "c.xml").getroot().get("failures") == "0"


def test_check_repo_config_faults(artifacts, tmp_path):
    repo = _repo(artifacts, tmp_path / "repo")
    cfg = json.loads((repo / "packed" / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "configuration_bitnet.BitNetConfig"}
    cfg["quantization_config"]["modules_to_not_convert"] = ["model.embed_tokens"]
    (repo / "packed" / "config.json").write_text(json.dumps(cfg))
    rep = check(repo, run_parity=False)
    assert rep.exit_code == 1
    packed = next(a for a in rep.artifacts if a.path.endswith("packed"))
    assert {f.fault for f in packed.findings} >= {"auto_map", "modules_to_not_convert"}
    master = next(a for a in rep.artifacts if a.role == "master")
    assert [f.fault for f in master.findings] == ["quantization_config"]  # a warning: no online config
    assert master.ok
    r = cli("check", repo, "--no-parity")
    assert r.exit_code == 1 and "configuration_bitnet.py" in r.output


def test_check_untied_without_lm_head_and_missing_path(models, tmp_path):
    m = tmp_path / "m"
    shutil.copytree(models("bitnet-2b4t", tied=False), m)
    st = load_file(m / "model.safetensors")
    st.pop("lm_head.weight")
    save_file(st, m / "model.safetensors")
    rep = check(m, run_parity=False)
    assert any(f.fault == "tied" for f in rep.artifacts[0].findings) and rep.exit_code == 1
    r = cli("check", tmp_path / "nothing")
    assert r.exit_code == 2 and r.stderr == f"error: {tmp_path / 'nothing'}: no such file or folder\n", r.output


def test_help_lists_verify_and_check():
    r = cli("--help")
    assert r.exit_code == 0 and "verify" in r.output and "check" in r.output


@pytest.mark.slow
def test_nanotron_checkpoint_as_reference(models, tmp_path):
    """A Nanotron checkpoint (bf16 latents, ternarized on read) is a REF like a master: compute mode detected,
    parity runs online; its packed export passes and a mutated one fails."""
    convert.to_nanotron(models("llama-bitnet"), tmp_path / "nt")
    pipeline.pack_hf(tmp_path / "nt", tmp_path / "packed")
    rep = verify(tmp_path / "packed", tmp_path / "nt")
    assert rep.ok and rep.roundtrip.compute == "float32" and rep.parity.ref_mode == "online (float32)", \
        [f.message for f in rep.findings]
    target = mutate(tmp_path / "packed", tmp_path / "mut", "hf-autobitlinear", _invert_scale)
    assert_fails_naming(verify(tmp_path / "mut", tmp_path / "nt", run_parity=False), target, ("scale-inverted",))


def test_check_discovers_nanotron_checkpoint_as_master(models, tmp_path):
    """`bitconv check` on a training repo: the Nanotron checkpoint is the master its packed export is verified
    against; the checkpoint's model/ shards are not mistaken for checkpoints."""
    from bitconv.verify.check import check, find_checkpoints

    repo = tmp_path / "repo"
    convert.to_nanotron(models("llama-bitnet"), repo / "ckpt")
    pipeline.pack_hf(repo / "ckpt", repo / "packed")
    assert find_checkpoints(repo) == [repo / "ckpt", repo / "packed"]
    rep = check(repo, run_parity=False)
    roles = {Path(a.path).name: (a.role, a.kind) for a in rep.artifacts}
    assert roles == {"ckpt": ("master", "nanotron"), "packed": ("artifact", "hf-packed")}
    assert rep.ok and rep.master == str(repo / "ckpt")
    packed = next(a for a in rep.artifacts if a.role == "artifact")
    assert packed.verify is not None and packed.verify.ok


def test_broken_tokenizer_config_with_prompt_is_a_one_line_error(models, tmp_path, copy_dir):
    pytest.importorskip("sentencepiece")
    master = copy_dir(models("1bitllm"))
    (master / "tokenizer_config.json").write_text("{not json")
    pipeline.quantize(master, tmp_path / "t")
    r = cli("verify", tmp_path / "t", "--ref", master, "--prompt", "hello")
    assert r.exit_code == 2, r.output
    assert "tokenizer_config.json" in r.stderr and "Traceback" not in r.output


# ------------------------------------------------------------------------------------------------ recorded files


def test_report_records_each_verified_file_by_its_sha256(artifacts):
    """The hashes are taken on a thread while the checks run; the report holds each weight file's exact sha256."""
    import hashlib

    out, master = artifacts("bitnet-2b4t", True, "hf-autobitlinear")
    rep = verify(out, master, run_parity=False)
    want = [{"path": p.name, "bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
            for p in sorted(Path(out).glob("*.safetensors"))]
    assert rep.out_files == want


def test_records_hash_again_what_changed_while_checks_ran(tmp_path):
    """A file rewritten after its hash was taken (size, mtime or inode changed) is hashed again when the report
    asks; an abandoned hash stops early and returns None."""
    import hashlib
    import os
    import threading

    from bitconv.core.safeio import sha256_file
    from bitconv.verify import _Records

    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 1000)
    rec = _Records(tmp_path, [f])
    rec._thread.join()
    assert rec._records[0]["sha256"] == hashlib.sha256(b"a" * 1000).hexdigest()
    f.write_bytes(b"b" * 1000)
    os.utime(f, ns=(1, 1))  # a different mtime, whatever the clock's resolution
    assert rec.result() == [{"path": "w.bin", "bytes": 1000, "sha256": hashlib.sha256(b"b" * 1000).hexdigest()}]
    stop = threading.Event()
    stop.set()
    assert sha256_file(f, stop=stop) is None
    for n in (0, 1, 4095, 4096, 4097, 3 * 4096):  # chunk boundaries of a reused buffer
        f.write_bytes(bytes(range(256)) * (n // 256) + b"x" * (n % 256))
        assert sha256_file(f, chunk=4096) == hashlib.sha256(f.read_bytes()).hexdigest()
