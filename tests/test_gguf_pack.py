"""GGUF packing end to end: golden byte equality, gguf-py as an oracle, round trips, GGUF as a source, errors, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bitconv import pipeline
from bitconv.cli import app
from bitconv.core.errors import LayoutError, OutputError, SourceError, UsageError
from bitconv.formats.gguf import read_gguf
from bitconv.formats.gguf.metadata import gguf_name, permute_rows
from bitconv.layouts.kernel_config import KernelConfig
from bitconv.output import TMP_PREFIX
from bitconv.sinks.gguf import GGUF_TARGETS, pack_gguf, plan_pack_gguf
from bitconv.sources import open_source
from tests.conftest import GOLDEN

FP16_REL, BF16_REL = 2.0**-11, 2.0**-8
SCALE_REL = {"i2_s": 0.0, "tl1": 0.0, "tl2": 0.0, "f32": 0.0, "tq1_0": FP16_REL, "tq2_0": FP16_REL, "f16": FP16_REL,
             "bf16": BF16_REL, "iq1_bn": FP16_REL, "iq2_bn": 0.0, "iq2_bn_r4": 0.0}
runner = CliRunner()


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


def nothing_left(folder: Path) -> bool:
    return not folder.exists() or not any(folder.iterdir())


# ------------------------------------------------------------------------------------------------ golden files

# (input case, --type, options, reference file): whole-file byte equality
WHOLE_FILE = [
    ("gguf-tq", "tq1_0", {}, "gguf-tq/ggml-model-tq1_0.gguf"),  # llama.cpp convert_hf_to_gguf.py
    ("gguf-tq", "tq2_0", {}, "gguf-tq/ggml-model-tq2_0.gguf"),
    ("gguf-i2s", "f32", {"embd_type": "f32"}, "gguf-i2s/ggml-model-f32.gguf"),  # bitnet.cpp converter
    ("gguf-tl", "tl1", {"kernel_config": GOLDEN / "gguf-tl/tl1/kernel_config.ini"}, "gguf-tl/tl1/ggml-model-tl1.gguf"),
    # the bitnet.cpp converter's own TL2 file has K = 256 tilings its runtime's LUT buffer cannot hold: --force
    ("gguf-tl", "tl2", {"kernel_config": GOLDEN / "gguf-tl/tl2/kernel_config.ini", "force": True},
     "gguf-tl/tl2/ggml-model-tl2.gguf"),
]


@pytest.mark.parametrize("case, gguf_type, opts, ref", WHOLE_FILE, ids=[c[1] for c in WHOLE_FILE])
def test_golden_whole_file(tmp_path, case, gguf_type, opts, ref):
    out = tmp_path / "out" / "model.gguf"  # the input folder is named "input": general.name comes from it
    rep = pack_gguf(GOLDEN / case / "input", out, gguf_type, **opts)
    if opts.get("force"):  # the warning KV is the only difference: the reference file without it is byte-equal
        assert rep.extra["warnings"] and read_gguf(out).get("bitconv.warning") == rep.extra["warnings"][0]
        opts = {k: v for k, v in opts.items() if k != "force"}
        with pytest.raises(UsageError, match="runs correctly on no known runtime"):
            pack_gguf(GOLDEN / case / "input", tmp_path / "refused" / "model.gguf", gguf_type, **opts)
        assert not (tmp_path / "refused").exists() or not any((tmp_path / "refused").iterdir())
        return
    assert out.read_bytes() == (GOLDEN / ref).read_bytes()
    if gguf_type.startswith("tl"):
        assert (out.parent / "kernel_config.ini").read_text() == opts["kernel_config"].read_text()
        assert rep.extra["codegen"]["BK"] == tuple(e.BK for e in KernelConfig.from_ini(opts["kernel_config"]).entries)


def _llama_quantize_tails(ours: Path, ref: Path) -> bytes:
    """Our I2_S file with each I2_S tensor's 28 tail bytes replayed from llama-quantize's reused work buffer.

    # ref: spec gguf-bitnet-cpp.md §2.4: tensors in file order; converted ones (Q8_0/F16 token_embd, I2_S) write
    # their payload into the buffer from offset 0 (I2_S: codes + scale only); it grows with zeros to 4*n.
    """
    g, data = read_gguf(ours), bytearray(ours.read_bytes())
    work = bytearray()
    for t in g.tensors.values():
        if t.type.name == "F32":
            continue
        if len(work) < 4 * t.numel:
            work.extend(bytes(4 * t.numel - len(work)))
        payload = g.read(t).tobytes()
        written = t.numel // 4 + 4 if t.type.name == "I2_S" else len(payload)
        work[:written] = payload[:written]
        data[t.offset:t.offset + t.nbytes] = work[:t.nbytes]
    return bytes(data)


def test_golden_i2s_header_and_payload(tmp_path):
    """llama-quantize leaves stale bytes in 28 of each I2_S tensor's 32 tail bytes: everything else is equal."""
    out = tmp_path / "o" / "model.gguf"
    pack_gguf(GOLDEN / "gguf-i2s/input", out, "i2_s", embd_type="q8_0")
    ref_path = GOLDEN / "gguf-i2s/ggml-model-i2_s.gguf"
    a, b = read_gguf(out), read_gguf(ref_path)
    assert a.data_start == b.data_start and out.read_bytes()[: a.data_start] == ref_path.read_bytes()[: b.data_start]
    assert [(t.name, t.dims, t.type.id, t.offset, t.nbytes) for t in a.tensors.values()] == \
        [(t.name, t.dims, t.type.id, t.offset, t.nbytes) for t in b.tensors.values()]
    for t in a.tensors.values():
        x, y = a.read(t), b.read(t.name)
        if t.type.name == "I2_S":
            n4 = t.numel // 4
            assert np.array_equal(x[: n4 + 4], y[: n4 + 4]), t.name  # codes + float32 scale
            assert not x[n4 + 4:].any()  # bitconv writes zeros where llama-quantize leaves garbage
        else:
            assert np.array_equal(x, y), t.name
    assert _llama_quantize_tails(out, ref_path) == ref_path.read_bytes()


def test_i2s_to_tq_reproduces_upstream_golden(tmp_path):
    """GGUF as a source: I2_S (bitnet.cpp) -> TQ1_0 / TQ2_0 gives llama.cpp's converter output byte for byte."""
    i2s = tmp_path / "a" / "m.gguf"
    pack_gguf(GOLDEN / "gguf-tq/input", i2s, "i2_s")
    for t in ("tq1_0", "tq2_0"):
        pack_gguf(i2s, tmp_path / f"{t}.gguf", t)
        assert (tmp_path / f"{t}.gguf").read_bytes() == (GOLDEN / f"gguf-tq/ggml-model-{t}.gguf").read_bytes()


@pytest.mark.parametrize("ref", ["gguf-i2s/ggml-model-i2_s.gguf", "gguf-i2s/ggml-model-f32.gguf",
                                 "gguf-tl/tl1/ggml-model-tl1.gguf", "gguf-tl/tl2/ggml-model-tl2.gguf",
                                 "gguf-tq/ggml-model-tq1_0.gguf", "gguf-tq/ggml-model-tq2_0.gguf"])
def test_golden_files_decode_to_master_codes(ref):
    """Every reference file read back: codes equal bitconv's ternarization of the bf16 master."""
    master = open_source(GOLDEN / ref.split("/")[0] / "input")
    g = open_source(GOLDEN / ref)
    assert g.kind == "gguf" and g.config["architectures"] == ["BitnetForCausalLM"]
    tol = FP16_REL if "tq" in ref else 0.0
    for t in master.ternary_tensors():
        a, b = t.ternary(), g.tensors[t.name].ternary()
        assert np.array_equal(a.codes, b.codes), t.name
        assert abs(float(b.scale) / float(a.scale) - 1) <= tol
    assert set(g.tensors) == set(master.tensors)


# ------------------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("gguf_type", list(GGUF_TARGETS))
@pytest.mark.parametrize("arch", ["bitnet-2b4t", "llama-bitnet", "1bitllm"])
def test_round_trip_every_type(models, tmp_path, arch, gguf_type):
    m = models(arch)
    src = open_source(m)
    out = tmp_path / "o.gguf"
    rep = pack_gguf(m, out, gguf_type, embd_type="f32", force=True)  # format round trip, runtimes aside (K = 256)
    back = open_source(out)
    assert back.kind == "gguf" and rep.out == out and rep.bytes_written == out.stat().st_size
    for t in src.tensors.values():
        b = back.tensors[t.name]
        assert tuple(b.shape) == tuple(t.shape)
        if t.is_ternary:
            x, y = t.ternary(), b.ternary()
            assert np.array_equal(x.codes, y.codes), t.name
            assert abs(float(y.scale) / float(x.scale) - 1) <= SCALE_REL[gguf_type], t.name
        else:  # bf16 master tensors as F32: exact
            assert torch.equal(src.load_passthrough(t.name).float(), back.load_passthrough(t.name)), t.name
    for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "vocab_size", "tie_word_embeddings", "bos_token_id", "architectures"):
        assert back.config[k] == src.config[k], k


def test_llama_rows_are_permuted_in_the_file(models, tmp_path):
    m = models("llama-bitnet")
    src = open_source(m)
    pack_gguf(m, tmp_path / "l.gguf", "i2_s")
    g = read_gguf(tmp_path / "l.gguf")
    from bitconv.layouts import get_layout

    lay = get_layout("gguf-i2-s")
    for name, gname, heads in (("model.layers.0.self_attn.q_proj.weight", "blk.0.attn_q.weight", 4),
                               ("model.layers.0.self_attn.k_proj.weight", "blk.0.attn_k.weight", 2),
                               ("model.layers.0.self_attn.v_proj.weight", "blk.0.attn_v.weight", None)):
        codes = src.tensors[name].ternary().codes
        stored = lay.unpack({"data": g.read(gname)}, codes.shape).codes
        want = codes if heads is None else permute_rows(codes, heads)
        assert np.array_equal(stored, want) and (heads is None or not np.array_equal(stored, codes))


def test_gguf_py_reads_and_dequantizes(models, tmp_path):
    """gguf-py's GGUFReader opens the upstream types; its dequantized weights equal codes * scale (fp16 bound)."""
    m = models("1bitllm")
    src = open_source(m)
    for gguf_type, rel in (("tq1_0", FP16_REL), ("tq2_0", FP16_REL), ("f16", FP16_REL), ("f32", 0.0),
                           ("bf16", BF16_REL)):
        out = tmp_path / f"{gguf_type}.gguf"
        pack_gguf(m, out, gguf_type)
        r = gguf.GGUFReader(out)
        assert bytes(r.fields["general.architecture"].parts[-1]).decode() == "bitnet"
        by_name = {t.name: t for t in r.tensors}
        for t in src.ternary_tensors():
            tern = t.ternary()
            rt = by_name[gguf_name(t.name)]
            w = gguf.quants.dequantize(rt.data, rt.tensor_type).reshape(t.shape)
            want = tern.codes.astype(np.float32) * np.float32(tern.scale)
            assert np.array_equal(np.sign(w), tern.codes), (gguf_type, t.name)
            assert np.max(np.abs(w - want)) <= rel * float(tern.scale) + 1e-12, (gguf_type, t.name)


def test_embd_types_and_tied_output(models, tmp_path):
    m = models("bitnet-2b4t", tied=False)
    for embd, type_name in (("f16", "F16"), ("bf16", "BF16"), ("f32", "F32"), ("q8_0", "Q8_0")):
        out = tmp_path / f"{embd}.gguf"
        pack_gguf(m, out, "i2_s", embd_type=embd)
        g = read_gguf(out)
        assert g.tensors["token_embd.weight"].type.name == type_name == g.tensors["output.weight"].type.name
        assert g.tensors["blk.0.attn_norm.weight"].type.name == "F32"
        assert not open_source(out).config["tie_word_embeddings"]
    assert "output.weight" not in read_gguf(pack_gguf(models("bitnet-2b4t"), tmp_path / "t.gguf", "i2_s").out).tensors


def test_arch_options_and_kv_sets(models, tmp_path):
    m = models("bitnet-2b4t")
    for arch, first in (("bitnet-b1.58", "vocab_size"), ("bitnet-25", "vocab_size"), ("bitnet", "block_count")):
        out = tmp_path / f"{arch}.gguf"
        forced = arch == "bitnet"  # relu2 as upstream `bitnet` runs nowhere correctly (SiLU graphs)
        rep = pack_gguf(m, out, "i2_s", arch=arch, force=forced)
        g = read_gguf(out)
        keys = list(g.kvs)
        assert g.arch == arch and keys[2] == f"{arch}.{first}"
        assert keys[-1 - forced:] == ["general.quantization_version"] + (["bitconv.warning"] if forced else [])
        assert g.get("general.file_type") == 40 and g.get("general.name") == m.name
        assert rep.extra["arch"] == arch and g.get(f"{arch}.hidden_activation") == "relu2"
        back = open_source(out)
        assert back.config["architectures"] == ["BitNetForCausalLM"]  # relu2 reads back as the 2B4T model
    g = read_gguf(pack_gguf(m, tmp_path / "tq.gguf", "tq2_0", arch="bitnet", force=True).out)
    assert list(g.kvs)[:4] == ["general.architecture", "general.type", "general.name", "general.size_label"]
    assert g.get("general.file_type") == 37 and g.get("tokenizer.ggml.pre") == "llama-bpe"


def test_tl2_type_id_42_and_derived_kernel_config(models, tmp_path):
    m = models("bitnet-2b4t")
    out = tmp_path / "tl2" / "m.gguf"
    with pytest.raises(UsageError, match="runs correctly on no known runtime"):  # relu2: the 42-fork runs SiLU
        pack_gguf(m, out, "tl2", tl2_type_id=42)
    rep = pack_gguf(m, out, "tl2", tl2_type_id=42, force=True)
    g = read_gguf(out)
    assert {t.type.id for t in g.tensors.values() if t.name.endswith(("attn_q.weight", "ffn_down.weight"))} == {42}
    assert g.get("general.file_type") == 39
    ini = KernelConfig.from_ini(out.parent / "kernel_config.ini", "tl2")
    assert set(ini.shapes) == {tuple(t.shape) for t in open_source(m).ternary_tensors()}
    assert rep.extra["codegen"]["script"] == "utils/codegen_tl2.py" and str(out.parent / "kernel_config.ini") in \
        [str(f) for f in rep.files]
    back = open_source(out)
    src = open_source(m)
    assert all(np.array_equal(t.ternary().codes, back.tensors[t.name].ternary().codes)
               for t in src.ternary_tensors())


def test_gguf_source_to_hf_and_unpack(models, tmp_path):
    m = models("bitnet-2b4t")
    pack_gguf(m, tmp_path / "g.gguf", "tq2_0")
    rep = pipeline.pack_hf(tmp_path / "g.gguf", tmp_path / "hf")
    assert rep.source_kind == "gguf"
    hf, src = open_source(tmp_path / "hf"), open_source(m)
    for t in src.ternary_tensors():
        assert np.array_equal(t.ternary().codes, hf.tensors[t.name].ternary().codes)
    cfg = json.loads((tmp_path / "hf/config.json").read_text())
    assert cfg["quantization_config"]["linear_class"] == "autobitlinear" and cfg["hidden_act"] == "relu2"
    pipeline.unpack_hf(tmp_path / "g.gguf", tmp_path / "u")
    assert open_source(tmp_path / "u").kind == "bf16-master"


def test_q8_0_passthrough_via_loader(tmp_path):
    """The I2_S golden's token_embd is Q8_0: GGUF -> HF writes it dequantized through the ModelTensor loader."""
    g = open_source(GOLDEN / "gguf-i2s/ggml-model-i2_s.gguf")
    emb = g.tensors["model.embed_tokens.weight"]
    assert emb.loader is not None and emb.dtype == "F32"
    pipeline.pack_hf(g.path, tmp_path / "hf")
    hf = open_source(tmp_path / "hf")
    assert torch.equal(hf.load_passthrough("model.embed_tokens.weight"), g.load_passthrough(emb.name))
    master = open_source(GOLDEN / "gguf-i2s/input").load_passthrough(emb.name).float()
    assert torch.allclose(hf.load_passthrough(emb.name), master, atol=float(master.abs().max()) / 127)


def test_inspect_describes_gguf():
    from bitconv.describe import describe

    d = describe(GOLDEN / "gguf-tl/tl2/ggml-model-tl2.gguf")
    assert d.kind == "gguf" and d.layout == "gguf-tl2" and d.family == "1bitllm"
    assert d.scale_stats["count"] == 7 and 1.9 < d.ternary_bits_per_weight < 2.0


# ------------------------------------------------------------------------------------------------ errors


def test_shape_rules_refused_before_writing(models, tmp_path):
    m = models("1bitllm", hidden_size=192, num_heads=3, num_kv_heads=3)  # K = 192: I2_S needs 128 | K, TQ 256 | K
    for gguf_type, frag in (("i2_s", "in_features % 128"), ("tq2_0", "in_features % 256"),
                            ("tq1_0", "in_features % 256")):
        with pytest.raises(LayoutError) as e:
            pack_gguf(m, tmp_path / "o" / "x.gguf", gguf_type)
        assert frag in one_line(e) and "tensor 'model.layers.0." in str(e.value)
        assert nothing_left(tmp_path / "o")


def test_missing_kernel_config_entry(models, tmp_path):
    m = models("1bitllm")
    ini = tmp_path / "k.ini"
    ini.write_text("[Kernels_0]\nm = 256\nk = 256\nbm = 128\nbk = 64\nbmm = 32\n\n")
    with pytest.raises(LayoutError) as e:
        pack_gguf(m, tmp_path / "o" / "x.gguf", "tl1", kernel_config=ini)
    assert "no entry for (M=256, K=768)" in one_line(e) and "down_proj" in str(e.value)
    assert nothing_left(tmp_path / "o")


def test_option_errors(models, tmp_path):
    m = models("bitnet-2b4t")
    src = open_source(m)
    for kw, frag in (({"arch": "gpt-5"}, "unknown --arch"), ({"gguf_type": "q4_k"}, "--type must be one of"),
                     ({"embd_type": "q6_k"}, "--embd-type"), ({"tl2_type_id": 40, "gguf_type": "tl2"}, "39"),
                     ({"kernel_config": tmp_path / "k.ini"}, "applies to --type tl1/tl2")):
        args = {"gguf_type": "i2_s", **kw}
        with pytest.raises(UsageError) as e:
            plan_pack_gguf(src, args.pop("gguf_type"), **args)
        assert frag in one_line(e)
    with pytest.raises(UsageError) as e:  # upstream `bitnet` has no output tensor
        plan_pack_gguf(open_source(models("bitnet-2b4t", tied=False)), "i2_s", arch="bitnet")
    assert "untied lm_head" in one_line(e)


def test_truncated_and_wrong_magic_sources(tmp_path):
    data = (GOLDEN / "gguf-tq/ggml-model-tq2_0.gguf").read_bytes()
    for name, blob, frag in (("t.gguf", data[:-1000], "truncated"), ("m.gguf", b"GGML" + data[4:], "not a GGUF")):
        (tmp_path / name).write_bytes(blob)
        for call in (lambda p: open_source(p), lambda p: pack_gguf(p, tmp_path / "o" / "x.gguf", "tq1_0")):
            with pytest.raises(SourceError) as e:
                call(tmp_path / name)
            assert frag in one_line(e)
        assert nothing_left(tmp_path / "o")


def test_tl_source_needs_its_kernel_config(tmp_path):
    (tmp_path / "m.gguf").write_bytes((GOLDEN / "gguf-tl/tl1/ggml-model-tl1.gguf").read_bytes())
    with pytest.raises(SourceError) as e:
        open_source(tmp_path / "m.gguf")
    assert "kernel_config.ini" in one_line(e)
    (tmp_path / "m.kernel_config.ini").write_text((GOLDEN / "gguf-tl/tl1/kernel_config.ini").read_text())
    assert open_source(tmp_path / "m.gguf").layout == "gguf-tl1"


def test_existing_output_and_kernel_config(models, tmp_path):
    m = models("1bitllm")
    out = tmp_path / "o" / "x.gguf"
    pack_gguf(m, out, "tl1")
    with pytest.raises(OutputError, match="already exists"):
        pack_gguf(m, out, "tl1")
    with pytest.raises(OutputError, match="a different kernel config"):
        pack_gguf(m, tmp_path / "o" / "y.gguf", "tl2", force=True)  # K = 256: forced past the LUT-buffer refusal
    pack_gguf(m, out, "tl2", overwrite=True, force=True)
    assert read_gguf(out).tensors["blk.0.attn_q.weight"].type.name == "TL2"
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["kernel_config.ini", "x.gguf"]
    assert not any(p.name.startswith(TMP_PREFIX) for p in (tmp_path / "o").iterdir())


# ------------------------------------------------------------------------------------------------ CLI


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_cli_pack_gguf_json(models, tmp_path):
    m = models("bitnet-2b4t")
    r = run("pack", m, "--to", "gguf", "--type", "tq2_0", "-o", tmp_path / "a.gguf", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["layout"] == "gguf-tq2-0" and rep["target"] == "gguf"
    assert rep["ternary_tensors"] == 14 and rep["gguf"]["arch"] == "bitnet-b1.58"
    r = run("inspect", tmp_path / "a.gguf", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["layout"] == "gguf-tq2-0"


def test_cli_pack_gguf_options(models, tmp_path):
    m = models("1bitllm")
    ini = tmp_path / "k.ini"
    pipeline_kernel(m).write_ini(ini)
    r = run("pack", m, "--to", "gguf", "--type", "tl2", "--tl2-type-id", "42", "--kernel-config", ini,
            "--embd-type", "f32", "--arch", "bitnet", "-o", tmp_path / "tl2" / "m.gguf", "--force")  # K = 256
    assert r.exit_code == 0, r.output
    assert "codegen_tl2.py" in r.stdout and "--BM" in r.stdout
    g = read_gguf(tmp_path / "tl2" / "m.gguf")
    assert g.tensors["token_embd.weight"].type.name == "F32" and g.tensors["blk.0.ffn_up.weight"].type.id == 42
    assert (tmp_path / "tl2" / "kernel_config.ini").read_text() == ini.read_text()
    r = run("pack", m, "--to", "gguf", "--type", "i2_s", "-o", tmp_path / "d.gguf", "--dry-run")
    assert r.exit_code == 0 and "I2_S" in r.stdout and not (tmp_path / "d.gguf").exists()


def pipeline_kernel(m: Path) -> KernelConfig:
    from bitconv.layouts.kernel_config import derive

    return derive("tl2", {t.name: tuple(t.shape) for t in open_source(m).ternary_tensors()})


@pytest.mark.parametrize("args, frag", [
    (("--to", "gguf"), "needs --type"),
    (("--to", "gguf", "--type", "q4_k"), "--type must be one of"),
    (("--to", "gguf", "--type", "i2_s", "--arch", "gpt2"), "unknown --arch"),
    (("--to", "hf", "--type", "i2_s"), "only for --to gguf"),
    (("--to", "hf", "--tl2-type-id", "42"), "only for --to gguf"),
])
def test_cli_pack_gguf_errors(models, tmp_path, args, frag):
    r = run("pack", models("1bitllm"), "-o", tmp_path / "x.gguf", *args)
    assert r.exit_code == 2 and frag in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.gguf").exists()


def test_demo_model_shapes_fit_every_gguf_type(models, tmp_path):
    """The demo model (hidden 512, intermediate 768, head_dim 128) is held by every GGUF type, and each file runs
    somewhere (TL2 needs K = 512: K = 256 overflows bitnet.cpp's LUT buffer)."""
    src = open_source(models("bitnet-2b4t", hidden_size=512))
    for gguf_type in GGUF_TARGETS:
        plan = plan_pack_gguf(src, gguf_type)
        assert not plan.warnings
        assert plan.total_bytes > 0 and math.isfinite(plan.total_bytes)


@pytest.mark.parametrize("mapped", [True, False], ids=["mapped", "pread"])
@pytest.mark.parametrize("embd_type", ["f16", "f32", "bf16", "q8_0"])
def test_big_passthrough_converted_in_row_chunks_gives_same_bytes(models, tmp_path, monkeypatch, embd_type, mapped):
    """token_embd / output above CHUNK_BYTES are converted a block of rows at a time: same file as in one piece,
    whether each block is mapped in place or (where the file cannot be mapped) read into one reused buffer."""
    from bitconv.sinks import gguf as gguf_sink

    src = models("bitnet-2b4t", tied=False)
    gguf_sink.pack_gguf(src, tmp_path / "whole.gguf", "i2_s", embd_type=embd_type)
    calls = []
    real = gguf_sink._converted_row_chunks

    def spy(step):
        parts = real(step)
        if parts is not None:
            calls.append(step.tensor.name)
        return parts

    monkeypatch.setattr(gguf_sink, "CHUNK_BYTES", 3000)  # a few rows per block, last block short
    monkeypatch.setattr(gguf_sink, "_converted_row_chunks", spy)
    if not mapped:
        from bitconv.formats import safetensors as st_format

        monkeypatch.setattr(st_format, "map_range", lambda *a: None)
    gguf_sink.pack_gguf(src, tmp_path / "chunked.gguf", "i2_s", embd_type=embd_type)
    assert {"model.embed_tokens.weight", "lm_head.weight"} <= set(calls)
    assert (tmp_path / "chunked.gguf").read_bytes() == (tmp_path / "whole.gguf").read_bytes()


@pytest.mark.parametrize("content", ["{not json", "[" * 100_000 + "]" * 100_000, "[1, 2]"])
def test_broken_tokenizer_config_is_a_one_line_error(models, tmp_path, copy_dir, content):
    """tokenizer_config.json is read once for the vocab and once for add_prefix_space: both through read_json."""
    from typer.testing import CliRunner

    from bitconv.cli import app

    src = copy_dir(models("1bitllm"))
    (src / "tokenizer_config.json").write_text(content)
    r = CliRunner().invoke(app, ["pack", str(src), "--to", "gguf", "--type", "i2_s", "-o", str(tmp_path / "m.gguf")])
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error: ") and "tokenizer_config.json" in r.stderr and "Traceback" not in r.output
    assert not (tmp_path / "m.gguf").exists()
