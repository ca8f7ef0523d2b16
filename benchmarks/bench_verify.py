"""Benchmark: `bitconv verify` on the synthetic BitNet 2B4T-shaped checkpoint (benchmarks/bench_2b4t.py's generator).

Targets on 2 cores (issue 4): round-trip verification of all 210 ternary tensors (+ passthrough) <= 20 s wall and
<= 2 GB peak RSS; logit parity (REF online, OUT, plain master; layer by layer from the lazy sources) for 2 x 64
tokens <= 90 s and <= 3 GB.

    python benchmarks/bench_verify.py [--workdir DIR] [--keep] [--threads 2] [--only roundtrip|parity]

OUT is `bitconv pack --to hf` (autobitlinear) of the master. Each measurement runs in a fresh process; wall time is
taken around the library call (imports excluded, reported separately) and peak RSS is the process's VmHWM.
"""

from __future__ import annotations

import argparse
import json
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
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_2b4t import generate, warm_cache  # noqa: E402

TASKS = ("roundtrip", "parity")


def measure(task: str, out: str, master: str) -> dict:
    """Run one task in this process; wall time of the call and this process's peak RSS."""
    t0 = time.perf_counter()
    from bitconv.sources import open_source
    from bitconv.verify.parity import default_tokens, parity
    from bitconv.verify.reference import RefConfig
    from bitconv.verify.roundtrip import roundtrip

    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    out_ck, ref_ck = open_source(out), open_source(master)
    if task == "roundtrip":
        rep = roundtrip(out_ck, ref_ck)
        result = {"ok": rep.ok, "ternary": rep.n_ternary, "tensors": len(rep.tensors), "compute": rep.compute}
    else:
        ids = default_tokens(RefConfig.from_hf(ref_ck.config).vocab)
        rep = parity(out_ck, ref_ck, ids)
        m = rep.out_vs_ref
        result = {"ok": rep.ok, "tokens": list(ids.shape), "rel_dlogit": m.rel_dlogit, "max_dlogit": m.max_dlogit,
                  "kl": m.mean_kl, "top1": m.top1, "top5": m.top5,
                  "out_vs_floor_max_dlogit": rep.out_vs_floor.max_dlogit if rep.out_vs_floor else None,
                  "floor_vs_ref_top1": rep.floor_vs_ref.top1 if rep.floor_vs_ref else None,
                  "ref_vs_plain_top1": rep.ref_vs_plain.top1 if rep.ref_vs_plain else None}
    wall = time.perf_counter() - t0
    return {"task": task, "wall_s": wall, "import_s": t_import, "peak_rss_mib": peak_rss_mib(), **result}


def peak_rss_mib() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child spawned
    (vfork + exec) by a parent that once held the 5.5 GB generator's buffers would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(task: str, out: Path, master: Path, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    res = subprocess.run([sys.executable, __file__, "--measure", task, str(out), str(master)], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=TASKS, action="append")
    a = ap.parse_args()
    work = a.workdir or Path(tempfile.mkdtemp(prefix="bitconv-bench-verify-"))
    master, out = work / "master", work / "packed"
    try:
        if not master.exists():
            t0 = time.perf_counter()
            size = generate(master)
            print(f"generated {size / 1e9:.2f} GB synthetic 2B4T master in {time.perf_counter() - t0:.1f} s")
        if not out.exists():
            subprocess.run([sys.executable, "-m", "bitconv", "pack", str(master), "--to", "hf", "-o", str(out)],
                           check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        t0 = time.perf_counter()
        n = warm_cache(master, out)
        print(f"read {n / 1e9:.2f} GB of inputs once in {time.perf_counter() - t0:.1f} s (page cache warm, as after a "
              "download or a conversion)")
        for task in a.only or TASKS:
            r = run_child(task, out, master, a.threads)
            extra = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()
                     if k not in ("task", "wall_s", "import_s", "peak_rss_mib")}
            print(f"{task:10s} wall {r['wall_s']:6.2f} s (+{r['import_s']:.1f} s imports)  peak RSS "
                  f"{r['peak_rss_mib']:7.1f} MiB  {extra}")
    finally:
        if not a.keep and a.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--measure":
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
        print(json.dumps(measure(sys.argv[2], sys.argv[3], sys.argv[4])))
    else:
        main()
