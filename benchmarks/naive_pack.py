"""The naive torch packer the benchmark compares with: transformers' recipe applied to whole tensors.

    python benchmarks/naive_pack.py SRC OUT

Loads each shard whole (safetensors.torch.load_file), ternarizes each projection with w.float().abs().mean(),
packs four codes per byte along dim 0 like transformers' pack_weights, keeps every output tensor in memory and saves
one file at the end: what a short script would do.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def pack(q: torch.Tensor) -> torch.Tensor:
    u = (q + 1).to(torch.uint8)
    r = u.shape[0] // 4
    out = torch.zeros((r, *u.shape[1:]), dtype=torch.uint8)
    for i in range(4):
        out |= u[i * r:(i + 1) * r] << (2 * i)
    return out


def main(src: Path, out: Path) -> None:
    result: dict[str, torch.Tensor] = {}
    for f in sorted(src.glob("*.safetensors")):
        for name, w in load_file(f).items():
            if any(p in name for p in PROJ):
                wf = w.float()
                m = wf.abs().mean().clamp(min=1e-5)
                q = (wf / m).round().clamp(-1, 1)
                result[name] = pack(q)
                result[name.replace(".weight", ".weight_scale")] = m.reshape(1).bfloat16()
            else:
                result[name] = w
    out.mkdir(parents=True, exist_ok=True)
    save_file(result, out / "model.safetensors", {"format": "pt"})


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
