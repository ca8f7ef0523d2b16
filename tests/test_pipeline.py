"""quantize / pack / unpack end to end: passthrough, no double quantization, plan-first refusal, atomic writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bitconv import pipeline
from bitconv.errors import LayoutError, OutputError, UsageError
from bitconv.output import TMP_PREFIX
from bitconv.quant import dequantize, ternarize
from bitconv.sources import open_source

from .conftest import tree_hash

ARCHS = [("bitnet-2b4t", True), ("bitnet-2b4t", False), ("llama-bitnet", None), ("1bitllm", None)]


@pytest.mark.parametrize("arch,tied", ARCHS)
def test_quantize_codes_scales_and_passthrough(models, tmp_path, arch, tied):
    master = models(arch, tied=tied)
    before = tree_hash(master)
    pipeline.quantize(master, tmp_path / "t")
    assert tree_hash(master) == before  # the input is never modified
    src, out = load_file(master / "model.safetensors"), load_file(tmp_path / "t" / "model.safetensors")
    n_tern = 0
    for name, w in src.items():
        if name.endswith(("_proj.weight",)):
            t = ternarize(w)
            assert out[name].dtype == torch.int8
            np.testing.assert_array_equal(out[name].numpy(), t.codes)
            scale = out[name[: -len("weight")] + "weight_scale"]
            assert scale.dtype == torch.float32 and scale.shape == (1,) and scale.item() == t.scale
            n_tern += 1
        else:
            assert torch.equal(out[name], w)  # passthrough, bit for bit (norms incl. sub-norms, embeddings)
    assert n_tern == 7 * 2
    cfg = json.loads((tmp_path / "t" / "config.json").read_text())
    assert cfg["bitconv"]["format"] == "ternary" and cfg["bitconv"]["compute"] == "float32"
    # tokenizer and generation files travel with the checkpoint
    for f in master.iterdir():
        if f.name not in ("model.safetensors", "config.json"):
            assert (tmp_path / "t" / f.name).read_bytes() == f.read_bytes()


def test_bf16_compute_mode_recorded_and_kept(models, tmp_path):
    pipeline.quantize(models(), tmp_path / "t", compute="bfloat16")
    ck = open_source(tmp_path / "t")
    assert ck.compute == "bfloat16"
    pipeline.quantize(tmp_path / "t", tmp_path / "t2")  # an already-ternary source keeps its codes
    assert open_source(tmp_path / "t2").compute == "bfloat16"
    assert (tmp_path / "t/model.safetensors").read_bytes() == (tmp_path / "t2/model.safetensors").read_bytes()


@pytest.mark.parametrize("src_kind", ["ternary", "bitlinear", "autobitlinear"])
def test_no_double_quantization(models, tmp_path, src_kind):
    """Packing an already-ternary source reuses its codes and scale; re-quantizing would change the scale."""
    master = models()
    pipeline.quantize(master, tmp_path / "t")
    src = tmp_path / "t"
    if src_kind != "ternary":
        pipeline.pack_hf(master, tmp_path / "p", linear_class=src_kind)
        src = tmp_path / "p"
    pipeline.pack_hf(src, tmp_path / "out")
    ref, got = open_source(tmp_path / "t"), open_source(tmp_path / "out")
    # bf16 keeps 8 significant bits: one rounding is within 2^-8 relative; bitlinear -> autobitlinear rounds twice
    tol = 2**-7 if src_kind == "bitlinear" else 2**-8
    for t in ref.ternary_tensors():
        a, b = t.ternary(), got.tensors[t.name].ternary()
        np.testing.assert_array_equal(a.codes, b.codes)
        assert abs(float(b.scale) / float(a.scale) - 1) <= tol


@pytest.mark.parametrize("values", ["online", "dequantized"])
def test_unpack_values(models, tmp_path, values):
    pipeline.pack_hf(models(), tmp_path / "p", linear_class="bitlinear")
    rep = pipeline.unpack_hf(tmp_path / "p", tmp_path / "u", values=values)
    assert rep.target == "hf-bf16"
    packed, unpacked = open_source(tmp_path / "p"), open_source(tmp_path / "u")
    assert unpacked.kind == "bf16-master"
    for t in packed.ternary_tensors():
        tern = t.ternary()
        got = unpacked.load_passthrough(t.name)
        if values == "dequantized":
            assert torch.equal(got, dequantize(tern))  # exactly bf16(codes * scale)
        else:
            assert torch.equal(got, dequantize(pipeline.online_lift(tern)))
            # transformers' online WeightQuant gives back the same codes and the scale within one bf16 rounding
            again = ternarize(got)
            np.testing.assert_array_equal(again.codes, tern.codes)
            assert abs(float(again.scale) / float(tern.scale) - 1) <= 2**-8
    qc = json.loads((tmp_path / "u" / "config.json").read_text())["quantization_config"]
    assert qc == {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"}


def test_unpack_dequantized_is_a_different_model_online(models, tmp_path):
    """Why `online` is the default: plain codes*scale re-quantizes online to scale * p (p = non-zero fraction)."""
    pipeline.pack_hf(models(), tmp_path / "p")
    pipeline.unpack_hf(tmp_path / "p", tmp_path / "u", values="dequantized")
    t = open_source(tmp_path / "p").ternary_tensors()[0]
    tern, again = t.ternary(), ternarize(open_source(tmp_path / "u").load_passthrough(t.name))
    p = np.count_nonzero(tern.codes) / tern.codes.size
    assert abs(float(again.scale) / (float(tern.scale) * p) - 1) <= 2**-8


def test_unpack_refuses_master(models, tmp_path):
    with pytest.raises(UsageError, match="already a bf16 master"):
        pipeline.unpack_hf(models(), tmp_path / "u")


def test_quant_config_keeps_lm_head_unconverted(models, tmp_path, copy_dir):
    src = copy_dir(models("llama-bitnet"))
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"]["modules_to_not_convert"] = ["model.embed_tokens"]
    cfg["auto_map"] = {"AutoConfig": "configuration_bitnet.BitNetConfig"}
    (src / "config.json").write_text(json.dumps(cfg))
    pipeline.pack_hf(src, tmp_path / "p")
    out = json.loads((tmp_path / "p" / "config.json").read_text())
    assert "auto_map" not in out
    assert out["quantization_config"]["modules_to_not_convert"] == ["model.embed_tokens", "lm_head"]
    assert out["quantization_config"]["quantization_mode"] == "offline"


def test_out_features_not_multiple_of_4_refused_before_writing(models, tmp_path):
    master = models("bitnet-2b4t", intermediate_size=770)
    with pytest.raises(LayoutError) as e:
        pipeline.pack_hf(master, tmp_path / "out")
    msg = str(e.value)
    assert "model.layers.0.mlp.gate_proj.weight" in msg and "[770, 256]" in msg and "% 4" in msg
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(TMP_PREFIX + "*"))
    # the int8 ternary checkpoint holds any shape
    pipeline.quantize(master, tmp_path / "t")


def test_existing_output_refused_then_overwritten(models, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="already exists.*--overwrite"):
        pipeline.pack_hf(models(), out)
    assert (out / "keep.txt").read_text() == "mine"
    pipeline.pack_hf(models(), out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()
    assert not list(tmp_path.glob(TMP_PREFIX + "*"))


def test_output_inside_input_refused(models, tmp_path, copy_dir):
    src = copy_dir(models())
    with pytest.raises(OutputError, match="inside the input"):
        pipeline.pack_hf(src, src / "packed")
    with pytest.raises(OutputError, match="overwrite or sit inside the input"):
        pipeline.pack_hf(src, src, overwrite=True)


@pytest.mark.parametrize("exc", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_failure_midway_leaves_nothing(models, tmp_path, monkeypatch, exc):
    calls = {"n": 0}
    real = pipeline._run_step

    def flaky(step, plan, sink):
        calls["n"] += 1
        if calls["n"] == 10:
            raise exc
        real(step, plan, sink)

    monkeypatch.setattr(pipeline, "_run_step", flaky)
    with pytest.raises(type(exc)):
        pipeline.pack_hf(models(), tmp_path / "out", max_shard_bytes=100_000)
    assert list(tmp_path.iterdir()) == []


def test_failure_during_overwrite_keeps_old_output(models, tmp_path, monkeypatch):
    out = tmp_path / "out"
    pipeline.pack_hf(models(), out)
    before = tree_hash(out)
    monkeypatch.setattr(pipeline, "_run_step", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        pipeline.pack_hf(models(), out, overwrite=True)
    assert tree_hash(out) == before


def test_not_enough_space_refused_up_front(models, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(OutputError, match="not enough disk space"):
        pipeline.pack_hf(models(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_sharded_output_index(models, tmp_path):
    rep = pipeline.pack_hf(models("bitnet-2b4t", tied=False), tmp_path / "p", max_shard_bytes=200_000)
    index = json.loads((tmp_path / "p" / "model.safetensors.index.json").read_text())
    names = [f.name for f in rep.files]
    assert names == [f"model-{i:05d}-of-{len(names):05d}.safetensors" for i in range(1, len(names) + 1)]
    total = sum(t.nbytes for t in open_source(tmp_path / "p").tensors.values() for t in t.stored)
    assert index["metadata"]["total_size"] == total
    # reading the sharded output back gives the same tensors as a single-file pack
    pipeline.pack_hf(tmp_path / "p", tmp_path / "single", max_shard_bytes=None)
    pipeline.pack_hf(models("bitnet-2b4t", tied=False), tmp_path / "direct", max_shard_bytes=None)
    assert (tmp_path / "single/model.safetensors").read_bytes() == (tmp_path / "direct/model.safetensors").read_bytes()


def test_dry_run_plan_sizes_match_output(models, tmp_path):
    plan = pipeline.plan_pack_hf(open_source(models()))
    pipeline.execute(plan, tmp_path / "p", max_shard_bytes=None)
    data = (tmp_path / "p" / "model.safetensors").stat().st_size
    assert plan.total_bytes < data < plan.total_bytes + 8192  # tensor bytes + header
