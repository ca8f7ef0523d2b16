"""The real consumer: transformers loads what bitconv writes, with no missing or unexpected keys, and computes the
same model as the bf16 master it came from.

Bound for packed (offline) vs master (online) logits: both apply the same codes and the same absmean scale, but
offline computes `bf16(x̂ @ q) * bf16(scale)` while online computes `x̂ @ bf16(q / s)`: two different bf16
roundings of the scale and of each projection output (relative 2^-9 each) per linear, 7 linears per layer. Those
perturbations pass through the 8-bit absmax activation quantizer of the next linear, where a one-step flip of an
activation code is possible. Measured on these tiny models: max |Δ| <= 1.3 % of the logit range and top-1
agreement >= 95 %; the test bounds max |Δ| by 3 % of the range and top-1 agreement at 85 % (a wrong scale,
layout or permutation gives errors of the order of the range itself and ~1/vocab agreement).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bitconv import pipeline

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

REL_BOUND = 0.03
TOP1_MIN = 0.85


def load(folder: Path):
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.bfloat16, attn_implementation="eager", output_loading_info=True)
    for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not info.get(k), (k, info.get(k))
    return model.eval()


def logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return load(folder)(ids).logits.float()


def online_master(master: Path, dst: Path) -> Path:
    """The master with an autobitlinear/online config: transformers ternarizes it on the fly (the -bf16 repo)."""
    dst.mkdir()
    cfg = json.loads((master / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                  "quantization_mode": "online"}
    (dst / "config.json").write_text(json.dumps(cfg))
    for f in master.iterdir():
        if f.name != "config.json":
            os.symlink(f, dst / f.name)
    return dst


def token_ids(vocab: int, seed: int = 7) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(seed))


def assert_close_model(ref: torch.Tensor, got: torch.Tensor) -> None:
    rng = float(ref.max() - ref.min())
    err = float((ref - got).abs().max())
    top1 = float((ref.argmax(-1) == got.argmax(-1)).float().mean())
    assert err <= REL_BOUND * rng, f"max |Δlogit| {err:.4f} > {REL_BOUND} x range {rng:.3f}"
    assert top1 >= TOP1_MIN, f"top-1 agreement {top1:.2%}"


@pytest.mark.parametrize("arch,tied", [("bitnet-2b4t", True), ("bitnet-2b4t", False), ("llama-bitnet", None)])
@pytest.mark.parametrize("linear_class", ["autobitlinear", "bitlinear"])
def test_transformers_loads_packed_and_matches_master(models, tmp_path, arch, tied, linear_class):
    master = models(arch, tied=tied)
    ids = token_ids(json.loads((master / "config.json").read_text())["vocab_size"])
    ref = logits(online_master(master, tmp_path / "online"), ids)
    pipeline.pack_hf(master, tmp_path / "packed", linear_class=linear_class)
    model = load(tmp_path / "packed")
    kinds = {type(m).__name__ for m in model.modules()}
    assert ("AutoBitLinear" if linear_class == "autobitlinear" else "BitLinear") in kinds
    assert type(model.lm_head).__name__ == "Linear"
    with torch.no_grad():
        got = model(ids).logits.float()
    assert_close_model(ref, got)


def test_golden_logits_reproduced(golden_hf, tmp_path):
    """Our autobitlinear pack of the golden master gives transformers' reference logits exactly (eager)."""
    pipeline.pack_hf(golden_hf / "input", tmp_path / "packed")
    ref = load_file(golden_hf / "reference_logits.safetensors")
    got = logits(tmp_path / "packed", ref["input_ids"])
    assert torch.equal(got, ref["packed_autobitlinear_offline"])


def test_unpacked_loads_as_trainable_online_model(models, tmp_path):
    master = models("bitnet-2b4t")
    pipeline.pack_hf(master, tmp_path / "packed")
    pipeline.unpack_hf(tmp_path / "packed", tmp_path / "bf16")
    model = load(tmp_path / "bf16")
    lin = model.model.layers[0].self_attn.q_proj
    assert type(lin).__name__ == "AutoBitLinear" and lin.weight.dtype == torch.bfloat16
    assert lin.weight.requires_grad
    ids = token_ids(512)
    # loaded online, the unpacked checkpoint is the packed model (same codes, same scale): same bound as master
    with torch.no_grad():
        assert_close_model(logits(tmp_path / "packed", ids), model(ids).logits.float())
    out = model(ids).logits.float().sum()
    out.backward()  # trainable: gradients flow through the straight-through estimator
    assert lin.weight.grad is not None and torch.isfinite(lin.weight.grad).all()


def test_sharded_packed_output_loads(models, tmp_path):
    master = models("bitnet-2b4t", tied=False)
    rep = pipeline.pack_hf(master, tmp_path / "packed", max_shard_bytes=300_000)
    assert len(rep.files) > 1
    index = json.loads((tmp_path / "packed" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {f.name for f in rep.files}
    load(tmp_path / "packed")
