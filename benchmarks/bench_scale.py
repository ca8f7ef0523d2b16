"""Benchmark: memory and speed at 2B4T, 8B and 70B shapes, with a naive torch packer side by side.

    python benchmarks/bench_scale.py --size 2b4t|8b|70b [--routes hf,i2_s,tq2_0,tq1_0,tl1,tl2,iq2_bn,iq1_bn,f16,
                                                               quantize,unpack,roundtrip,parity,
                                                               nanotron,nt-hf,nt-i2_s]
                                     [--arch bitnet|llama] [--layers N] [--workdir DIR] [--keep] [--no-baseline]
                                     [--pattern] [--repeat N]

* 2b4t: hidden 2560 / ffn 6912 / 30 layers / vocab 128256, untied (2.7 B params, 5.5 GB bf16), random data.
* 8b:   Llama-3-8B shapes, 4096 / 14336 / 32 layers / vocab 128256 (8.0 B params, 16 GB), random data generated
        streaming (one tensor in memory at a time; values tiled from a 64 Mi-element random pool).
* 70b:  Llama-3-70B shapes, 8192 / 28672 / 80 layers / vocab 128256 (70.6 B params, 141 GB): a sparse file whose
        weights are holes (no disk space, no generation time). All-zero projections take bitconv's ordinary path
        (mean |w| = 0 -> scale 1e-5, all codes 0; TQ blocks store d = 0); `--pattern` writes one random row into
        every tensor (a few MB of real data) so the scales and codes are not all zero.

`roundtrip` and `parity` time `bitconv verify` of the `hf` route's output against the master (`--no-parity`, and
the full verify with parity on its default 2 x 64 tokens); list them, and `unpack`, after `hf`. The Nanotron routes
need `--arch llama` (a Llama-architecture BitNet master, as nanotron's PR #180 exports: nanotron has no sub-norms):
`nanotron` converts the master to a Nanotron checkpoint (TP=1), then `nt-hf` converts it back to an HF bf16 master
and `nt-i2_s` packs it to GGUF I2_S (list them after `nanotron`). Each route runs in a fresh process; before it,
the disk is synced (the previous route's writes are flushed outside this route's timing) and a repeat's earlier
output is deleted; wall time around it, CPU time (user and sys apart: sys is the kernel's page-cache and page-fault
work, which moves the walls on a virtual machine), peak RSS = the child's ru_maxrss (measured through a small
launcher so the parent's own peak is not inherited), params/s = parameters / wall, and the 1-minute load average
before it.
Before each route, `--dry-run --json` gives bitconv's planned peak, printed next to the measured one. The baseline
is the naive torch packer (transformers' recipe on whole tensors: load each shard whole, w.float().abs().mean(),
pack, save at the end); it is skipped when it would need more than half of the available memory.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

SIZES = {  # hidden, ffn, layers, heads, kv heads, vocab, tied
    "2b4t": (2560, 6912, 30, 20, 5, 128256, False),
    "8b": (4096, 14336, 32, 32, 8, 128256, False),
    "70b": (8192, 28672, 80, 64, 8, 128256, False),
}
SHARD_BYTES = 5 * 1000**3
ROUTES = {
    "hf": ["pack", "{src}", "--to", "hf", "-o", "{out}/hf", "--overwrite"],
    "quantize": ["quantize", "{src}", "-o", "{out}/ternary", "--overwrite"],
    **{t: ["pack", "{src}", "--to", "gguf", "--type", t, "-o", "{out}/" + t + ".gguf", "--overwrite"]
       for t in ("i2_s", "tq2_0", "tq1_0", "tl1", "tl2", "iq2_bn", "iq1_bn", "f16")},
    "unpack": ["unpack", "{out}/hf", "-o", "{out}/unpacked", "--overwrite"],  # after `hf`
    # --arch llama (a Llama-architecture BitNet master: nanotron holds no sub-norms): HF -> Nanotron -> HF
    "nanotron": ["convert", "{src}", "--to", "nanotron", "-o", "{out}/nt", "--overwrite"],
    "nt-hf": ["convert", "{out}/nt", "--to", "hf-bf16", "-o", "{out}/nt-hf", "--overwrite"],  # after `nanotron`
    "nt-i2_s": ["pack", "{out}/nt", "--to", "gguf", "--type", "i2_s", "-o", "{out}/nt.gguf", "--overwrite"],
}
KEPT_BY = {"hf": "hf", "nanotron": "nt"}  # route -> its output that later routes read
KEPT = tuple(KEPT_BY.values())
READS = {"hf": ("unpack", "roundtrip", "parity"), "nt": ("nt-hf", "nt-i2_s")}  # kept output -> the routes reading it
VERIFY = {"roundtrip": "--no-parity", "parity": ""}  # verify the `hf` route's output against the master


def dims(size: str, layers: int | None = None) -> tuple:
    h, ff, n_layers, nh, nkv, v, tied = SIZES[size]
    return h, ff, layers or n_layers, nh, nkv, v, tied


def shapes(size: str, arch: str = "bitnet", layers: int | None = None) -> dict[str, tuple[int, ...]]:
    h, ff, n_layers, nh, nkv, v, tied = dims(size, layers)
    hd = h // nh
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
    if not tied:
        out["lm_head.weight"] = (v, h)
    for i in range(n_layers):
        p = f"model.layers.{i}."
        out.update({p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                    p + "self_attn.q_proj.weight": (nh * hd, h), p + "self_attn.k_proj.weight": (nkv * hd, h),
                    p + "self_attn.v_proj.weight": (nkv * hd, h), p + "self_attn.o_proj.weight": (h, nh * hd),
                    p + "self_attn.attn_sub_norm.weight": (h,), p + "mlp.gate_proj.weight": (ff, h),
                    p + "mlp.up_proj.weight": (ff, h), p + "mlp.down_proj.weight": (h, ff),
                    p + "mlp.ffn_sub_norm.weight": (ff,)})
        if arch == "llama":
            del out[p + "self_attn.attn_sub_norm.weight"], out[p + "mlp.ffn_sub_norm.weight"]
    return out


def config(size: str, arch: str = "bitnet", layers: int | None = None) -> dict:
    h, ff, n_layers, nh, nkv, v, tied = dims(size, layers)
    if arch == "llama":  # transformers' Llama with BitNet online quantization (what nanotron's PR #180 exports)
        return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu", "hidden_size": h,
                "intermediate_size": ff, "num_hidden_layers": n_layers, "num_attention_heads": nh,
                "num_key_value_heads": nkv, "vocab_size": v, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
                "rope_theta": 500000.0, "tie_word_embeddings": tied, "torch_dtype": "bfloat16",
                "quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                        "quantization_mode": "online"}}
    return {"architectures": ["BitNetForCausalLM"], "model_type": "bitnet", "hidden_act": "relu2", "hidden_size": h,
            "intermediate_size": ff, "num_hidden_layers": n_layers, "num_attention_heads": nh,
            "num_key_value_heads": nkv, "vocab_size": v, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0, "tie_word_embeddings": tied, "torch_dtype": "bfloat16"}


def generate(folder: Path, size: str, sparse: bool, pattern: bool, arch: str = "bitnet",
             layers: int | None = None) -> None:
    """Shards of <= 5 GB with an index; random values (tiled from a pool) or holes (sparse)."""
    import numpy as np
    import torch

    from bitconv.formats.safetensors import OutEntry, SafetensorsWriter
    from bitconv.sinks.hf import assign_shards, shard_names, write_json

    folder.mkdir(parents=True)
    entries = [OutEntry(n, "BF16", s) for n, s in shapes(size, arch, layers).items()]
    groups = assign_shards(entries, SHARD_BYTES)
    names = shard_names(len(groups))
    g = torch.Generator().manual_seed(2025)
    pool = None if sparse else (torch.randn(1 << 26, generator=g) * 0.02).bfloat16().view(torch.int16).numpy()
    wmap = {}
    for fname, group in zip(names, groups):
        w = SafetensorsWriter(folder / fname, group, {"format": "pt"})
        for e in group:
            wmap[e.name] = fname
            off, nbytes = w._where[e.name]
            if sparse:
                w._take(e.name, nbytes)
                if pattern:
                    row = (torch.randn(e.shape[-1], generator=g) * 0.02).bfloat16().view(torch.int16).numpy()
                    w.write_at(off, row)
                continue
            if len(e.shape) == 1:
                w.write(e.name, (1 + 0.2 * torch.randn(e.shape, generator=g)).bfloat16().view(torch.int16).numpy())
                continue
            n = math.prod(e.shape)
            base = w.reserve(e.name, nbytes)
            start = int(torch.randint(0, pool.size, (1,), generator=g))
            done = 0
            while done < n:  # tile the pool from a random start: bounded memory, no 8 B randn calls
                k = min(n - done, pool.size - start)
                w.write_at(base + 2 * done, pool[start:start + k])
                done += k
                start = 0
        if sparse:
            os.truncate(w.path, w.size)
            w._pending.clear()
        w.close()
    if len(groups) > 1:
        total = sum(e.nbytes for e in entries)
        write_json(folder / "model.safetensors.index.json",
                   {"metadata": {"total_size": total}, "weight_map": dict(sorted(wmap.items()))})
    (folder / "config.json").write_text(json.dumps(config(size, arch, layers), indent=2))
    from bench_2b4t import _add_tokenizer

    _add_tokenizer(folder)
    del np


def child_peak(argv: list[str], threads: int) -> tuple[float, float, float, float]:
    """Run argv, return (wall s, user s, sys s, peak RSS MiB) of that child alone."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    code = ("import json,os,resource,subprocess,sys,time;t=time.perf_counter();"
            "subprocess.run(json.loads(sys.argv[1]),check=True,stdout=subprocess.DEVNULL);"
            "r=resource.getrusage(resource.RUSAGE_CHILDREN);"
            "print(json.dumps([time.perf_counter()-t,r.ru_utime,r.ru_stime,r.ru_maxrss/1024]))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(argv)], env=env, cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return tuple(json.loads(out.strip().splitlines()[-1]))


def warm_order(threads: int) -> str:
    """Fill bitconv's cache of torch's reduction order for the routes' environment (`bitconv.torchsum`), so the
    timed runs measure every run after a machine's first: that first one imports torch once to learn the order."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    code = ("import sys,time;t=time.perf_counter();from bitconv import torchsum;o=torchsum.reduction_order();"
            "print(f'torch reduction order (threads, lanes) {o}: cached in {torchsum.cache_dir()} (this run imported "
            "torch: {\"torch\" in sys.modules}, {time.perf_counter()-t:.1f} s)')")
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout.strip()


def planned_peak(args: list[str]) -> float:
    """bitconv's planned peak (MiB) from `--dry-run --json`; nan for a command without a dry run."""
    r = subprocess.run([sys.executable, "-m", "bitconv", *args, "--dry-run", "--json"], cwd=ROOT,
                       capture_output=True, text=True)
    if r.returncode:
        return float("nan")
    return json.loads(r.stdout)["peak_memory_bytes"] / 2**20


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=SIZES, default="2b4t")
    ap.add_argument("--routes", default="hf,i2_s,tq2_0")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--pattern", action="store_true", help="70b: one random row per tensor instead of all holes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--arch", choices=("bitnet", "llama"), default="bitnet",
                    help="llama: a Llama-architecture BitNet master (no sub-norms), for the nanotron routes")
    ap.add_argument("--layers", type=int, default=None,
                    help="fewer decoder layers, same tensor shapes (the peak depends on the shapes, not the count): "
                         "for routes whose output would not fit the disk (70B to Nanotron writes 141 GB of bf16)")
    ap.add_argument("--repeat", type=int, default=1, help="run the route list N times; print medians")
    a = ap.parse_args()
    work = a.workdir or Path(tempfile.mkdtemp(prefix=f"bitconv-bench-{a.size}-"))
    sparse = a.size == "70b"
    src = work / (("master-pattern" if a.pattern else "master") + ("-llama" if a.arch == "llama" else "")
                  + (f"-{a.layers}l" if a.layers else ""))
    n_params = sum(math.prod(s) for s in shapes(a.size, a.arch, a.layers).values())
    try:
        if not src.exists():
            t0 = time.perf_counter()
            generate(src, a.size, sparse, a.pattern, a.arch, a.layers)
            print(f"generated {a.size} master ({n_params / 1e9:.2f} B params, "
                  f"{'sparse' if sparse else 'random'}) in {time.perf_counter() - t0:.1f} s")
        out = work / "out"
        out.mkdir(exist_ok=True)
        print(warm_order(a.threads))
        hf_wall = hf_cpu = None
        head = (f"{'route':10s} {'wall s':>8s} {'user s':>7s} {'sys s':>7s} {'M params/s':>11s} {'peak MiB':>9s} "
                f"{'planned MiB':>11s} {'load':>5s}")
        runs: dict[str, list[tuple[float, float, float, float]]] = {}
        plans: dict[str, float] = {}
        for rep in range(a.repeat):
            print(head if a.repeat == 1 else f"run {rep + 1} of {a.repeat}\n{head}")
            routes = a.routes.split(",")
            for route in routes:
                if route in VERIFY:  # checks the `hf` route's output (run `hf` first), no plan to compare with
                    args = ["verify", str(out / "hf"), "--ref", str(src), *VERIFY[route].split()]
                    plan = float("nan")
                else:
                    args = [x.format(src=src, out=out) for x in ROUTES[route]]
                    plan = plans[route] if route in plans else planned_peak(args)
                plans[route] = plan
                kept = out / KEPT_BY.get(route, "-")  # a repeat must not begin by deleting its own earlier output
                if kept.exists():
                    shutil.rmtree(kept)
                os.sync()  # the previous route's dirty pages are written back now, not during this route's timing
                load = os.getloadavg()[0]  # other jobs on the machine: walls are only comparable at similar loads
                wall, user, sys_s, rss = child_peak([sys.executable, "-m", "bitconv", *args], a.threads)
                runs.setdefault(route, []).append((wall, user, sys_s, rss))
                print(f"{route:10s} {wall:8.2f} {user:7.2f} {sys_s:7.2f} {n_params / wall / 1e6:11.1f} {rss:9.1f} "
                      f"{plan:11.1f} {load:5.1f}", flush=True)
                # keep the outputs later routes of this run read; delete the rest now, so that every route starts
                # after a delete: on a VM that reports free pages to its host (virtio-balloon free page reporting,
                # as here), writing into fresh pages costs up to ~3 s of sys time per 1.8 GB that pages just freed
                # do not, and only the route after a kept output would pay it
                later = routes[routes.index(route) + 1:]
                for f in out.iterdir():
                    if f.name not in KEPT or not any(r in later for r in READS.get(f.name, ())):
                        shutil.rmtree(f) if f.is_dir() else f.unlink()
        if a.repeat > 1:  # medians (wall: with its min-max), the largest peak
            print(f"median of {a.repeat} runs\n{'route':10s} {'wall s':>8s} {'(min-max)':>13s} {'user s':>7s} "
                  f"{'sys s':>7s} {'M params/s':>11s} {'peak MiB':>9s} {'planned MiB':>11s}")
            for route, rs in runs.items():
                wall, user, sys_s = (statistics.median(r[i] for r in rs) for i in range(3))
                lo, hi = min(r[0] for r in rs), max(r[0] for r in rs)
                print(f"{route:10s} {wall:8.2f} {f'({lo:.2f}-{hi:.2f})':>13s} {user:7.2f} {sys_s:7.2f} "
                      f"{n_params / wall / 1e6:11.1f} {max(r[3] for r in rs):9.1f} {plans[route]:11.1f}")
        if "hf" in runs:
            hf_wall = statistics.median(r[0] for r in runs["hf"])
            hf_cpu = statistics.median(r[1] + r[2] for r in runs["hf"])
        if not a.no_baseline:
            need = 2.6 * max(f.stat().st_size for f in src.glob("*.safetensors"))
            if need > mem_available() / 2:
                print(f"naive      skipped: needs about {need / 2**30:.1f} GiB, more than half of what is free")
            else:
                wall, user, sys_s, rss = child_peak([sys.executable, str(ROOT / "benchmarks" / "naive_pack.py"),
                                                     str(src), str(out / "naive")], a.threads)
                cpu = user + sys_s
                print(f"{'naive hf':10s} {wall:8.2f} {user:7.2f} {sys_s:7.2f} {n_params / wall / 1e6:11.1f} "
                      f"{rss:9.1f}")
                if hf_wall is not None:
                    print(f"naive / bitconv `pack --to hf`: {wall / hf_wall:.1f}x wall, {cpu / hf_cpu:.1f}x CPU")
    finally:
        if not a.keep and a.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
