"""Nanotron checkpoints: reading (any TP/PP) against nanotron's own files, writing them back exactly, HF <-> Nanotron
round trips, the fused-scale export, inconsistent-shard errors, and the CLI.

The fixtures are real checkpoints written by nanotron's `save_weights` / `save_meta` / `save_as_yaml`
(fixtures/nanotron/tiny_nanotron_ckpts.tar.gz, see its README): PR #180 BitNet, PR #180-tree Llama and HEAD Llama
at TP1/TP2/PP2, tied and untied, each with `<name>.reference.safetensors` holding the global tensors.
"""

from __future__ import annotations

import json
import shutil
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from bitconv import pipeline
from bitconv.cli import app
from bitconv.cli.convert import check_options
from bitconv.core.errors import OutputError, SourceError, UsageError
from bitconv.formats.nanotron import format as nt
from bitconv.formats.nanotron import yamlish
from bitconv.formats.safetensors import read_header
from bitconv.output import TMP_PREFIX
from bitconv.quant import lift, ternarize
from bitconv.sinks import nanotron as nc
from bitconv.sources import open_source
from bitconv.sources.checkpoint import load_torch
from bitconv.sources.nanotron import NanotronCheckpoint, open_nanotron

TARBALL = Path(__file__).resolve().parent.parent / "fixtures" / "nanotron" / "tiny_nanotron_ckpts.tar.gz"
NAMES = ("bitnet_tp1", "bitnet_tp2", "bitnet_pp2", "llama_tp1", "llama_tp2", "llama_tp2_tied", "llama_pp2_tied",
         "head_llama_tp1", "head_llama_tp2", "head_llama_tp2_tied")
FLAVOR_OF = {"bitnet": "bitnet", "llama": "llama-pr180", "head": "llama"}
runner = CliRunner()


@pytest.fixture(scope="session")
def ntfx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("nanotron")
    with tarfile.open(TARBALL) as tar:
        tar.extractall(base, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return base


@pytest.fixture(scope="session")
def hf_of(ntfx: Path, tmp_path_factory: pytest.TempPathFactory):
    """HF bf16 masters converted from the fixtures (per-projection: the latents), built once."""
    base, cache = tmp_path_factory.mktemp("nt-hf"), {}

    def get(name: str, granularity: str = "per-projection") -> Path:
        key = f"{name}-{granularity}"
        if key not in cache:
            bitnet = name.startswith("bitnet")
            cache[key] = nc.to_hf(ntfx / name, base / key, scale_granularity=granularity if bitnet else None).out
        return cache[key]

    return get


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int16) if t.dtype == torch.bfloat16 else t


def header(path: Path) -> tuple[dict, int, bytes]:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), n, raw[8 + n:]


def model_files(folder: Path) -> dict[str, Path]:
    return {str(p.relative_to(folder)): p for p in sorted((folder / "model").rglob("*.safetensors"))}


def module_key(name: str, flavor: nt.Flavor) -> str:
    """A nanotron parameter name -> the key `Dims.sharding` takes."""
    if not name.startswith("model.decoder."):
        return name
    return name.split("pp_block.", 1)[1].rsplit(".", 1)[0].replace(flavor.mlp + ".", "{mlp}.")


def strip_documented(cfg: dict) -> dict:
    cfg = json.loads(json.dumps(cfg))
    for dotted in nc.DOCUMENTED_CONFIG_FIELDS:
        *parents, last = dotted.split(".")
        d = cfg
        for p in parents:
            d = d.get(p) or {}
        d.pop(last, None)
    return cfg


# ---------------------------------------------------------------------------------------------------------- reading


@pytest.mark.parametrize("name", NAMES)
def test_read_reproduces_reference(ntfx, name):
    ck = open_source(ntfx / name)
    assert isinstance(ck, NanotronCheckpoint) and ck.kind == "nanotron"
    ref = load_file(str(ntfx / f"{name}.reference.safetensors"))
    assert set(ck.params) == set(ref)
    for pname, t in ref.items():
        got = ck.params[pname].load()
        assert got.dtype == t.dtype and torch.equal(bits(got), bits(t)), pname
    # the HF view: unfused, RoPE rows in HF order (nanotron rows [0,4,1,5,2,6,3,7] per head of 8)
    info, mlp = ck.info, ck.info.flavor.mlp
    qkv, gate_up = ref["model.decoder.1.pp_block.attn.qkv_proj.weight"], ref[f"model.decoder.1.pp_block.{mlp}."
                                                                              "gate_up_proj.weight"]
    perm = torch.tensor([0, 4, 1, 5, 2, 6, 3, 7])
    q_hf = torch.empty_like(qkv[:32])
    for h in range(4):
        q_hf[h * 8 + perm] = qkv[h * 8:(h + 1) * 8]
    assert torch.equal(bits(ck.latent("model.layers.1.self_attn.q_proj.weight")), bits(q_hf))
    assert torch.equal(bits(ck.latent("model.layers.1.self_attn.v_proj.weight")), bits(qkv[48:]))
    assert torch.equal(bits(ck.latent("model.layers.1.mlp.up_proj.weight")), bits(gate_up[48:]))
    emb = ck.load_passthrough("model.embed_tokens.weight")
    assert torch.equal(bits(emb), bits(ref[nt.EMBED]))
    assert ("lm_head.weight" in ck.tensors) == (not info.tied) == ("tied" not in name)
    assert ck.config["architectures"] == ["LlamaForCausalLM"] and ck.config["vocab_size"] == 64
    assert ("quantization_config" in ck.config) == name.startswith("bitnet")


def test_bitnet_view_has_ones_norms_and_fused_scales(ntfx):
    ck = open_source(ntfx / "bitnet_tp2")
    names = {f"model.layers.{i}.{p}.weight" for i in range(2) for parts in nt.LAYER_TO_HF.values() for p in parts}
    assert set(ck.tensors) == names | {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    ones = torch.ones(32, dtype=torch.bfloat16)
    assert torch.equal(ck.load_passthrough("model.layers.0.input_layernorm.weight"), ones)
    scales = {p: float(ck.tensors[f"model.layers.0.{p}.weight"].ternary().scale)
              for p in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj")}
    assert scales["self_attn.q_proj"] == scales["self_attn.k_proj"] == scales["self_attn.v_proj"]
    assert scales["mlp.gate_proj"] == scales["mlp.up_proj"]
    per = open_nanotron(ntfx / "bitnet_tp2", scale_granularity="per-projection")
    assert float(per.tensors["model.layers.0.self_attn.k_proj.weight"].ternary().scale) != scales["self_attn.k_proj"]
    # stored byte ranges: 16 bits per ternary weight (q's rows of both TP shards), nothing counted twice
    q = ck.tensors["model.layers.0.self_attn.q_proj.weight"]
    assert q.stored_bytes == 32 * 32 * 2 and len(q.stored) == 2


def test_legacy_file_names_are_read(ntfx, tmp_path):
    """nanotron 1.3 named shards model_model_weight.safetensors_pp-rank-…; scripts/fix_checkpoint_bad_naming.py."""
    src = shutil.copytree(ntfx / "llama_tp2", tmp_path / "legacy")
    for p in list((src / "model").rglob("*_pp-rank-*.safetensors")):
        p.rename(p.with_name(p.name.replace("model_weight_", "model_model_weight.safetensors_")))
    ref = load_file(str(ntfx / "llama_tp2.reference.safetensors"))
    ck = open_source(src)
    for pname, t in ref.items():
        assert torch.equal(bits(ck.params[pname].load()), bits(t)), pname


def test_vocab_padding_removed(ntfx, tmp_path):
    ck = open_nanotron(ntfx / "llama_tp2", vocab_size=60)
    assert ck.tensors["model.embed_tokens.weight"].shape == (60, 32) and ck.config["vocab_size"] == 60
    assert ck.load_passthrough("lm_head.weight").shape == (60, 32)
    # from an HF config next to the checkpoint
    src = shutil.copytree(ntfx / "llama_tp2", tmp_path / "withcfg")
    (src / "config.json").write_text(json.dumps({"vocab_size": 50}))
    assert open_source(src).tensors["model.embed_tokens.weight"].shape == (50, 32)
    with pytest.raises(SourceError, match="does not fit the 64 stored embedding rows"):
        open_nanotron(ntfx / "llama_tp2", vocab_size=65)


# ---------------------------------------------------------------------------------------------------------- writing


@pytest.mark.parametrize("block_bytes", [None, 1])  # default blocks; one row (one RoPE head) per block
@pytest.mark.parametrize("name", NAMES)
def test_write_matches_nanotron(ntfx, tmp_path, name, block_bytes, monkeypatch):
    """From the reference tensors, the files nanotron wrote: same tree (pp ranks from nanotron's own stage rule, the
    version from the generation table), metadata, bytes; configs byte-equal. Written whole and a row at a time
    (`Rows`: every rank's file takes its rows or columns of each block)."""
    if block_bytes:
        monkeypatch.setattr(nc, "ROW_BLOCK_BYTES", block_bytes)
    fx = ntfx / name
    mc = json.loads((fx / "model_config.json").read_text())
    meta = json.loads((fx / "checkpoint_metadata.json").read_text())
    cfg = yamlish.load((fx / "config.yaml").read_text())
    flavor, dims = nt.detect_flavor(mc), nt.dims_from_config(mc)
    tp, pp = meta["tp"], cfg["parallelism"]["pp"]
    assert flavor.version == meta["version"] == {"bitnet": "1.4", "llama": "1.4", "head": "1.5"}[name.split("_")[0]]
    stages = nt.pp_stages(flavor, dims, mc["vocab_size"], pp)
    theirs = model_files(fx)
    for pname, t in load_file(str(fx.parent / f"{name}.reference.safetensors")).items():
        data = nc.Rows.of(t) if block_bytes else t
        nc.write_param(tmp_path / "model", pname, data, dims.sharding(module_key(pname, flavor)), tp, flavor.version,
                       (stages[nt.block_of(pname)], pp))
    mine = model_files(tmp_path)
    assert sorted(mine) == sorted(theirs)
    for rel, path in theirs.items():
        (h1, n1, d1), (h2, n2, d2) = header(path), header(mine[rel])
        # equal headers (metadata key order is a Rust HashMap's in nanotron's files, so compare parsed), equal data
        assert h1 == h2 and n1 == n2 and d1 == d2, rel
    assert nc.model_config_json(flavor, mc) == (fx / "model_config.json").read_text()
    assert nc.checkpoint_metadata_json(flavor, tp) == (fx / "checkpoint_metadata.json").read_text()
    mine_cfg = nc.config_yaml_dict(flavor, mc, tp, "elsewhere", cfg["model"]["make_vocab_size_divisible_by"], pp=pp)
    assert strip_documented(mine_cfg) == strip_documented(cfg)


def assert_same_checkpoint(mine: Path, theirs: Path) -> None:
    """Same model/ tree, parsed headers and tensor bytes; configs equal but for the documented fields."""
    a, b = model_files(mine), model_files(theirs)
    assert sorted(a) == sorted(b)
    for rel in b:
        (h1, n1, d1), (h2, n2, d2) = header(a[rel]), header(b[rel])
        assert h1 == h2 and n1 == n2 and d1 == d2, rel
    assert (mine / "model_config.json").read_text() == (theirs / "model_config.json").read_text()
    m1, m2 = (json.loads((d / "checkpoint_metadata.json").read_text()) for d in (mine, theirs))
    m1.pop("custom_metas"), m2.pop("custom_metas")
    assert m1 == m2
    y1, y2 = (yamlish.load((d / "config.yaml").read_text()) for d in (mine, theirs))
    assert strip_documented(y1) == strip_documented(y2)


@pytest.mark.parametrize("name", NAMES)
def test_rewrite_at_own_layout_is_nanotrons(ntfx, tmp_path, name):
    """A Nanotron checkpoint read and written back (its own TP, PP, version, RoPE order: the defaults) is the tree
    nanotron wrote: PP2 fixtures included (layers, embedding on pp-rank 0; final norm and lm_head on pp-rank 1)."""
    rep = nc.to_nanotron(ntfx / name, tmp_path / "nt")
    assert_same_checkpoint(rep.out, ntfx / name)
    pp = 2 if "pp2" in name else 1
    assert rep.extra["pp"] == pp and rep.extra["checkpoint_version"] == ("1.5" if name.startswith("head") else "1.4")
    if pp == 2:
        assert rep.extra["pp_stages"] == {"token_position_embeddings": 0, "decoder.0": 0, "decoder.1": 0,
                                          "final_layer_norm": 1, "lm_head": 1}


# Layouts no fixture has, with the stages worked out by hand from nanotron's build_model (models/base.py): block
# costs 4·H·d·h + 3·I·h per decoder layer, V·h for the lm_head (0 in PR #180 BitNet: its cost table keys a class
# the lm_head is not built with); thresholds total·(r+1)/PP; the rank advances after a block exceeding its threshold.
# h=64, H=4, d=16, I=96: layer cost c = 34816.
PP_CASES = {
    # TP4 x PP3, 3 layers, BitNet (lm_head 0): thresholds c, 2c, 3c
    "tp4-pp3-bitnet": (4, 3, 3, 300, "bitnet", False, {"E": 0, "L": (0, 0, 1), "N": 2, "H": 2}),
    # TP1 x PP2, 3 layers, HEAD llama, V=1024 (lm_head 65536): thresholds 84992, 169984 -> layer 2 stays on 0
    "tp1-pp2-llama": (1, 2, 3, 1024, "llama", False, {"E": 0, "L": (0, 0, 0), "N": 1, "H": 1}),
    # the same model as BitNet: thresholds 1.5c, 3c -> layer 2 moves to 1
    "tp1-pp2-bitnet": (1, 2, 3, 1024, "bitnet", False, {"E": 0, "L": (0, 0, 1), "N": 1, "H": 1}),
    # TP2 x PP4 on 2 layers (more stages than layers), PR #180-tree llama, tied, V=300 (lm_head 19200):
    # thresholds 22208, 44416, 66624, 88832 -> every stage holds a parameter (the tied lm_head on 3)
    "tp2-pp4-llama-tied": (2, 4, 2, 300, "llama-pr180", True, {"E": 0, "L": (0, 1), "N": 2, "H": 3}),
}


@pytest.mark.parametrize("case", sorted(PP_CASES))
def test_pp_layouts_read_back_bit_for_bit(models, tmp_path, case):
    tp, pp, layers, vocab, flavor, tied, st = PP_CASES[case]
    src = models("llama-bitnet", tied=tied, hidden_size=64, intermediate_size=96, num_layers=layers,
                 num_kv_heads=4, vocab_size=vocab)
    rep = nc.to_nanotron(src, tmp_path / "nt", tp=tp, pp=pp, model=flavor)
    flat = nc.to_nanotron(src, tmp_path / "flat", tp=1, pp=1, model=flavor).out
    expect = {"token_position_embeddings": st["E"], "final_layer_norm": st["N"], "lm_head": st["H"],
              **{f"decoder.{i}": r for i, r in enumerate(st["L"])}}
    assert rep.extra["pp_stages"] == expect
    fl = nt.FLAVORS[flavor]
    names = {p: f"pp-rank-{expect[nt.block_of(p)]}-of-{pp}_tp-rank-{{t}}-of-{tp}" for p in open_source(flat).params}
    want = set()
    for pname, suffix in names.items():
        folder = "model/" + "/".join(pname.split(".")[:-1])
        if pname.endswith("layernorm.weight") or pname == nt.FINAL_NORM:
            want.add(f"{folder}/model_weight.safetensors")
        else:
            want |= {f"{folder}/model_weight_{suffix.format(t=t)}.safetensors" for t in range(tp)}
    assert set(model_files(rep.out)) == want
    assert (nt.LM_HEAD in names) == (not tied)
    a, b = open_source(rep.out), open_source(flat)
    assert a.info.tp == tp and a.info.pp == pp and set(a.params) == set(b.params)
    for pname, p in b.params.items():
        assert torch.equal(bits(a.params[pname].load()), bits(p.load())), pname
    cfg = yamlish.load((rep.out / "config.yaml").read_text())
    assert (cfg["parallelism"]["tp"], cfg["parallelism"]["pp"]) == (tp, pp)
    meta = json.loads((rep.out / "checkpoint_metadata.json").read_text())
    assert meta["tp"] == tp and "pp" not in meta and meta["version"] == fl.version
    for path in rep.out.joinpath("model").rglob("*_tp-rank-*.safetensors"):
        assert read_header(path)[1]["version"] == fl.version
    # written back at its own layout: identical files
    again = nc.to_nanotron(rep.out, tmp_path / "again").out
    assert_same_checkpoint(again, rep.out)


def test_pp_without_parameters_refused(models, tmp_path):
    src = models("llama-bitnet", hidden_size=64, intermediate_size=96)
    with pytest.raises(UsageError, match=r"--pp 5 leaves pp-rank 4 without parameters: .* the largest PP size under "
                                         r"5 that gives every stage parameters is 4"):
        nc.to_nanotron(src, tmp_path / "a", tp=2, pp=5, model="bitnet")
    # a large lm_head pulls everything else onto stage 0: V·h = 262144 > 2 layers (69632), so PP2 leaves stage 1
    # with the cast and loss blocks only (llama); BitNet's lm_head costs 0, so its PP2 is fine
    big = models("llama-bitnet", hidden_size=64, intermediate_size=96, vocab_size=4096)
    with pytest.raises(UsageError, match="--pp 2 leaves pp-rank 1 without parameters"):
        nc.to_nanotron(big, tmp_path / "b", pp=2, model="llama")
    assert nc.to_nanotron(big, tmp_path / "c", pp=2, model="bitnet").extra["pp_stages"]["lm_head"] == 1
    with pytest.raises(UsageError, match=r"--pp 1000000000000 is more stages than the 5 parameter-holding"):
        nc.to_nanotron(src, tmp_path / "e", pp=10**12)  # refused at once, no per-stage work
    with pytest.raises(UsageError, match="--pp must be >= 1"):
        nc.to_nanotron(src, tmp_path / "d", pp=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_to_nanotron_configs_differ_only_in_documented_fields(ntfx, hf_of, tmp_path):
    rep = nc.to_nanotron(hf_of("bitnet_tp2"), tmp_path / "nt", tp=2)
    out, fx = rep.out, ntfx / "bitnet_tp2"
    assert (out / "model_config.json").read_text() == (fx / "model_config.json").read_text()
    mine, theirs = (json.loads((d / "checkpoint_metadata.json").read_text()) for d in (out, fx))
    assert mine.pop("custom_metas")["bitconv"]["vocab_size"] == 64
    theirs.pop("custom_metas")
    assert mine == theirs
    y1, y2 = (yamlish.load((d / "config.yaml").read_text()) for d in (out, fx))
    assert y1["model"]["init_method"]["path"] == str(out.resolve())
    assert strip_documented(y1) == strip_documented(y2)
    assert sorted(model_files(out)) == sorted(model_files(fx))
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint_metadata.json", "config.yaml", "model",
                                                     "model_config.json"]


def test_vocab_prepadded_and_recorded(models, tmp_path):
    src = models("llama-bitnet", hidden_size=64, intermediate_size=96, vocab_size=300)
    rep = nc.to_nanotron(src, tmp_path / "nt", tp=2, make_vocab_size_divisible_by=16)
    assert rep.extra["padded_vocab_size"] == 320
    ck = open_source(rep.out)
    emb = ck.params[nt.EMBED].load()
    assert emb.shape == (320, 64) and not emb[300:].any()
    assert json.loads((rep.out / "model_config.json").read_text())["vocab_size"] == 320
    assert ck.tensors["model.embed_tokens.weight"].shape == (300, 64)  # recorded in custom_metas
    cfg = yamlish.load((rep.out / "config.yaml").read_text())
    assert cfg["model"]["make_vocab_size_divisible_by"] == 16 and cfg["parallelism"]["tp"] == 2
    assert cfg["tokenizer"]["tokenizer_name_or_path"] == str(rep.out.resolve())
    assert (rep.out / "tokenizer.json").is_file()


# ------------------------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("name", ["bitnet_tp2", "bitnet_pp2", "llama_tp2_tied", "head_llama_tp2", "llama_pp2_tied"])
def test_nanotron_hf_nanotron_exact(ntfx, hf_of, tmp_path, name):
    fx = ntfx / name
    tp = json.loads((fx / "checkpoint_metadata.json").read_text())["tp"]
    flavor = FLAVOR_OF[name.split("_")[0]]
    out = nc.to_nanotron(hf_of(name), tmp_path / "nt", tp=tp, model=flavor,
                         rope_interleaved=True if flavor == "llama" else None).out
    mine, theirs = model_files(out), model_files(fx)
    assert {k.replace("pp-rank-1-of-2", "pp-rank-0-of-1").replace("of-2_tp", "of-1_tp") for k in theirs} == set(mine)
    ref = load_file(str(ntfx / f"{name}.reference.safetensors"))
    back = open_source(out)
    for pname, t in ref.items():
        assert torch.equal(bits(back.params[pname].load()), bits(t)), pname


def test_hf_nanotron_hf_exact(models, tmp_path):
    src = models("llama-bitnet", hidden_size=64, intermediate_size=96, vocab_size=300)
    nt_out = nc.to_nanotron(src, tmp_path / "nt", model="llama", tp=2, make_vocab_size_divisible_by=16).out
    hf = nc.to_hf(nt_out, tmp_path / "hf").out
    a, b = open_source(src), open_source(hf)
    assert a.config == b.config and set(a.tensors) == set(b.tensors)
    for n in a.tensors:
        assert torch.equal(bits(load_torch(a.tensors[n].stored[0])), bits(load_torch(b.tensors[n].stored[0]))), n
    for f in a.aux_files:
        assert (hf / f.name).read_bytes() == f.read_bytes()


def test_hf_nanotron_hf_exact_bitnet(hf_of, tmp_path):
    """An HF master of a PR #180 model (ones norms) through the bitnet model and back: identical."""
    src = hf_of("bitnet_tp1")
    nt_out = nc.to_nanotron(src, tmp_path / "nt", tp=2).out
    assert json.loads((nt_out / "model_config.json").read_text())["is_bitnet_config"] is True
    hf = nc.to_hf(nt_out, tmp_path / "hf", scale_granularity="per-projection").out
    a, b = open_source(src), open_source(hf)
    assert a.config == b.config
    for n in a.tensors:
        assert torch.equal(bits(load_torch(a.tensors[n].stored[0])), bits(load_torch(b.tensors[n].stored[0]))), n


def test_packed_nanotron_packed_exact(hf_of, tmp_path):
    """HF packed -> Nanotron (lifted latents) -> HF (fused) -> packed: the same codes and scales."""
    pk = pipeline.pack_hf(hf_of("bitnet_tp1", "fused"), tmp_path / "pk", linear_class="bitlinear").out
    rep = nc.to_nanotron(pk, tmp_path / "nt")
    assert not any("scales differ" in w for w in rep.extra["warnings"])
    # nanotron's own weight_quant (bf16, PR #180 nn.py) on the lifted fused tensor gives the packed codes
    w = open_source(rep.out).params["model.decoder.0.pp_block.attn.qkv_proj.weight"].load()
    s = 1.0 / w.abs().mean().clamp(min=1e-5)
    codes = (w * s).round().clamp(-1, 1).to(torch.int8)
    q = open_source(pk).tensors["model.layers.0.self_attn.q_proj.weight"].ternary()
    assert torch.equal(nt.rope_to_hf(codes[:32], 4), torch.from_numpy(q.codes))
    hf = nc.to_hf(rep.out, tmp_path / "hf").out
    again = pipeline.pack_hf(hf, tmp_path / "pk2", linear_class="bitlinear").out
    x, y = open_source(pk), open_source(again)
    for n, t in x.tensors.items():
        if t.is_ternary:
            tx, ty = t.ternary(), y.tensors[n].ternary()
            assert np.array_equal(tx.codes, ty.codes) and tx.scale == ty.scale, n
        else:
            assert torch.equal(bits(x.load_passthrough(n)), bits(y.load_passthrough(n))), n
    assert x.config == y.config


def test_different_projection_scales_are_reported(models, tmp_path):
    src = models("llama-bitnet", hidden_size=64, intermediate_size=96, vocab_size=300)
    pk = pipeline.pack_hf(src, tmp_path / "pk").out
    rep = nc.to_nanotron(pk, tmp_path / "nt")
    text = " ".join(rep.extra["warnings"])
    assert "scales differ" in text and "RMSNorm" in text and "rope_theta 500000" in text
    ck, packed = open_source(rep.out), open_source(pk)
    assert ck.info.flavor.name == "bitnet"
    for n, t in packed.tensors.items():  # the codes survive exactly, q/k/v now share one scale
        if t.is_ternary:
            assert np.array_equal(ck.tensors[n].ternary().codes, t.ternary().codes), n


# ------------------------------------------------------------------------------------------------- fused-scale export


def test_fused_export_packs_to_fused_codes_and_verifies(ntfx, hf_of, tmp_path):
    master = hf_of("bitnet_tp1", "fused")
    packed = pipeline.pack_hf(master, tmp_path / "pk").out
    ref = load_file(str(ntfx / "bitnet_tp1.reference.safetensors"))
    ck = open_source(packed)
    for i in range(2):
        fused = ternarize(ref[f"model.decoder.{i}.pp_block.attn.qkv_proj.weight"])
        expect = {"q_proj": nt.rope_to_hf(fused.codes[:32], 4), "k_proj": nt.rope_to_hf(fused.codes[32:48], 2),
                  "v_proj": fused.codes[48:]}
        for p, codes in expect.items():
            t = ck.tensors[f"model.layers.{i}.self_attn.{p}.weight"].ternary()
            assert np.array_equal(t.codes, codes), (i, p)
            assert t.scale == torch.tensor(float(fused.scale)).to(torch.bfloat16).item()  # HF stores bf16
        gu = ternarize(ref[f"model.decoder.{i}.pp_block.MLPBitNet.gate_up_proj.weight"])
        assert np.array_equal(ck.tensors[f"model.layers.{i}.mlp.up_proj.weight"].ternary().codes, gu.codes[48:])
    # per-projection ternarization of the fused master gives the fused scale (to float32 rounding)
    m = open_source(master)
    s = m.tensors["model.layers.0.self_attn.k_proj.weight"].ternary().scale
    assert abs(s - ternarize(ref["model.decoder.0.pp_block.attn.qkv_proj.weight"]).scale) / s < 1e-5
    verify = pytest.importorskip("bitconv.verify")
    rep = verify.verify(packed, master)
    assert rep.ok, [f.message for f in rep.findings]
    rep = verify.verify(packed, ntfx / "bitnet_tp1", run_parity=False)  # the Nanotron checkpoint itself as REF
    assert rep.ok, [f.message for f in rep.findings]


def test_lift_reproduces_codes_and_scale():
    g = torch.Generator().manual_seed(3)
    for shape, scale in (((64, 48), 0.0123), ((7, 5), 3.5), ((256, 33), 1e-3)):
        codes = torch.randint(-1, 2, shape, generator=g).to(torch.int8).numpy()
        w = lift(codes, scale)
        assert w.dtype == torch.bfloat16
        for compute in ("float32", "bfloat16"):
            t = ternarize(w, compute)
            assert np.array_equal(t.codes, codes)
        assert abs(ternarize(w).scale - scale) / scale < 2e-5
    assert not lift(np.zeros((4, 4), np.int8), 0.5).any()


@pytest.mark.slow
def test_transformers_loads_converted_bitnet(hf_of):
    transformers = pytest.importorskip("transformers")
    model, info = transformers.AutoModelForCausalLM.from_pretrained(hf_of("bitnet_tp2", "fused"),
                                                                    dtype=torch.bfloat16, output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info
    assert type(model).__name__ == "LlamaForCausalLM"
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "AutoBitLinear"


def test_to_hf_warnings(ntfx, tmp_path):
    rep = nc.to_hf(ntfx / "bitnet_tp2", tmp_path / "hf")
    text = " ".join(rep.extra["warnings"])
    assert "o_proj and down_proj" in text and "TP=2" in text
    assert rep.extra["scale_granularity"] == "fused" and rep.extra["export"] == "release" and rep.n_ternary == 14
    cfg = json.loads((rep.out / "config.json").read_text())
    assert cfg["quantization_config"]["quantization_mode"] == "online" and cfg["rope_theta"] == 10000.0
    llama = nc.to_hf(ntfx / "llama_tp1", tmp_path / "l")
    assert llama.extra["warnings"] == [] and llama.extra["export"] is None
    assert "bitconv" not in json.loads((llama.out / "config.json").read_text())
    with pytest.raises(UsageError, match="apply to BitNet"):
        nc.to_hf(ntfx / "llama_tp1", tmp_path / "x", scale_granularity="fused")
    with pytest.raises(UsageError, match="apply to BitNet"):
        nc.to_hf(ntfx / "llama_tp1", tmp_path / "x", purpose="training")


def test_export_named_by_purpose(ntfx, hf_of, tmp_path):
    """--for release|training are --scale-granularity fused|per-projection; the choice is recorded and printed."""
    for purpose, granularity in (("release", "fused"), ("training", "per-projection")):
        rep = nc.to_hf(ntfx / "bitnet_tp1", tmp_path / purpose, purpose=purpose)
        old = hf_of("bitnet_tp1", granularity)  # the older spelling
        cfg = json.loads((rep.out / "config.json").read_text())
        assert {p.name: p.read_bytes() for p in rep.out.iterdir()} == {p.name: p.read_bytes() for p in old.iterdir()}
        block = cfg["bitconv"]
        assert block["export"] == purpose and block["scale_granularity"] == granularity
        assert block["source"] == "nanotron" and block["meaning"].startswith(purpose + ": ")
        assert rep.extra["export_meaning"] == block["meaning"]
        ck = open_source(rep.out)  # still read as a bf16 master
        assert ck.kind == "bf16-master"
    ref = load_file(str(ntfx / "bitnet_tp1.reference.safetensors"))
    qkv = ref["model.decoder.0.pp_block.attn.qkv_proj.weight"]
    train = open_source(tmp_path / "training").tensors["model.layers.0.self_attn.v_proj.weight"]
    assert torch.equal(bits(load_torch(train.stored[0])), bits(qkv[48:]))  # training: nanotron's latents, unchanged
    rel = open_source(tmp_path / "release").tensors["model.layers.0.self_attn.v_proj.weight"]
    assert not torch.equal(bits(load_torch(rel.stored[0])), bits(qkv[48:]))  # release: lifted codes, not latents
    with pytest.raises(UsageError, match="--for release and --scale-granularity per-projection disagree"):
        nc.to_hf(ntfx / "bitnet_tp1", tmp_path / "x", purpose="release", scale_granularity="per-projection")
    with pytest.raises(UsageError, match="--for must be one of release, training"):
        nc.to_hf(ntfx / "bitnet_tp1", tmp_path / "x", purpose="publish")
    r = run("convert", ntfx / "bitnet_tp1", "-o", tmp_path / "cli", "--to", "hf-bf16", "--for", "training")
    assert r.exit_code == 0, r.output
    assert "export --for training: the bf16 training latents exactly as nanotron stored them" in r.stdout
    r = run("convert", ntfx / "bitnet_tp1", "-o", tmp_path / "cli2", "--to", "hf-bf16", "--json")
    assert json.loads(r.stdout)["export"] == "release"
    r = run("convert", ntfx / "bitnet_tp1", "-o", tmp_path / "x", "--to", "nanotron", "--for", "release")
    assert r.exit_code == 2 and "--for applies to --to hf-bf16 only" in r.output


def test_verify_with_nanotron_ref_expects_release(ntfx, tmp_path):
    """verify --ref <Nanotron BitNet> quantizes with the fused scales: a release export packs to a match; a
    training export packs per-projection codes, fails, and the failure names the export to verify against."""
    verify = pytest.importorskip("bitconv.verify")
    for purpose in ("release", "training"):
        hf = nc.to_hf(ntfx / "bitnet_tp1", tmp_path / f"hf-{purpose}", purpose=purpose).out
        packed = pipeline.pack_hf(hf, tmp_path / f"pk-{purpose}").out
        rep = verify.verify(packed, ntfx / "bitnet_tp1", run_parity=False)
        assert "quantized with fused scales (what `convert --for release` exports)" in rep.roundtrip.compute_note
        if purpose == "release":
            assert rep.ok, [f.message for f in rep.findings]
        else:
            assert not rep.ok
            assert any("packed from a `--for training` export" in w for w in rep.roundtrip.warnings)
            assert verify.verify(packed, hf, run_parity=False).ok  # against its own export it verifies


# ------------------------------------------------------------------------------------------------------- bad shards


def rewrite_meta(path: Path, **changes: str) -> None:
    infos, meta = read_header(path)
    nc.write_shard_file(path, load_torch(infos["data"]), {**meta, **changes})


@pytest.fixture
def broken(ntfx, tmp_path):
    def make(name: str = "llama_tp2") -> Path:
        return shutil.copytree(ntfx / name, tmp_path / f"broken-{name}")

    return make


O_PROJ = "model/model/decoder/0/pp_block/attn/o_proj"


def test_missing_rank(broken):
    src = broken()
    (src / O_PROJ / "model_weight_pp-rank-0-of-1_tp-rank-1-of-2.safetensors").unlink()
    with pytest.raises(SourceError, match=r"missing rank: tp-rank 1 of 2 has no file") as e:
        open_source(src)
    assert "o_proj" in str(e.value) and "model.decoder.0.pp_block.attn.o_proj.weight" in str(e.value)


def test_overlapping_slices(broken):
    src = broken()
    rewrite_meta(src / O_PROJ / "model_weight_pp-rank-0-of-1_tp-rank-1-of-2.safetensors",
                 local_global_slices_pairs="None,None,None|None,None,None#None,None,None|8,24,None")
    with pytest.raises(SourceError, match=r"overlapping slices: .*tp-rank-1-of-2.safetensors and .*tp-rank-0-of-2"
                                          r".safetensors both write global \[0:32, 8:24\]"):
        open_source(src)


def test_gapped_slices(broken):
    src = broken()
    rewrite_meta(src / O_PROJ / "model_weight_pp-rank-0-of-1_tp-rank-1-of-2.safetensors",
                 local_global_slices_pairs="None,None,None|0,8,None#None,None,None|16,24,None")
    with pytest.raises(SourceError, match=r"gapped slices: the shards cover 768 of the 1024 elements of "
                                          r"unsharded_shape \(32, 32\)"):
        open_source(src)


def test_mismatched_unsharded_shape(broken):
    src = broken()
    rewrite_meta(src / O_PROJ / "model_weight_pp-rank-0-of-1_tp-rank-1-of-2.safetensors", unsharded_shape="(32, 48)")
    with pytest.raises(SourceError, match=r"mismatched unsharded_shape: .*tp-rank-1-of-2.safetensors says "
                                          r"\(32, 48\), .*tp-rank-0-of-2.safetensors says \(32, 32\)"):
        open_source(src)


def test_unknown_version(broken):
    src = broken()
    rewrite_meta(src / O_PROJ / "model_weight_pp-rank-0-of-1_tp-rank-0-of-2.safetensors", version="2.0")
    with pytest.raises(SourceError, match=r"unknown checkpoint version '2.0'; bitconv reads nanotron checkpoint "
                                          r"versions 1.2, 1.3, 1.4, 1.5"):
        open_source(src)
    src2 = broken("bitnet_tp1")
    meta = json.loads((src2 / "checkpoint_metadata.json").read_text())
    (src2 / "checkpoint_metadata.json").write_text(json.dumps({**meta, "version": "1.9"}))
    with pytest.raises(SourceError, match="unknown checkpoint version '1.9'"):
        open_source(src2)


def test_missing_parameter_and_bad_names(broken):
    src = broken("bitnet_tp1")
    shutil.rmtree(src / "model/model/decoder/1/pp_block/MLPBitNet/down_proj")
    with pytest.raises(SourceError, match=r"missing parameter 'model.decoder.1.pp_block.MLPBitNet.down_proj.weight'"):
        open_source(src)
    src = broken("llama_tp1")
    (src / "model/model/final_layer_norm/pp_block/model_weight.safetensors").rename(
        src / "model/model/final_layer_norm/pp_block/weights.safetensors")
    with pytest.raises(SourceError, match="not a nanotron weight file name"):
        open_source(src)


def test_failed_convert_leaves_nothing(ntfx, broken, tmp_path, monkeypatch):
    src = broken()
    (src / O_PROJ / "model_weight_pp-rank-0-of-1_tp-rank-1-of-2.safetensors").unlink()
    out_dir = tmp_path / "outs"
    out_dir.mkdir()
    for to in ("hf-bf16", "nanotron"):
        r = runner.invoke(app, ["convert", str(src), "-o", str(out_dir / to), "--to", to])
        assert r.exit_code == 2 and "missing rank" in r.output and r.output.count("\n") == 1
    # a failure in the middle of writing: one OutputError line, the temporary folder is removed, OUT never appears
    calls = []

    def failing(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk on fire")
        return real(*a, **kw)

    real = nc.write_param
    monkeypatch.setattr(nc, "write_param", failing)
    with pytest.raises(OutputError, match="cannot write: disk on fire"):
        nc.to_nanotron(ntfx / "llama_tp1", out_dir / "mid")
    assert list(out_dir.iterdir()) == [] and not any(p.name.startswith(TMP_PREFIX) for p in out_dir.iterdir())


def test_refuses_models_nanotron_cannot_hold(models, tmp_path):
    with pytest.raises(UsageError, match="hidden_act 'relu2'"):
        nc.to_nanotron(models("bitnet-2b4t"), tmp_path / "a")
    with pytest.raises(UsageError, match="has no place in a nanotron"):
        nc.to_nanotron(models("1bitllm"), tmp_path / "b")
    with pytest.raises(UsageError, match="--tp 3 must divide num_attention_heads"):
        nc.to_nanotron(models("llama-bitnet"), tmp_path / "c", tp=3)
    assert not list(tmp_path.iterdir())


# -------------------------------------------------------------------------------------------------------------- CLI


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_cli_convert_both_ways(ntfx, tmp_path):
    r = run("convert", ntfx / "bitnet_tp2", "-o", tmp_path / "hf", "--to", "hf-bf16", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["target"] == "hf-bf16" and rep["source_kind"] == "nanotron" and rep["scale_granularity"] == "fused"
    assert any("o_proj and down_proj" in w for w in rep["warnings"])
    r = run("convert", tmp_path / "hf", "-o", tmp_path / "nt", "--to", "nanotron", "--tp", "2")
    assert r.exit_code == 0, r.output
    assert "wrote" in r.stdout and "nanotron-bitnet" in r.stdout
    assert len(list((tmp_path / "nt" / "model").rglob("*tp-rank-1-of-2.safetensors"))) == 10
    r = run("convert", ntfx / "bitnet_pp2", "-o", tmp_path / "pp", "--to", "nanotron", "--json")  # own TP x PP
    assert r.exit_code == 0 and json.loads(r.stdout)["pp"] == 2, r.output
    assert [p.name for p in (tmp_path / "pp" / "model").rglob("*pp-rank-1-of-2*")] == [
        "model_weight_pp-rank-1-of-2_tp-rank-0-of-1.safetensors"]  # lm_head
    r = run("convert", ntfx / "bitnet_pp2", "-o", tmp_path / "pp5", "--to", "nanotron", "--pp", "5")
    assert r.exit_code == 2 and "--pp 5 leaves pp-rank 4 without parameters" in r.output
    assert r.output.count("\n") == 1 and not (tmp_path / "pp5").exists()
    r = run("convert", ntfx / "llama_tp2", "-o", tmp_path / "nt1", "--to", "nanotron", "--vocab-size", "60")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "nt1" / "model_config.json").read_text())["vocab_size"] == 60


def test_cli_other_commands_take_nanotron(ntfx, tmp_path):
    r = run("inspect", ntfx / "bitnet_pp2", "--json")
    d = json.loads(r.stdout)
    assert d["kind"] == "nanotron" and d["family"] == "llama-bitnet" and d["scale_stats"]["count"] == 14
    r = run("pack", ntfx / "bitnet_tp2", "--to", "hf", "-o", tmp_path / "pk", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["ternary_tensors"] == 14
    src = open_source(ntfx / "bitnet_tp2")
    pk = open_source(tmp_path / "pk")
    assert np.array_equal(pk.tensors["model.layers.1.mlp.gate_proj.weight"].ternary().codes,
                          src.tensors["model.layers.1.mlp.gate_proj.weight"].ternary().codes)
    r = run("quantize", ntfx / "head_llama_tp2_tied", "-o", tmp_path / "q")
    assert r.exit_code == 0, r.output
    q = open_source(tmp_path / "q")
    assert q.kind == "bitconv-ternary" and sum(t.is_ternary for t in q.tensors.values()) > 0


def test_cli_option_errors(ntfx, tmp_path):
    r = run("convert", ntfx / "bitnet_tp1", "-o", tmp_path / "x", "--to", "gguf")
    assert r.exit_code == 2 and "convert does not write gguf: use `bitconv pack SRC --to gguf" in r.output  # issue 14
    r = run("convert", ntfx / "bitnet_tp1", "-o", tmp_path / "x", "--to", "onnx")
    assert r.exit_code == 2 and "--to must be one of hf-bf16, nanotron, got 'onnx'" in r.output
    r = run("convert", ntfx / "bitnet_tp1", "-o", tmp_path / "x", "--to", "hf-bf16", "--tp", "2")
    assert r.exit_code == 2 and "--tp apply to --to nanotron only" in r.output
    r = run("convert", ntfx / "bitnet_tp1", "-o", tmp_path / "x", "--to", "hf-bf16", "--pp", "2")
    assert r.exit_code == 2 and "--pp apply to --to nanotron only" in r.output
    r = run("convert", ntfx / "bitnet_tp1", "-o", tmp_path / "x", "--to", "hf-bf16", "--scale-granularity", "row")
    assert r.exit_code == 2 and "--scale-granularity must be one of fused, per-projection" in r.output
    with pytest.raises(UsageError, match="--scale-granularity applies to --to hf-bf16 only"):
        check_options("nanotron", "fused", 1, 1, None)
    r = run("convert", tmp_path, "-o", tmp_path / "x", "--to", "hf-bf16")
    assert r.exit_code == 2 and "--to hf-bf16 converts a Nanotron checkpoint" in r.stderr, r.output
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------------------------------- YAML


def test_yaml_subset_matches_pyyaml(ntfx):
    yaml = pytest.importorskip("yaml")
    for name in NAMES:
        text = (ntfx / name / "config.yaml").read_text()
        assert yamlish.load(text) == yaml.safe_load(text)
        assert yamlish.dump(yaml.safe_load(text)) == text
    data = {"a": [1, 2.5, {"b": None, "c": [True, "x y"]}, []], "d": {}, "e": "null", "f": 1e-5, "g": "it's",
            "i": [{"z": 1}], "j": 1e20, "l": "", "m": "1.0", "n": "/abs/path-x_y.z"}
    assert yaml.safe_load(yamlish.dump(data)) == data
    assert yamlish.load(yaml.dump(data)) == data


@pytest.mark.parametrize("name", ["bitnet_tp2", "llama_pp2_tied", "head_llama_tp2"])
def test_param_reads_rows_alone(ntfx, name):
    """`Param.read_rows` (rows gathered from the TP shards that hold them, row- and column-split) equals the rows of
    the whole parameter; so do a projection's latent rows (RoPE heads reordered around them)."""
    ck = open_nanotron(ntfx / name)
    for param in ck.params.values():
        whole = param.load()
        n = param.shape[0]
        for r0, r1 in ((0, n), (0, 1), (n - 1, n), (n // 3, n // 2 + 1), (1, n - 1)):
            if r0 < r1:
                assert torch.equal(param.read_rows(r0, r1).view(torch.int16), whole[r0:r1].view(torch.int16))
    for hf_name in ck._where:
        lat = ck.latent(hf_name)
        rows = lat.shape[0]
        for a, b in ((0, rows), (3, 5), (rows // 2 - 1, rows // 2 + 7), (rows - 1, rows)):
            assert torch.equal(ck.latent_rows(hf_name, a, b).view(torch.int16), lat[a:b].view(torch.int16))


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", ["bitnet_tp2", "head_llama_tp2", "llama_pp2_tied", "master", "master-bf16",
                                  "packed", "ternary"])
def test_convert_in_row_blocks_like_whole(ntfx, models, tmp_path, monkeypatch, case):
    """`convert` both ways with one block per parameter and with a block per row (RoPE head) give the same bytes and
    warnings: passthrough rows padded, fused masters cut at part and head boundaries, their per-projection code
    comparison made block by block, lifted codes with a running non-zero count."""
    from bitconv import api, quant
    from bitconv.sinks import hf as hf_sink

    kw: dict = {}
    if case in ("master", "master-bf16", "packed", "ternary"):
        src = models("llama-bitnet")
        kw = {"tp": 2, "make_vocab_size_divisible_by": 48}
        if case == "master-bf16":
            src = open_source(src, "bfloat16")
        elif case == "packed":
            api.pack(src, tmp_path / "packed", to="hf")
            src = tmp_path / "packed"
        elif case == "ternary":
            api.quantize(src, tmp_path / "ternary")
            src = tmp_path / "ternary"
    else:
        src = ntfx / case

    def convert(tag: str) -> dict:  # into the same folders each time: config.yaml names its own path
        out = {}
        rep = nc.to_nanotron(src, tmp_path / "nt", overwrite=True, **kw)
        out["nt"], out["nt-warnings"] = _tree(rep.out), rep.extra["warnings"]
        if case in NAMES:
            for purpose in ("release", "training") if case.startswith("bitnet") else (None,):
                out[purpose] = _tree(nc.to_hf(src, tmp_path / "hf", purpose=purpose, overwrite=True).out)
        return out

    whole = convert("whole")
    monkeypatch.setattr(nc, "ROW_BLOCK_BYTES", 1)
    monkeypatch.setattr(hf_sink, "ROW_BLOCK_BYTES", 1)
    monkeypatch.setattr(quant, "BLOCK_ELEMS", 997)
    blocks = convert("blocks")
    assert blocks.keys() == whole.keys()
    for key in whole:
        assert blocks[key] == whole[key], key
