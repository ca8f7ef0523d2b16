"""`bitconv demo`: the main job end to end on a built-in tiny model, with a check of every artifact it makes.

quantize -> pack (both linear classes, from the master and from the ternary checkpoint) -> re-pack between linear
classes -> unpack -> pack --to gguf (every GGUF layout of the registry, from the ternary checkpoint) -> inspect, then
every artifact's ternary tensors are decoded and compared with the ternary checkpoint: codes must be identical and
scales equal within the format's storage precision (each layout's `scale_dtype`: float32, fp16, or bf16 for HF).
Some runtimes need more in_features than the tiny model has (ik_llama.cpp's CPU matmul: 512 for two of its types):
those files are checked here but would abort there.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bitconv import pipeline, tiny
from bitconv.describe import describe
from bitconv.layouts import hf_layouts, layout_class
from bitconv.quant import ternarize
from bitconv.sinks import gguf as gguf_sink
from bitconv.sources import open_source
from bitconv.verify import verify

BF16_REL = 2.0**-8  # bf16 keeps 8 significant bits: one rounding is within 2^-8 relative
FP16_REL = 2.0**-11  # one fp16 rounding is within 2^-11 relative
_SCALE_REL = {"F32": 0.0, "F16": FP16_REL}  # a stored scale's precision -> how exactly it comes back
# GGUF types the demo packs (every packed --type), and how exactly each stores the scale (its layout's scale_dtype)
GGUF_STEPS = {t: _SCALE_REL[layout_class(target.layout).scale_dtype]
              for t, target in gguf_sink.GGUF_TARGETS.items() if target.layout}


@dataclass
class DemoRow:
    step: str
    artifact: str
    kind: str
    layout: str
    bytes: int
    bits_per_weight: float | None
    check: str
    ok: bool


def _compare(reference: Path, artifact: Path, rel_tol: float) -> tuple[bool, str]:
    ref, art = open_source(reference), open_source(artifact)
    worst, bad = 0.0, []
    for t in ref.ternary_tensors():
        a, b = t.ternary(), art.tensors[t.name].ternary()
        if not np.array_equal(a.codes, b.codes):
            bad.append(t.name)
        worst = max(worst, abs(float(b.scale) / float(a.scale) - 1.0))
    if bad:
        return False, f"codes differ in {len(bad)} tensor(s), e.g. {bad[0]}"
    if worst > rel_tol:
        return False, f"scale off by {worst:.2e} (> {rel_tol:.1e})"
    return True, f"codes identical, scale within {worst:.1e}"


def _check_unpacked(packed: Path, unpacked: Path) -> tuple[bool, str]:
    """Online re-ternarization of the unpacked weights (what transformers does) gives the packed codes and scale."""
    src, out = open_source(packed), open_source(unpacked)
    worst = 0.0
    for t in src.ternary_tensors():
        want = t.ternary()
        got = ternarize(out.load_passthrough(t.name))
        if not np.array_equal(want.codes, got.codes):
            return False, f"{t.name}: online re-ternarization changes the codes"
        worst = max(worst, abs(float(got.scale) / float(want.scale) - 1))
    ok = worst <= BF16_REL
    return ok, f"online re-ternarization gives the same codes, scale within {worst:.1e}"


def run_demo(workdir: str | Path | None = None, arch: str = "bitnet-2b4t",
             on_step: Callable[[str], None] | None = None) -> list[DemoRow]:
    """Run the demo in `workdir` (a fresh temporary folder when None, removed afterwards)."""
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="bitconv-demo-") as tmp:
            return run_demo(Path(tmp), arch, on_step)
    w = Path(workdir)
    say = on_step or (lambda s: None)
    say("building a tiny bf16 master")
    master = tiny.make_tiny(w / "master", arch, hidden_size=512)  # K = 512: a tiling bitnet.cpp's LUT kernels run
    hf = hf_layouts()  # linear class -> layout name, which names the folder
    tern, auto, bitl, repacked, unpacked = (w / n for n in (
        "ternary", hf["autobitlinear"], hf["bitlinear"], "hf-repacked", "hf-bf16"))
    steps: list[tuple[str, Path, Callable[[], object], Callable[[], tuple[bool, str]]]] = [
        ("quantize", tern, lambda: pipeline.quantize(master, tern), lambda: (True, "written")),
        ("pack --to hf (autobitlinear)", auto, lambda: pipeline.pack_hf(master, auto),
         lambda: _compare(tern, auto, BF16_REL)),
        ("pack --to hf --linear-class bitlinear (from ternary)", bitl,
         lambda: pipeline.pack_hf(tern, bitl, linear_class="bitlinear"), lambda: _compare(tern, bitl, BF16_REL)),
        ("re-pack autobitlinear (same class)", repacked, lambda: pipeline.pack_hf(auto, repacked),
         lambda: _same_weights(auto, repacked)),
        ("re-pack bitlinear -> autobitlinear", w / "hf-converted", lambda: pipeline.pack_hf(bitl, w / "hf-converted"),
         lambda: _compare(tern, w / "hf-converted", 2 * BF16_REL)),  # two bf16 roundings of the scale
        ("unpack", unpacked, lambda: pipeline.unpack_hf(auto, unpacked), lambda: _check_unpacked(auto, unpacked)),
        *(_gguf_step(tern, w, t, tol) for t, tol in GGUF_STEPS.items()),
    ]
    rows = [_row("master", master, True, "tiny bf16 master generated")]
    for name, out, run, check in steps:
        say(name)
        run()
        ok, msg = check()
        rows.append(_row(name, out, ok, msg))
    say("inspect")
    d = describe(auto)
    ok = d.zero_fraction is not None and 0.0 < d.zero_fraction < 1.0
    rows.append(_row("inspect", auto, ok, f"{d.zero_fraction:.1%} zero codes, {d.scale_stats['count']} scales in "
                     f"[{d.scale_stats['min']:.4g}, {d.scale_stats['max']:.4g}]"))
    say("verify")
    ggufs = sorted(w.glob("gguf-*/model-*.gguf"))
    rows += [_verify_row(art, master) for art in (tern, auto, bitl, repacked, w / "hf-converted", unpacked, *ggufs)]
    return rows


def _verify_row(artifact: Path, master: Path) -> DemoRow:
    """`bitconv verify ARTIFACT --ref MASTER`: round trip + logit parity. (# issue 4)"""
    rep = verify(artifact, master)
    p = rep.parity.out_vs_ref
    msg = (f"round trip ok ({rep.roundtrip.compute}), logits top-1 {p.top1:.0%}, max |Δ| {p.rel_dlogit:.1%} of range"
           if rep.ok else rep.findings[0].message)
    return _row(f"verify {artifact.name}", artifact, rep.ok, msg)


def _gguf_step(tern: Path, w: Path, gguf_type: str, tol: float) \
        -> tuple[str, Path, Callable[[], object], Callable[[], tuple[bool, str]]]:
    out = w / f"gguf-{gguf_type}" / f"model-{gguf_type}.gguf"  # own folder: TL writes kernel_config.ini beside it
    return (f"pack --to gguf --type {gguf_type} (from ternary)", out,
            lambda: gguf_sink.pack_gguf(tern, out, gguf_type), lambda: _compare(tern, out, tol))


def _same_weights(a: Path, b: Path) -> tuple[bool, str]:
    same = (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    return same, "bytes identical to the direct pack" if same else "bytes differ from the direct pack"


def _row(step: str, path: Path, ok: bool, check: str) -> DemoRow:
    d = describe(path, stats=False)
    return DemoRow(step, path.name, d.kind, d.layout or "-", d.total_bytes, d.ternary_bits_per_weight, check, ok)
