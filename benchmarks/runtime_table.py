"""Measure `verify --runtime llama.cpp` on the tiny fixtures: for every arch x GGUF type that upstream llama.cpp
loads, max |Δlogit| (% of the oracle's logit range) and top-1 agreement of llama.cpp against both oracles, plus the
files that must fail (a relu2 model in the SiLU `bitnet` graph). Prints a markdown table (docs/runtime.md).

    python benchmarks/runtime_table.py [--workdir DIR]

Needs llama-cpp-python (pip install 'bitconv[llamacpp]').
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CASES = [(arch, garch, t) for arch, garch in (("1bitllm", None), ("llama-bitnet", None), ("bitnet-2b4t", "bitnet"))
         for t in ("tq1_0", "tq2_0", "f16", "bf16", "f32")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    from bitconv import tiny
    from bitconv.sinks.gguf import pack_gguf
    from bitconv.sources import open_source
    from bitconv.verify.parity import default_tokens
    from bitconv.verify.runtime import LoadFailure, runtime_check

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bitconv-runtime-"))
    masters: dict[str, Path] = {}
    print("| model (HF arch) | GGUF arch | type | vs reference: max \\|Δ\\| / range | top-1 | vs emulation: max "
          "\\|Δ\\| / range | top-1 | verdict |")
    print("|---|---|---|---|---|---|---|---|")
    for arch, garch, gtype in CASES:
        if arch not in masters:
            masters[arch] = tiny.make_tiny(work / arch, arch)
        out = work / f"{arch}-{gtype}.gguf"
        if not out.exists():
            pack_gguf(masters[arch], out, gtype, arch=garch, force=garch == "bitnet" and arch == "bitnet-2b4t")
        out_ck, ref_ck = open_source(out), open_source(masters[arch])
        rep = runtime_check(out_ck, ref_ck, default_tokens(ref_ck.config["vocab_size"]))
        if isinstance(rep, LoadFailure):
            print(f"| {arch} | {garch or '-'} | {gtype} | {rep.message()} | | | | load failed |")
            continue
        a, b = rep.reference.metrics, rep.emulation.metrics
        verdict = "pass" if rep.ok else "FAIL: " + "; ".join(rep.diagnosis)
        print(f"| {arch} | {rep.arch} | {gtype.upper()} | {a.rel_dlogit:.3%} | {a.top1:.1%} | {b.rel_dlogit:.4%} | "
              f"{b.top1:.1%} | {verdict} |", flush=True)


if __name__ == "__main__":
    main()
