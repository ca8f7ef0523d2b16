"""One function per command; each body translates options and calls the library."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bitconv import pipeline
from bitconv.cli import (
    ComputeOpt,
    JsonOpt,
    OutOpt,
    OverwriteOpt,
    ShardOpt,
    SrcArg,
    _report,
    app,
    handle_errors,
    parse_size,
    render,
)
from bitconv.cli.hub import PushOpt, TokenOpt, push_after_pack
from bitconv.errors import UsageError
from bitconv.layouts import get_layout, list_layouts

PACK_TARGETS = ("hf", "gguf")


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
         to: Annotated[str, typer.Option("--to", help="target format: hf or gguf")] = "hf",
         linear_class: Annotated[str, typer.Option("--linear-class", help="HF: autobitlinear (weight_scale = "
                                                   "scale, microsoft 2B-4T) or bitlinear (1/scale)")]
         = "autobitlinear",
         gguf_type: Annotated[str | None, typer.Option("--type", help="GGUF: i2_s, tl1, tl2 (bitnet.cpp), tq1_0, "
                                                       "tq2_0 (llama.cpp), iq1_bn, iq2_bn, iq2_bn_r4 "
                                                       "(ik_llama.cpp), or f32, f16, bf16 (codes * scale)")]
         = None,
         arch: Annotated[str | None, typer.Option("--arch", help="GGUF architecture: bitnet-b1.58 (default for "
                                                  "BitNetForCausalLM; bitnet-25 for the ik types), bitnet-25, "
                                                  "bitnet, llama")] = None,
         embd_type: Annotated[str | None, typer.Option("--embd-type", help="GGUF token_embd / output type: f16, "
                                                       "f32, bf16 or q8_0 (default f16; q8_0 for the ik types)")]
         = None,
         kernel_config: Annotated[Path | None, typer.Option("--kernel-config", help="GGUF TL1/TL2: the "
                                                            "kernel_config.ini to tile for (default: derived from "
                                                            "the model's shapes)")] = None,
         tl2_type_id: Annotated[int, typer.Option("--tl2-type-id", help="GGUF TL2 type id: 39 (bitnet.cpp before "
                                                  "mid-2026) or 42 (current fork)")] = 39,
         compute: ComputeOpt = "float32", overwrite: OverwriteOpt = False, max_shard_size: ShardOpt = "5GB",
         dry_run: Annotated[bool, typer.Option("--dry-run", help="print the plan, write nothing")] = False,
         force: Annotated[bool, typer.Option("--force", help="GGUF: write a file that runs correctly on no known "
                                             "runtime (docs/runtimes.md), with a warning in the file")] = False,
         json: JsonOpt = False, push_to_hub: PushOpt = None, token: TokenOpt = None) -> None:
    """Pack SRC into a deployable layout (HF folder or one GGUF file). Ternary sources are never re-quantized."""
    if to not in PACK_TARGETS:
        raise UsageError(f"--to {to!r} is not a known target; choose one of {', '.join(PACK_TARGETS)}")
    gguf_opts = {"arch": arch, "embd_type": embd_type, "kernel_config": kernel_config, "tl2_type_id": tl2_type_id,
                 "compute": compute, "force": force}
    if to == "gguf":
        _pack_gguf(src, out, _gguf_type(gguf_type), gguf_opts, overwrite, dry_run, json)
        return push_after_pack(out, push_to_hub, src, token, dry_run, json)
    _refuse_gguf_options(gguf_type, arch, embd_type, kernel_config, tl2_type_id, force)
    if dry_run:
        plan = pipeline.plan_pack_hf(pipeline.open_source(src), linear_class, compute)
        _print_plan(plan, json)
        return push_after_pack(out, push_to_hub, src, token, True, json)
    with render.progress("pack", not json) as cb:
        rep = pipeline.pack_hf(src, out, linear_class=linear_class, compute=compute, overwrite=overwrite,
                               max_shard_bytes=parse_size(max_shard_size), progress=cb)
    _report(rep, json)
    push_after_pack(rep.out, push_to_hub, src, token, False, json)


def _gguf_type(gguf_type: str | None) -> str:
    if gguf_type is None:
        raise UsageError("--to gguf needs --type: i2_s, tl1, tl2, tq1_0, tq2_0, iq1_bn, iq2_bn, iq2_bn_r4, f32, "
                         "f16 or bf16")
    return gguf_type


def _refuse_gguf_options(gguf_type: str | None, arch: str | None, embd_type: str | None,
                         kernel_config: Path | None, tl2_type_id: int, force: bool) -> None:
    given = [n for n, v in (("--type", gguf_type), ("--arch", arch), ("--embd-type", embd_type),
                            ("--kernel-config", kernel_config)) if v is not None] + \
        (["--tl2-type-id"] if tl2_type_id != 39 else []) + (["--force"] if force else [])
    if given:
        raise UsageError(f"{', '.join(given)}: only for --to gguf")


def _pack_gguf(src: Path, out: Path, gguf_type: str, opts: dict, overwrite: bool, dry_run: bool,
               as_json: bool) -> None:
    from bitconv import pipeline_gguf

    if dry_run:
        plan = pipeline_gguf.plan_pack_gguf(pipeline.open_source(src), gguf_type, file=out.name, **opts)
        _print_gguf_plan(plan, as_json)
        return
    with render.progress("pack", not as_json) as cb:
        rep = pipeline_gguf.pack_gguf(src, out, gguf_type, overwrite=overwrite, progress=cb, **opts)
    if as_json:
        render.print_json({"out": str(rep.out), "target": rep.target, "source_kind": rep.source_kind,
                           "files": [str(f) for f in rep.files], "ternary_tensors": rep.n_ternary,
                           "passthrough_tensors": rep.n_passthrough, "bytes": rep.bytes_written,
                           "seconds": round(rep.seconds, 3), "gguf": rep.extra})
        for w in rep.extra["warnings"]:
            render.warning(w)
        return
    for w in rep.extra.get("warnings", []):
        render.warning(w)
    _report(rep, False)
    render.out.print(f"GGUF arch {rep.extra['arch']}, metadata as {rep.extra['profile']}")
    if "kernel_config" in rep.extra:
        render.out.print(f"kernel config: {rep.extra['kernel_config']}")
    _print_runtimes(rep.extra)


def _print_runtimes(extra: dict) -> None:
    """Where the file runs (from the compatibility table), how to run it, how to build the TL kernels, warnings."""
    o = render.out
    o.print(extra["runs_on"])
    o.print(extra["does_not_run_on"])
    for v in extra["runtimes"]:
        if v["runs"]:
            o.print(f"  {v['name']}: {v['command']}" + "".join(f"\n    note: {n}" for n in v["notes"]))
    if "codegen_steps" in extra:
        o.print("build bitnet.cpp with kernels for this file (in the bitnet.cpp checkout):")
        for i, step in enumerate(extra["codegen_steps"], 1):
            o.print(f"  {i}. {step}")
    for w in extra["warnings"]:
        render.warning(w)


def _print_gguf_plan(plan: object, as_json: bool) -> None:
    rows = plan.rows()
    if as_json:
        render.print_json({"target": f"gguf-{plan.gguf_type}", "source_kind": plan.source.kind,
                           "total_bytes": plan.total_bytes, "peak_memory_bytes": plan.peak_bytes, "gguf": plan.extra,
                           "tensors": [dict(zip(("name", "action", "shape", "type", "bytes"), r)) for r in rows]})
        return
    render.table(f"plan: {plan.source.kind} -> gguf {plan.gguf_type} (arch {plan.arch.name}, {plan.profile})",
                 ["tensor", "action", "shape", "type", "bytes"], rows)
    render.out.print(f"total {render.human_bytes(plan.total_bytes)}, peak memory about "
                     f"{render.human_bytes(plan.peak_bytes)}; nothing written (--dry-run)")
    _print_runtimes(plan.extra)


def _print_plan(plan: pipeline.Plan, as_json: bool) -> None:
    rows = [[n, s.action, list(f.shape), f.dtype, f.nbytes] for s in plan.steps for n, f in s.outputs.items()]
    if as_json:
        render.print_json({"target": plan.target, "source_kind": plan.source.kind, "total_bytes": plan.total_bytes,
                           "peak_memory_bytes": plan.peak_bytes,
                           "tensors": [dict(zip(("name", "action", "shape", "dtype", "bytes"), r)) for r in rows]})
        return
    render.table(f"plan: {plan.source.kind} -> {plan.target}", ["tensor", "action", "shape", "dtype", "bytes"], rows)
    render.out.print(f"total {render.human_bytes(plan.total_bytes)}, peak memory about "
                     f"{render.human_bytes(plan.peak_bytes)}; nothing written (--dry-run)")


@app.command()
@handle_errors
def unpack(src: SrcArg, out: OutOpt, overwrite: OverwriteOpt = False, max_shard_size: ShardOpt = "5GB",
           values: Annotated[str, typer.Option("--values", help="online: bf16(codes*scale/p), which transformers' "
                                               "online quantizer maps back to the same codes and scale (default); "
                                               "dequantized: plain bf16(codes*scale)")] = "online",
           json: JsonOpt = False) -> None:
    """Packed / ternary / GGUF -> trainable bf16 checkpoint with an online autobitlinear config."""
    with render.progress("unpack", not json) as cb:
        rep = pipeline.unpack_hf(src, out, values=values, overwrite=overwrite,
                                 max_shard_bytes=parse_size(max_shard_size), progress=cb)
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
    o.print(f"[bold]{render.esc(d.path)}[/]", markup=True)
    o.print(f"  kind          {d.kind} — {d.kind_description}")
    o.print(f"  layout        {d.layout or '-'}" + (f" (codes made in {d.compute})" if d.compute else ""))
    o.print(f"  architecture  {d.architecture} ({d.family})")
    o.print("  config        " + ", ".join(f"{k}={v}" for k, v in d.config.items()))
    o.print(f"  parameters    {d.parameters:,} ({d.ternary_parameters:,} ternary)")
    o.print("  files         " + ", ".join(f"{f['name']} {render.human_bytes(f['bytes'])}" for f in d.files))
    o.print(f"  bits/weight   {d.bits_per_weight:.3f} overall, {_fmt(d.ternary_bits_per_weight, '.3f')} per "
            "ternary weight")
    if d.scale_stats:
        s = d.scale_stats
        o.print(f"  scales        n={s['count']} min={s['min']:.4g} median={s['median']:.4g} max={s['max']:.4g}")
        o.print(f"  zero codes    {d.zero_fraction:.2%}")
    if d.runtimes is not None:
        r = d.runtimes
        o.print(f"  runtimes      arch {r['arch']}, activation {r['activation']}, projections {r['type']}")
        render.table(f"where it runs ({r['runs_on']})", ["runtime", "runs correctly", "why not / how to run"],
                     [[v["name"], "yes" if v["runs"] else "no",
                       v["why"] or v["command"] + "".join(f"; {n}" for n in v["notes"])] for v in r["runtimes"]])
        for n in r["notes"]:
            o.print(f"  note: {n}")
        for i, step in enumerate(r["codegen_steps"], 1):
            o.print(f"  build step {i}: {step}")
        if r["warning"]:
            render.warning(f"this file says: {r['warning']}")
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
