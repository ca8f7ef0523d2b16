"""Benchmark: `bitconv pack --to hf` and `bitconv quantize` on a synthetic BitNet 2B4T-shaped bf16 master.

Shapes of microsoft/bitnet-b1.58-2B-4T: hidden 2560, intermediate 6912, 30 layers, 20 heads, 5 kv heads,
vocab 128256, untied here (2.7 B parameters, 5.5 GB of bf16). Targets on 2 cores (issue 2): pack --to hf <= 10 s wall
and <= 1.5 GB peak RSS; issue 17: pack --to gguf iq2_bn <= 5 s, iq1_bn <= 7 s, <= 1 GB peak RSS.

    python benchmarks/bench_2b4t.py [--workdir DIR] [--keep] [--runs N] [--threads 2] [--only iq2_bn,iq1_bn]

Each command runs in a fresh subprocess (`python -m bitconv ...`); wall time is measured around it, CPU time is the
child's user + system time (on a shared machine wall time includes waiting for a core), and peak RSS is the child's
ru_maxrss. The page cache is warm after generation (the file was just written), as it is for a user
converting a model they just downloaded; a cold-cache figure depends on the disk, not on bitconv.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# torch and bitconv are imported inside the functions that need them: the `--measure` process that forks each
# command must stay small, because Linux carries ru_maxrss across fork+exec into the measured child.

H, FF, L, NH, NKV, V = 2560, 6912, 30, 20, 5, 128256
HD = H // NH


def tensor_shapes() -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,),
                                          "lm_head.weight": (V, H)}
    for i in range(L):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (H,), p + "post_attention_layernorm.weight": (H,),
            p + "self_attn.q_proj.weight": (NH * HD, H), p + "self_attn.k_proj.weight": (NKV * HD, H),
            p + "self_attn.v_proj.weight": (NKV * HD, H), p + "self_attn.o_proj.weight": (H, NH * HD),
            p + "self_attn.attn_sub_norm.weight": (H,), p + "mlp.gate_proj.weight": (FF, H),
            p + "mlp.up_proj.weight": (FF, H), p + "mlp.down_proj.weight": (H, FF),
            p + "mlp.ffn_sub_norm.weight": (FF,),
        })
    return shapes


def generate(folder: Path) -> int:
    """Stream a synthetic master to folder/model.safetensors, one tensor in memory at a time."""
    import torch

    from bitconv.safetensors_io import OutEntry, SafetensorsWriter

    folder.mkdir(parents=True)
    shapes = tensor_shapes()
    writer = SafetensorsWriter(folder / "model.safetensors",
                               [OutEntry(n, "BF16", s) for n, s in shapes.items()], {"format": "pt"})
    g = torch.Generator().manual_seed(2025)
    for name, shape in shapes.items():
        if len(shape) == 1:
            t = 1 + 0.2 * torch.randn(shape, generator=g)
        else:
            t = torch.randn(shape, generator=g) * (0.5 if "embed" in name or "lm_head" in name else 0.02)
        writer.write(name, t.bfloat16().view(torch.int16).numpy())
    writer.close()
    config = {"architectures": ["BitNetForCausalLM"], "model_type": "bitnet", "hidden_act": "relu2",
              "hidden_size": H, "intermediate_size": FF, "num_hidden_layers": L, "num_attention_heads": NH,
              "num_key_value_heads": NKV, "vocab_size": V, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
              "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    _add_tokenizer(folder)
    return sum(p.stat().st_size for p in folder.iterdir())


def _add_tokenizer(folder: Path) -> None:
    """GGUF output embeds the tokenizer: borrow the tiny byte-level BPE one (its ids fit in the 128256 vocab)."""
    import shutil

    from bitconv import tiny

    with tempfile.TemporaryDirectory() as tmp:
        src = tiny.make_tiny(Path(tmp) / "tok", "bitnet-2b4t")
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
            shutil.copyfile(src / name, folder / name)


def warm_cache(*folders: Path) -> int:
    """Read every file once so that the measurements do not depend on what else evicted the page cache."""
    n = 0
    for folder in folders:
        for f in sorted(folder.iterdir()):
            with open(f, "rb") as fh:
                while chunk := fh.read(64 << 20):
                    n += len(chunk)
    return n


def timed(args: list[str], threads: int) -> tuple[float, float, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bitconv", *args], check=True, env=env, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # ru_maxrss of children is a running maximum; the first run dominates otherwise
    peak_kib = max(after.ru_maxrss, before.ru_maxrss)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return wall, peak_kib / 1024, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default=None, help="comma-separated labels to run (hf, quantize, i2_s, tq2_0, iq2_bn, "
                    "iq1_bn); default all")
    a = ap.parse_args()
    only = set(a.only.split(",")) if a.only else None
    work = a.workdir or Path(tempfile.mkdtemp(prefix="bitconv-bench-"))
    master = work / "master"
    try:
        if master.exists() and not (master / "tokenizer.json").exists():
            _add_tokenizer(master)
        if not master.exists():
            t0 = time.perf_counter()
            size = generate(master)
            print(f"generated {size / 1e9:.2f} GB synthetic 2B4T master in {time.perf_counter() - t0:.1f} s")
        n_params = sum(math.prod(s) for s in tensor_shapes().values())
        for label, args in (("pack --to hf", ["pack", str(master), "--to", "hf", "-o", str(work / "packed"),
                                              "--overwrite"]),
                            ("quantize", ["quantize", str(master), "-o", str(work / "ternary"), "--overwrite"]),
                            *((f"pack gguf {t}", ["pack", str(master), "--to", "gguf", "--type", t, "-o",
                                                  str(work / f"gguf-{t}" / "model.gguf"), "--overwrite"])
                              for t in ("i2_s", "tq2_0", "iq2_bn", "iq1_bn"))):
            if only is not None and label.split()[-1] not in only:
                continue
            for _ in range(a.runs):
                warm_cache(master)
                # each measurement in its own process tree so ru_maxrss is this command's peak
                out = subprocess.run([sys.executable, __file__, "--measure", json.dumps(args), str(a.threads)],
                                     capture_output=True, text=True, check=True, cwd=ROOT).stdout
                wall, rss, cpu = json.loads(out)
                print(f"{label:14s} wall {wall:6.2f} s  cpu {cpu:6.2f} s  {n_params / wall / 1e6:8.1f} M params/s  "
                      f"peak RSS {rss:7.1f} MiB")
    finally:
        if not a.keep and a.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--measure":
        print(json.dumps(timed(json.loads(sys.argv[2]), int(sys.argv[3]))))
    else:
        main()
