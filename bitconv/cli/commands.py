"""One function per command; each body translates options and calls the library."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bitconv import pipeline
from bitconv.cli import (ComputeOpt, JsonOpt, OutOpt, OverwriteOpt, ShardOpt, SrcArg, _report, app, handle_errors,
                         parse_size, render)
from bitconv.errors import UsageError
from bitconv.layouts import get_layout, list_layouts

PACK_TARGETS = ("hf",)


@app.command()
@handle_errors
def quantize(src: SrcArg, out: OutOpt, compute: ComputeOpt = "float32", overwrite: OverwriteOpt = False,
             max_shard_size: ShardOpt = "5GB", json: JsonOpt = False) -> None:
    """bf16 master -> bitconv ternary checkpoint (int8 codes + float32 absmean scales)."""
    with render.progress("quantize", not json) as cb:
        rep = pipeline.quantize(src, out, compute=compute, overwrite=overwrite,
                                max_shard_bytes=parse_size(max_shard_size), progress=cb)
    _report(rep, json)


@app.command()
@handle_errors
def pack(src: SrcArg, out: OutOpt,
         to: Annotated[str, typer.Option("--to", help="target format: hf")] = "hf",
         linear_class: Annotated[str, typer.Option("--linear-class", help="HF: autobitlinear (weight_scale = "
                                                   "scale, microsoft 2B-4T) or bitlinear (1/scale)")]
         = "autobitlinear",
         compute: ComputeOpt = "float32", overwrite: OverwriteOpt = False, max_shard_size: ShardOpt = "5GB",
         dry_run: Annotated[bool, typer.Option("--dry-run", help="print the plan, write nothing")] = False,
         json: JsonOpt = False) -> None:
    """Pack SRC into a deployable layout. Already-ternary sources are never re-quantized."""
    if to not in PACK_TARGETS:
        raise UsageError(f"--to {to!r} is not a known target; choose one of {', '.join(PACK_TARGETS)}")
    if dry_run:
        plan = pipeline.plan_pack_hf(pipeline.open_source(src), linear_class, compute)
        _print_plan(plan, json)
        return
    with render.progress("pack", not json) as cb:
        rep = pipeline.pack_hf(src, out, linear_class=linear_class, compute=compute, overwrite=overwrite,
                               max_shard_bytes=parse_size(max_shard_size), progress=cb)
    _report(rep, json)


def _print_plan(plan: pipeline.Plan, as_json: bool) -> None:
    rows = [[n, s.action, list(f.shape), f.dtype, f.nbytes] for s in plan.steps for n, f in s.outputs.items()]
    if as_json:
        render.print_json({"target": plan.target, "source_kind": plan.source.kind, "total_bytes": plan.total_bytes,
                           "tensors": [dict(zip(("name", "action", "shape", "dtype", "bytes"), r)) for r in rows]})
        return
    render.table(f"plan: {plan.source.kind} -> {plan.target}", ["tensor", "action", "shape", "dtype", "bytes"], rows)
    render.out.print(f"total {render.human_bytes(plan.total_bytes)}; nothing written (--dry-run)")


@app.command()
@handle_errors
def unpack(src: SrcArg, out: OutOpt, overwrite: OverwriteOpt = False, max_shard_size: ShardOpt = "5GB",
           json: JsonOpt = False) -> None:
    """HF packed / ternary -> bf16 checkpoint (codes * scale) with an online autobitlinear config."""
    with render.progress("unpack", not json) as cb:
        rep = pipeline.unpack_hf(src, out, overwrite=overwrite, max_shard_bytes=parse_size(max_shard_size),
                                 progress=cb)
    _report(rep, json)


@app.command()
@handle_errors
def inspect(src: SrcArg, json: JsonOpt = False,
            stats: Annotated[bool, typer.Option("--stats/--no-stats", help="decode ternary tensors for scale and "
                                                "zero-code statistics")] = True,
            tensors: Annotated[bool, typer.Option("--tensors/--no-tensors", help="per-tensor table")] = True) -> None:
    """What a checkpoint is: kind, layout, architecture, shapes, bits per weight, scale statistics."""
    from bitconv.describe import describe

    d = describe(src, stats=stats)
    if json:
        render.print_json(d.to_dict())
        return
    _print_description(d, tensors)


def _fmt(x: float | None, spec: str = ".4g") -> str:
    return "-" if x is None else format(x, spec)


def _print_description(d: object, show_tensors: bool) -> None:
    o = render.out
    o.print(f"[bold]{d.path}[/]", markup=True)
    o.print(f"  kind          {d.kind} — {d.kind_description}")
    o.print(f"  layout        {d.layout or '-'}" + (f" (codes made in {d.compute})" if d.compute else ""))
    o.print(f"  architecture  {d.architecture} ({d.family})")
    o.print("  config        " + ", ".join(f"{k}={v}" for k, v in d.config.items()))
    o.print(f"  parameters    {d.parameters:,} ({d.ternary_parameters:,} ternary)")
    o.print(f"  files         " + ", ".join(f"{f['name']} {render.human_bytes(f['bytes'])}" for f in d.files))
    o.print(f"  bits/weight   {d.bits_per_weight:.3f} overall, {_fmt(d.ternary_bits_per_weight, '.3f')} per "
            "ternary weight")
    if d.scale_stats:
        s = d.scale_stats
        o.print(f"  scales        n={s['count']} min={s['min']:.4g} median={s['median']:.4g} max={s['max']:.4g}")
        o.print(f"  zero codes    {d.zero_fraction:.2%}")
    if show_tensors:
        rows = [[t.name, t.shape, t.dtype, t.layout, t.bytes, _fmt(t.scale), _fmt(t.zero_fraction, ".3f")]
                for t in d.tensors]
        render.table("tensors", ["name", "shape", "dtype", "layout", "bytes", "scale", "zeros"], rows)


@app.command()
@handle_errors
def layouts(json: JsonOpt = False) -> None:
    """List the registered packed layouts."""
    rows = []
    for name in list_layouts():
        lay = get_layout(name)
        rows.append([name, lay.container, f"{lay.bits_per_weight((256, 256)):.3f}", lay.description])
    if json:
        render.print_json([dict(zip(("name", "container", "bits_per_weight_256x256", "description"), r))
                           for r in rows])
        return
    render.table("layouts", ["name", "container", "bits/weight (256x256)", "description"], rows)


@app.command()
@handle_errors
def demo(keep: Annotated[Path | None, typer.Option("--keep", help="run in this folder and keep the artifacts")]
         = None, json: JsonOpt = False) -> None:
    """Build a tiny model, then quantize, pack, re-pack, unpack and inspect it, checking every artifact."""
    from bitconv.demo import run_demo

    if keep is not None and keep.exists() and any(keep.iterdir()):
        raise UsageError("--keep folder must be empty or new", path=keep)
    rows = run_demo(keep, on_step=None if json else (lambda s: render.err.print(f"· {s}")))
    if json:
        render.print_json([r.__dict__ for r in rows])
    else:
        render.table("bitconv demo", ["step", "artifact", "kind", "layout", "size", "bits/ternary weight",
                                      "check"],
                     [[r.step, r.artifact, r.kind, r.layout, render.human_bytes(r.bytes),
                       _fmt(r.bits_per_weight, ".3f"), ("ok: " if r.ok else "FAILED: ") + r.check] for r in rows])
    if not all(r.ok for r in rows):
        raise typer.Exit(1)
