"""One function per command; each body translates options, calls one `bitconv.api` function, and renders."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from bitconv import api
from bitconv.cli import render
from bitconv.cli.app import (
    ComputeOpt,
    CreatePrOpt,
    DryRunOpt,
    JsonOpt,
    NoCardOpt,
    OutOpt,
    OverwriteOpt,
    PrivateOpt,
    PushOpt,
    RevisionOpt,
    ShardOpt,
    SrcArg,
    TokenOpt,
    _report,
    app,
    handle_errors,
)

JOBS = ("Other jobs: `bitconv unpack` (back to trainable bf16), `bitconv convert` (Nanotron <-> HF), "
        "`bitconv verify` (prove an artifact right), `bitconv upload` (publish).")


@app.command(epilog="Example: bitconv quantize ./bitnet-bf16 -o ./bitnet-ternary  |  " + JOBS)
@handle_errors
def quantize(src: SrcArg, out: OutOpt, compute: ComputeOpt = "float32", overwrite: OverwriteOpt = False,
             max_shard_size: ShardOpt = "5GB", json: JsonOpt = False, token: TokenOpt = None,
             revision: RevisionOpt = None, dry_run: DryRunOpt = False) -> None:
    """bf16 master -> bitconv ternary checkpoint (int8 codes + float32 absmean scales)."""
    t0 = time.perf_counter()
    with render.progress("quantize", not json and not dry_run) as cb:
        rep = api.quantize(src, out, compute=compute, overwrite=overwrite, max_shard_size=max_shard_size,
                           token=token, revision=revision, progress=cb, dry_run=dry_run)
    if dry_run:
        _print_plan(rep, json, time.perf_counter() - t0, "quantize")
        return
    _report(rep, json, "quantize")


@app.command(epilog="Example: bitconv pack ./bitnet-bf16 --to gguf --type i2_s -o models/  (writes "
             "models/bitnet-bf16-i2_s.gguf)  |  Nanotron output: `bitconv convert --to nanotron`. " + JOBS)
@handle_errors
def pack(src: SrcArg,
         out: Annotated[Path | None, typer.Option("-o", "--out", help="HF: output folder. GGUF: NAME.gguf, NAME "
                                                  "(.gguf is added) or an existing folder (gets "
                                                  "<model-name>-<type>.gguf)", show_default=False)] = None,
         to: Annotated[str, typer.Option("--to", help="target format: hf or gguf (Nanotron: `bitconv convert`)")]
         = "hf",
         linear_class: Annotated[str, typer.Option("--linear-class", help="HF: autobitlinear (weight_scale = "
                                                   "scale, microsoft 2B-4T) or bitlinear (1/scale)")]
         = "autobitlinear",
         gguf_type: Annotated[str | None, typer.Option("--type", help="GGUF: a gguf layout without its prefix "
                                                       "(`bitconv layouts` lists them and where each runs), or "
                                                       "f32, f16, bf16 (codes * scale)")]
         = None,
         arch: Annotated[str | None, typer.Option("--arch", help="GGUF architecture: bitnet-b1.58 (default for "
                                                  "BitNetForCausalLM; bitnet-25 for the ik types), bitnet-25, "
                                                  "bitnet, llama")] = None,
         embd_type: Annotated[str | None, typer.Option("--embd-type", help="GGUF token_embd / output type: f16, "
                                                       "f32, bf16 or q8_0 (default f16; q8_0 for the ik types)")]
         = None,
         kernel_config: Annotated[Path | None, typer.Option("--kernel-config", help="GGUF tiled layouts: "
                                                            "the kernel_config.ini to tile for (default: derived from "
                                                            "the model's shapes)")] = None,
         tl2_type_id: Annotated[int | None, typer.Option("--tl2-type-id", help="GGUF tl2 type id: 39 (bitnet.cpp "
                                                         "before mid-2026; the default) or 42 (current fork)",
                                                         show_default=False)] = None,
         model_name: Annotated[str | None, typer.Option("--model-name", help="GGUF general.name and file name "
                                                        "(default: the repo or folder name)",
                                                        show_default=False)] = None,
         compute: ComputeOpt = "float32", overwrite: OverwriteOpt = False, max_shard_size: ShardOpt = "5GB",
         dry_run: DryRunOpt = False,
         force: Annotated[bool, typer.Option("--force", help="GGUF: write a file that runs correctly on no known "
                                             "runtime (docs/runtimes.md), with a warning in the file")] = False,
         json: JsonOpt = False, push_to_hub: PushOpt = None, private: PrivateOpt = False,
         create_pr: CreatePrOpt = False, no_card: NoCardOpt = False,
         revision: Annotated[str | None, typer.Option("--revision", help="with --push-to-hub: the branch to push "
                                                      "to (as `upload`); otherwise the revision of a repo-id SRC "
                                                      "(SRC@REV works in both cases)", show_default=False)] = None,
         token: TokenOpt = None) -> None:
    """Pack SRC into a deployable layout (HF folder or one GGUF file). Ternary sources are never re-quantized."""
    src_rev = None if push_to_hub else revision
    t0 = time.perf_counter()
    with render.progress("pack", not json and not dry_run) as cb:
        res = api.pack(src, out, to=to, linear_class=linear_class, type=gguf_type, arch=arch, embd_type=embd_type,
                       kernel_config=kernel_config, tl2_type_id=tl2_type_id, compute=compute, model_name=model_name,
                       force=force, overwrite=overwrite, max_shard_size=max_shard_size, dry_run=dry_run, token=token,
                       revision=src_rev, progress=cb)
    if dry_run:
        _print_plan(res, json, time.perf_counter() - t0)
        if push_to_hub:
            render.warning(f"--dry-run: nothing packed, so nothing pushed to {push_to_hub}")
        return
    if not json:
        _report(res, False, "pack")
        if "runtimes" in res.extra:
            render.out.print(f"GGUF arch {res.extra['arch']}, metadata as {res.extra['profile']}")
            if "kernel_config" in res.extra:
                render.out.print(f"kernel config: {res.extra['kernel_config']}")
            _print_runtimes(res.extra, warn=False)
    from bitconv.cli.hub import push_after_pack

    pushed = push_after_pack(res.out, push_to_hub, src, token, json, revision=revision, private=private,
                             create_pr=create_pr, card=not no_card)
    if json:
        _report(res, True, "pack", target=to.lower(), **({"pushed": pushed} if pushed else {}))


def _print_runtimes(extra: dict, warn: bool = True) -> None:
    """Where the file runs (from the compatibility table), how to run it, how to build the TL kernels (steps in
    the bitnet.cpp checkout: codegen options are bitnet.cpp's, not bitconv's), warnings."""
    o = render.out
    o.print(extra["runs_on"])
    o.print(extra["does_not_run_on"])
    for v in extra["runtimes"]:
        if v["runs"]:
            o.print(f"  {v['name']}: {v['command']}")
            for n in v["notes"]:  # one print per line: the console shows a newline inside a string as \x0a
                o.print(f"    note: {n}")
    if "codegen_steps" in extra:
        o.print("build bitnet.cpp with kernels for this file (in the bitnet.cpp checkout):")
        for i, step in enumerate(extra["codegen_steps"], 1):
            o.print(f"  {i}. {step}")
    if warn:
        for w in extra["warnings"]:
            render.warning(w)


def _print_plan(plan: Any, as_json: bool, seconds: float, command: str = "pack") -> None:
    from bitconv.cli import jsondoc

    gguf = hasattr(plan, "gguf_type")
    if gguf:
        rows = plan.rows()
        cols = ["tensor", "action", "shape", "type", "bytes"]
        layout = plan.layout.name if plan.layout is not None else None
        title = f"plan: {plan.source.kind} -> gguf {plan.gguf_type} (arch {plan.arch.name}, {plan.profile})"
    else:
        rows = [[n, s.action, list(f.shape), f.dtype, f.nbytes] for s in plan.steps for n, f in s.outputs.items()]
        cols = ["tensor", "action", "shape", "dtype", "bytes"]
        layout = plan.target
        title = f"plan: {plan.source.kind} -> {plan.target}"
    if as_json:
        extra = {"gguf": plan.extra} if gguf else {}
        render.print_json(jsondoc.doc(command, out=getattr(plan, "out", None), layout=jsondoc.layout_name(layout),
                                      bytes=plan.total_bytes, seconds=seconds, dry_run=True,
                                      warnings=list(getattr(plan, "warnings", [])),
                                      source_kind=plan.source.kind, peak_memory_bytes=plan.peak_bytes,
                                      tensors=[dict(zip(cols, r)) for r in rows], **extra))
        return
    render.table(title, cols, rows)
    render.out.print(f"total {render.human_bytes(plan.total_bytes)}, peak memory about "
                     f"{render.human_bytes(plan.peak_bytes)}; would write {getattr(plan, 'out', None) or '-'}; "
                     "nothing written (--dry-run)", markup=False)
    if gguf:
        _print_runtimes(plan.extra)


@app.command(epilog="Example: bitconv unpack ./bitnet-packed -o ./bitnet-bf16-trainable  |  " + JOBS)
@handle_errors
def unpack(src: SrcArg, out: OutOpt, overwrite: OverwriteOpt = False, max_shard_size: ShardOpt = "5GB",
           values: Annotated[str, typer.Option("--values", help="online: bf16(codes*scale/p), which transformers' "
                                               "online quantizer maps back to the same codes and scale (default); "
                                               "dequantized: plain bf16(codes*scale)")] = "online",
           json: JsonOpt = False, token: TokenOpt = None, revision: RevisionOpt = None,
           dry_run: DryRunOpt = False) -> None:
    """Packed / ternary / GGUF / Nanotron -> trainable bf16 checkpoint with an online autobitlinear config."""
    t0 = time.perf_counter()
    with render.progress("unpack", not json and not dry_run) as cb:
        rep = api.unpack(src, out, values=values, overwrite=overwrite, max_shard_size=max_shard_size, token=token,
                         revision=revision, progress=cb, dry_run=dry_run)
    if dry_run:
        _print_plan(rep, json, time.perf_counter() - t0, "unpack")
        return
    _report(rep, json, "unpack")


@app.command(epilog="Example: bitconv inspect models/bitnet-bf16-i2_s.gguf --no-tensors  |  " + JOBS)
@handle_errors
def inspect(src: SrcArg, json: JsonOpt = False,
            stats: Annotated[bool, typer.Option("--stats/--no-stats", help="decode ternary tensors for scale and "
                                                "zero-code statistics")] = True,
            tensors: Annotated[bool, typer.Option("--tensors/--no-tensors", help="per-tensor table")] = True,
            token: TokenOpt = None, revision: RevisionOpt = None) -> None:
    """What a checkpoint is: kind, layout, architecture, shapes, bits per weight, scale statistics."""
    from bitconv.cli import jsondoc

    t0 = time.perf_counter()
    d = api.inspect(src, stats=stats, token=token, revision=revision)
    if json:
        body = d.to_dict()
        files = body.pop("files")
        render.print_json(jsondoc.doc("inspect", out=None, layout=body.pop("layout"),
                                      files=[f["name"] for f in files], bytes=d.total_bytes,
                                      seconds=time.perf_counter() - t0, file_bytes={f["name"]: f["bytes"]
                                                                                     for f in files}, **body))
        return
    _print_description(d, tensors)


def _fmt(x: float | None, spec: str = ".4g") -> str:
    return "-" if x is None else format(x, spec)


def _print_description(d: Any, show_tensors: bool) -> None:
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


@app.command(epilog="Example: bitconv layouts --json  |  " + JOBS)
@handle_errors
def layouts(json: JsonOpt = False) -> None:
    """List the registered packed layouts (the one spelling of each layout name)."""
    from bitconv.cli import jsondoc

    t0 = time.perf_counter()
    rows = api.layouts()
    if json:
        render.print_json(jsondoc.doc("layouts", seconds=time.perf_counter() - t0, layouts=rows))
        return
    render.table("layouts", ["name", "container", "bits/weight (256x256)", "description"],
                 [[r["name"], r["container"], f"{r['bits_per_weight_256x256']:.3f}", r["description"]] for r in rows])


@app.command(epilog="Example: bitconv demo --keep ./demo  |  " + JOBS)
@handle_errors
def demo(keep: Annotated[Path | None, typer.Option("--keep", help="run in this folder and keep the artifacts")]
         = None, json: JsonOpt = False) -> None:
    """Build a tiny model, then quantize, pack, re-pack, unpack and inspect it, checking every artifact."""
    from bitconv.cli import jsondoc

    t0 = time.perf_counter()
    rows = api.demo(keep, on_step=None if json else (lambda s: render.err.print(f"· {s}", markup=False)))
    ok = all(r.ok for r in rows)
    if json:
        render.print_json(jsondoc.doc("demo", ok=ok, out=keep, files=[r.artifact for r in rows],
                                      bytes=sum(r.bytes for r in rows), seconds=time.perf_counter() - t0,
                                      steps=[r.__dict__ for r in rows]))
    else:
        render.table("bitconv demo", ["step", "artifact", "kind", "layout", "size", "bits/ternary weight",
                                      "check"],
                     [[r.step, r.artifact, r.kind, r.layout, render.human_bytes(r.bytes),
                       _fmt(r.bits_per_weight, ".3f"), ("ok: " if r.ok else "FAILED: ") + r.check] for r in rows])
    if not ok:
        raise typer.Exit(1)
