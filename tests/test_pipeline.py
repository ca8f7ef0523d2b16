"""quantize / pack / unpack end to end: passthrough, no double quantization, plan-first refusal, atomic writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bitconv import pipeline
from bitconv.core.errors import LayoutError, OutputError, UsageError
from bitconv.output import TMP_PREFIX
from bitconv.quant import dequantize, online_lift, ternarize
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
            assert torch.equal(got, dequantize(online_lift(tern)))
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


@pytest.mark.parametrize("where", ["_write_step", "_compute_step"])  # the writing thread, a worker thread
@pytest.mark.parametrize("exc", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_failure_midway_leaves_nothing(models, tmp_path, monkeypatch, exc, where):
    calls = {"n": 0}
    real = getattr(pipeline, where)

    def flaky(step, *a):
        calls["n"] += 1
        if calls["n"] == 10:
            raise exc
        return real(step, *a)

    monkeypatch.setattr(pipeline, where, flaky)
    with pytest.raises(type(exc)):
        pipeline.pack_hf(models(), tmp_path / "out", max_shard_bytes=100_000)
    assert list(tmp_path.iterdir()) == []


def test_failure_during_overwrite_keeps_old_output(models, tmp_path, monkeypatch):
    out = tmp_path / "out"
    pipeline.pack_hf(models(), out)
    before = tree_hash(out)
    monkeypatch.setattr(pipeline, "_write_step", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
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


# ------------------------------------------------------------------------------------ one pipeline, one sink interface


class _NpySink:
    """A whole container in a few lines: each step's output as OUT/<name>.npy (what `pipeline.Sink` asks for)."""

    is_dir = True

    def __init__(self, plan):
        self.plan, self.extra, self.calls = plan, {"container": "npy"}, []

    def prepare(self, guard):
        self.out = guard.out
        return 0

    def open(self, tmp):
        self.tmp = tmp

    def write(self, step, result):
        self.calls.append(step.action)
        arr = result["weight"] if step.action == "pack" else result.codes
        np.save(self.tmp / f"{step.tensor.name}.npy", np.asarray(arr))

    def copy(self, step):
        self.calls.append("copy")
        np.save(self.tmp / f"{step.tensor.name}.npy", np.asarray(self.plan.source.load_passthrough(
            step.tensor.name).float()))

    def close(self, fsync):
        return sorted(self.out / p.name for p in self.tmp.iterdir())

    def abort(self):
        self.calls.append("abort")


def test_a_new_container_is_one_sink(models, tmp_path):
    """`execute` drives any sink: the plan's steps in order, the report from the plan and the sink."""
    ck = open_source(models("bitnet-2b4t"))

    class NpyPlan(pipeline.Plan):
        def new_sink(self, **_):
            self.sink = _NpySink(self)
            return self.sink

    base = pipeline.plan_quantize(ck)
    plan = NpyPlan(ck, "npy", base.steps, {}, base.layout)
    rep = pipeline.execute(plan, tmp_path / "o")
    assert plan.sink.calls == [s.action for s in plan.steps] and set(plan.sink.calls) == {"pack", "copy"}
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == sorted(f"{n}.npy" for n in ck.tensors)
    name = next(t.name for t in ck.ternary_tensors())
    np.testing.assert_array_equal(np.load(tmp_path / "o" / f"{name}.npy"), ck.tensors[name].ternary().codes)
    assert (rep.target, rep.n_ternary, rep.n_passthrough) == ("npy", 14, len(ck.tensors) - 14)
    assert rep.extra == {"container": "npy"} and rep.files == sorted(tmp_path / "o" / f"{n}.npy" for n in ck.tensors)


def test_every_plan_speaks_one_step_vocabulary(models):
    from bitconv.sinks.gguf import plan_pack_gguf

    src = open_source(models("bitnet-2b4t"))
    plans = [pipeline.plan_quantize(src), pipeline.plan_pack_hf(src), plan_pack_gguf(src, "i2_s"),
             plan_pack_gguf(src, "f16")]
    assert [sorted({s.action for s in p.steps}) for p in plans] == [["copy", "pack"]] * 3 + [["copy", "dequant"]]
    assert pipeline.ACTIONS == ("pack", "dequant", "copy")


def test_hf_free_space_counts_side_files(models, tmp_path, monkeypatch, copy_dir):
    """Free space that fits the tensors and the headroom but not the tokenizer copied along is refused up front."""
    import shutil

    src = copy_dir(models("bitnet-2b4t"))
    (src / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {}}, "pad": "x" * (8 << 20)}))
    plan = pipeline.plan_pack_hf(open_source(src))
    free = plan.total_bytes + plan.total_bytes // 100 + (5 << 20)  # tensors + headroom fit; 8 MiB more do not
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - free, free))
    with pytest.raises(OutputError, match="not enough disk space"):
        pipeline.pack_hf(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_compute_is_chosen_when_the_source_is_opened(models):
    master = models("bitnet-2b4t")
    ck = open_source(master, compute="BFloat16")
    assert ck.quant_compute == "bfloat16" and pipeline.plan_quantize(ck).compute == "bfloat16"
    name = next(t.name for t in ck.ternary_tensors())
    w = load_file(master / "model.safetensors")[name]
    bf, f32 = ternarize(w, "bfloat16"), ternarize(w, "float32")
    assert not np.array_equal(bf.codes, f32.codes) or bf.scale != f32.scale  # the modes differ on this weight
    got = ck.tensors[name].ternary()
    assert np.array_equal(got.codes, bf.codes) and got.scale == bf.scale
    assert open_source(master).tensors[name].ternary().scale == f32.scale  # the default is float32
    with pytest.raises(UsageError, match=r"^--compute must be one of float32, bfloat16, got 'fp8'$"):
        open_source(master / "no-such-folder", compute="fp8")  # checked before SRC is looked at


def test_report_to_dict_is_the_one_json_document(tmp_path):
    from bitconv.cli import jsondoc

    rep = pipeline.Report(tmp_path / "x.gguf", "gguf-i2_s", "bf16-master", [tmp_path / "x.gguf"], 14, 9, 1234, 0.51234,
                          {"warnings": ["w"], "arch": "bitnet-b1.58"})
    assert rep.to_dict("pack", target="gguf") == {
        "command": "pack", "ok": True, "out": str(tmp_path / "x.gguf"), "layout": "gguf-i2-s",
        "files": [str(tmp_path / "x.gguf")], "bytes": 1234, "seconds": 0.512, "warnings": ["w"], "schema_version": 1,
        "source_kind": "bf16-master", "ternary_tensors": 14, "passthrough_tensors": 9,
        "gguf": {"arch": "bitnet-b1.58"}, "target": "gguf"}
    assert jsondoc.from_report("pack", rep, target="gguf") == rep.to_dict("pack", target="gguf")
    assert list(jsondoc.doc("layouts", seconds=1.0, layouts=[])) == [
        "command", "ok", "out", "layout", "files", "bytes", "seconds", "warnings", "schema_version", "layouts"]
