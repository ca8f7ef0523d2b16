"""The runtime compatibility table: its facts, pack's refusal / --force, relu2 in the file, TL2 tilings, docs."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from bitconv.cli import app
from bitconv.core.errors import UsageError
from bitconv.formats.gguf import read_gguf
from bitconv.layouts.kernel_config import KernelConfig, KernelEntry, derive, derive_entry
from bitconv.layouts.runtimes import (
    RUNTIMES,
    render_markdown,
    render_readme_table,
    runs_somewhere,
    tl2_lut,
    where_it_runs,
)
from bitconv.publish.card import plan_upload
from bitconv.sinks.gguf import pack_gguf, plan_pack_gguf
from bitconv.sources import open_source
from bitconv.verify import verify
from tests.conftest import ROOT

runner = CliRunner()


def ok(arch: str, t: str, act: str, **kw) -> list[str]:
    return [v.runtime.key for v in where_it_runs(arch, t, act, **kw) if v.runs]


def why(arch: str, t: str, act: str, key: str, **kw) -> str:
    return next(v.why for v in where_it_runs(arch, t, act, **kw) if v.runtime.key == key)


# ------------------------------------------------------------------------------------------------ table facts


def test_relu2_tq_runs_only_where_a_relu2_graph_computes_tq():
    assert ok("bitnet", "TQ2_0", "relu2") == []  # every `bitnet` graph is SiLU; ik has no TQ
    assert why("bitnet", "TQ2_0", "relu2", "llama.cpp@0c1e570") == \
        "its 'bitnet' graph computes silu, the model needs relu2"
    assert ok("bitnet-b1.58", "TQ1_0", "relu2") == ["bitnet.cpp@1876a3e"]
    assert why("bitnet-b1.58", "TQ1_0", "relu2", "llama.cpp@0c1e570") == "unknown architecture 'bitnet-b1.58'"
    assert why("bitnet-b1.58", "TQ1_0", "relu2", "ik_llama.cpp@8337e4cd") == \
        "no type 34 in ik_llama.cpp: the loader dies with SIGFPE"
    assert ok("bitnet", "TQ2_0", "silu") == ["llama.cpp@0c1e570", "bitnet.cpp@37c247c", "bitnet.cpp@1876a3e",
                                              "bitnet.cpp@425fbbc"]


def test_type_ids_and_archs_per_runtime():
    assert ok("bitnet-b1.58", "I2_S", "relu2") == ["bitnet.cpp@1876a3e"]
    assert ok("bitnet", "I2_S", "silu") == ["bitnet.cpp@37c247c", "bitnet.cpp@1876a3e", "bitnet.cpp@425fbbc"]
    assert ok("bitnet", "TL2_42", "silu") == ["bitnet.cpp@425fbbc"]
    assert ok("bitnet-b1.58", "TL2_42", "relu2") == []  # the 42 fork runs SiLU for every arch (BitNet#588/#602)
    assert why("bitnet", "TL2", "silu", "llama.cpp@0c1e570") == \
        "type id 39 is MXFP4 upstream: TL2 bytes would be misread"
    assert why("bitnet", "I2_S", "silu", "ik_llama.cpp@8337e4cd").startswith("I2_S loads but computes wrong logits")
    assert ok("llama", "F16", "silu") == [r.key for r in RUNTIMES]
    assert ok("llama", "F16", "relu2") == []  # every llama graph is SiLU


def test_ik_bn_types_need_512_in_features():
    shapes = {"model.layers.0.mlp.down_proj.weight": (256, 768), "model.layers.0.self_attn.q_proj.weight": (512, 256)}
    assert ok("bitnet-25", "IQ1_BN", "relu2", shapes=shapes) == []
    assert why("bitnet-25", "IQ1_BN", "relu2", "ik_llama.cpp@8337e4cd", shapes=shapes).startswith(
        "tensor 'model.layers.0.self_attn.q_proj.weight' has in_features 256 < 512")
    assert ok("bitnet-25", "IQ1_BN", "relu2", shapes={"x": (512, 512)}) == ["ik_llama.cpp@8337e4cd"]
    # IQ2_BN runs with -rtr (repacked to IQ2_BN_R4 at load: no input limit); IQ2_BN_R4 has none either
    verdicts = where_it_runs("bitnet-25", "IQ2_BN", "relu2", shapes)
    v = next(v for v in verdicts if v.runtime.key == "ik_llama.cpp@8337e4cd")
    assert v.runs and v.command.endswith("-rtr") and any("-rtr" in n for n in v.notes)
    assert ok("bitnet-25", "IQ2_BN_R4", "relu2", shapes=shapes) == ["ik_llama.cpp@8337e4cd"]


def test_tl2_lut_buffer_arithmetic():
    lut = tl2_lut()
    assert (lut.need(256, 96), lut.have(256)) == (3076, 2832)  # 192/3*32 + 4 + 16*64 vs 11*256 + 16
    assert not lut.fits(256, 192) and not lut.fits(256, 96)
    assert lut.fits(512, 96) and lut.need(512, 96) == 480 // 3 * 32 + 4 + 16 * 32
    assert lut.fits(2560, 96) and lut.fits(6912, 96) and lut.fits(4096, 96)  # 2B4T / preset shapes run


def test_tl2_overflow_verdict_names_tensor_tiling_and_limit():
    v = where_it_runs("bitnet", "TL2", "silu", shapes={"w": (512, 256)}, tiling={(512, 256): (256, 96, 32)})
    assert not runs_somewhere(v)
    assert next(x.why for x in v if x.runtime.key == "bitnet.cpp@37c247c") == (
        "tensor 'w' (M=512, K=256) with TL2 tiling BM=256 BK=96 bm=32 leaves a 64-column remainder: its LUT needs "
        "3076 bytes per token but bitnet.cpp's TL2 work buffer holds 11 bytes per activation (2832); the first "
        "decode aborts")


def test_tl2_runs_one_token_per_decode():
    v = next(x for x in where_it_runs("bitnet", "TL2", "silu", file="m.gguf") if x.runtime.key == "bitnet.cpp@37c247c")
    assert v.command == 'build/bin/llama-cli -m m.gguf -p "The capital of France is" -n 32 -ub 1'
    assert any("-ub 1" in n and "NaN" in n for n in v.notes)
    i2s = next(x for x in where_it_runs("bitnet", "I2_S", "silu", file="m.gguf")
               if x.runtime.key == "bitnet.cpp@37c247c")
    assert i2s.command == 'python run_inference.py -m m.gguf -p "The capital of France is" -n 32'


# ------------------------------------------------------------------------------------------------ TL2 tilings


@pytest.mark.parametrize("K, BK", [(512, 96), (768, 96), (288, 96), (2560, 96), (6912, 96), (1024, 96), (720, 240)])
def test_derive_prefers_a_tiling_the_lut_buffer_holds(K, BK):
    e = derive_entry("tl2", 256, K)
    assert e.BK == BK and tl2_lut().fits(K, e.BK)


@pytest.mark.parametrize("K", [256, 320, 352])
def test_no_fitting_tiling_keeps_a_legal_one_and_pack_refuses(K):
    e = derive_entry("tl2", 256, K)  # bytes stay legal for the codegen; the runtime check refuses the file
    assert (K % e.BK) % 32 == 0 and not tl2_lut().fits(K, e.BK)


def test_tl2_k256_pack_refused_before_writing(models, tmp_path):
    m = models("1bitllm")
    out = tmp_path / "o" / "m.gguf"
    with pytest.raises(UsageError) as e:
        pack_gguf(m, out, "tl2")
    msg = str(e.value)
    assert "\n" not in msg and "runs correctly on no known runtime" in msg
    assert re.search(r"tensor 'model\.layers\.\d+\.\w+\.\w+_proj\.weight' \(M=\d+, K=256\) with TL2 tiling BM=\d+ "
                     r"BK=96 bm=32 leaves a 64-column remainder: its LUT needs 3076 bytes per token but bitnet\.cpp's "
                     r"TL2 work buffer holds 11 bytes per activation \(2832\)", msg)
    assert not (tmp_path / "o").exists()
    r = runner.invoke(app, ["pack", str(m), "--to", "gguf", "--type", "tl2", "-o", str(out)])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "K=256" in r.stderr and not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------ pack refuses / force


def test_relu2_as_upstream_bitnet_refused_then_forced(models, tmp_path):
    m = models("bitnet-2b4t")
    out = tmp_path / "o" / "m.gguf"
    r = runner.invoke(app, ["pack", str(m), "--to", "gguf", "--type", "tq2_0", "--arch", "bitnet", "-o", str(out)])
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
    assert "tq2_0 with arch bitnet for a model with hidden_act 'relu2' runs correctly on no known runtime" in r.stderr
    assert "llama.cpp 0c1e570 (its 'bitnet' graph computes silu, the model needs relu2)" in r.stderr
    assert "--force" in r.stderr and not (tmp_path / "o").exists()
    r = runner.invoke(app, ["pack", str(m), "--to", "gguf", "--type", "tq2_0", "--arch", "bitnet", "-o", str(out),
                            "--force"])
    assert r.exit_code == 0, r.output
    assert "warning: FORCED (--force): tq2_0 with arch bitnet" in r.stderr and "runs on: no known runtime" in r.stdout
    g = read_gguf(out)
    assert g.get("bitconv.warning").startswith("FORCED (--force): tq2_0 with arch bitnet")
    assert g.get("bitnet.hidden_activation") == "relu2"
    card = plan_upload(out, "me/m")
    assert "**This file runs correctly on no known runtime**" in card.card and "WARNING: FORCED" in card.card
    assert any("runs correctly on no known runtime" in w for w in card.warnings)


def test_pack_prints_where_it_runs(models, tmp_path):
    out = tmp_path / "m.gguf"
    r = runner.invoke(app, ["pack", str(models("bitnet-2b4t")), "--to", "gguf", "--type", "tq1_0", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "runs on: bitnet.cpp 2026-01 (1876a3e)\n" in r.stdout
    assert "does not run correctly on: llama.cpp 0c1e570 (unknown architecture 'bitnet-b1.58');" in r.stdout
    assert '  bitnet.cpp 2026-01 (1876a3e): python run_inference.py -m m.gguf -p "The capital of France is" -n 32' \
        in r.stdout
    card = plan_upload(out, "me/m").card
    how = card[card.index("## How to load"):]
    assert "#### bitnet.cpp 2026-01 (1876a3e)" in how and "llama-cli" not in how and "#### llama.cpp" not in how


def test_codegen_steps_complete_in_dry_run_normal_mode_and_card(models, tmp_path):
    m = models("bitnet-2b4t", hidden_size=512)
    out = tmp_path / "tl2" / "m.gguf"
    args = ["pack", str(m), "--to", "gguf", "--type", "tl2", "-o", str(out)]
    dry = runner.invoke(app, [*args, "--dry-run"])
    real = runner.invoke(app, args)
    assert dry.exit_code == 0 and real.exit_code == 0, dry.output + real.output
    ini = KernelConfig.from_ini(out.parent / "kernel_config.ini", "tl2")
    shapes = ", ".join(f"[{mm}, {k}]" for mm, k in ini.shapes)
    steps = [f'  1. add "custom": [{shapes}], to ModelShapeDict in utils/codegen_tl2.py',
             "  2. python utils/codegen_tl2.py --model custom --BM " + ",".join(str(e.BM) for e in ini.entries) +
             " --BK " + ",".join(str(e.BK) for e in ini.entries) + " --bm 32,32,32,32",
             "  3. cmake -B build -DBITNET_X86_TL2=ON && cmake --build build --config Release"]
    for text in (dry.stdout, real.stdout):
        assert all(s in text for s in steps), text
        assert "build/bin/llama-cli -m m.gguf" in text and "-ub 1" in text
    card = plan_upload(out, "me/m").card
    assert f'add "custom": [{shapes}], to ModelShapeDict' in card and "cmake -B build -DBITNET_X86_TL2=ON" in card
    assert "-ub 1" in card and "checked: run:" in card
    js = json.loads(runner.invoke(app, [*args, "--dry-run", "--json"]).stdout)
    assert js["gguf"]["codegen_steps"][0].startswith('add "custom"') and js["gguf"]["runs_on"].startswith("runs on:")


def test_inspect_shows_the_table_for_any_gguf(tmp_path):
    r = runner.invoke(app, ["inspect", str(ROOT / "fixtures/golden/gguf-tq/ggml-model-tq2_0.gguf"), "--no-stats",
                            "--no-tensors"])
    assert r.exit_code == 0, r.output
    assert "runtimes      arch bitnet, activation silu, projections TQ2_0" in r.stdout
    assert "runs on: llama.cpp 0c1e570, bitnet.cpp 2024 (37c247c)" in r.stdout
    assert "no type 35 in ik_llama.cpp" in r.stdout
    js = json.loads(runner.invoke(app, ["inspect", str(ROOT / "fixtures/golden/gguf-tl/tl2/ggml-model-tl2.gguf"),
                                        "--no-stats", "--json"]).stdout)
    assert js["runtimes"]["runs_on"] == "runs on: no known runtime"  # the converter's own tilings overflow
    assert "(M=256, K=512) with TL2 tiling BM=128 BK=192 bm=32 leaves a 128-column remainder" in \
        js["runtimes"]["does_not_run_on"]


# ------------------------------------------------------------------------------------------------ relu2 travels


ARCH_TYPES = [(a, t) for a in ("bitnet-b1.58", "bitnet-25", "bitnet")
              for t in ("i2_s", "tl1", "tl2", "tq1_0", "tq2_0", "f32", "f16", "bf16")]


@pytest.mark.slow
@pytest.mark.parametrize("arch, gguf_type", ARCH_TYPES, ids=[f"{a}-{t}" for a, t in ARCH_TYPES])
def test_relu2_pack_unpack_verify_every_arch_and_type(models, tmp_path, arch, gguf_type):
    """A 2B4T-style master packed as every arch x type (forced where it runs nowhere) reads back as the same model
    and verifies against the master; the key is in the file."""
    m = models("bitnet-2b4t", hidden_size=512)
    src = open_source(m)
    plan = plan_pack_gguf(src, gguf_type, arch=arch, force=True)
    out = tmp_path / "o" / "m.gguf"
    rep = pack_gguf(m, out, gguf_type, arch=arch, force=True)
    assert bool(rep.extra["warnings"]) == (not runs_somewhere(plan.verdicts))
    assert read_gguf(out).get(f"{arch}.hidden_activation") == "relu2"
    back = open_source(out)
    for k in ("architectures", "model_type", "hidden_act"):
        assert back.config[k] == src.config[k], k
    assert {n for n in back.tensors if "sub_norm" in n} == {n for n in src.tensors if "sub_norm" in n}
    res = verify(out, m)
    assert res.ok and res.exit_code == 0, [f.message for f in res.findings]


def test_silu_model_key_only_where_the_arch_assumes_relu2(models, tmp_path):
    m = models("1bitllm")
    g = read_gguf(pack_gguf(m, tmp_path / "a.gguf", "tq2_0").out)
    assert "bitnet.hidden_activation" not in g.kvs  # the converters' bytes: silu is the bitnet default
    g = read_gguf(pack_gguf(m, tmp_path / "b.gguf", "f16", arch="bitnet-b1.58", force=True).out)
    assert g.get("bitnet-b1.58.hidden_activation") == "silu"
    back = open_source(tmp_path / "b.gguf")
    assert back.config["architectures"] == ["BitnetForCausalLM"] and back.config["hidden_act"] == "silu"


# ------------------------------------------------------------------------------------------------ docs


def test_docs_runtimes_is_the_generated_table():
    text = (ROOT / "docs/runtimes.md").read_text(encoding="utf-8")
    assert text.endswith("\n\n" + render_markdown())


def test_readme_runtime_table_is_generated():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text[text.index("<!-- runtimes:begin -->\n") + 24:text.index("<!-- runtimes:end -->")]
    assert block == render_readme_table()


def test_kernel_config_entry_validation_unchanged():
    # a user-given tiling the codegen accepts is still read; the runtime check (pack) is what refuses it
    kc = KernelConfig((KernelEntry(256, 256, 128, 96, 32),), "tl2")
    assert derive("tl2", [(256, 256)]).entries == (KernelEntry(256, 256, 256, 96, 32),) and kc.get(256, 256)
