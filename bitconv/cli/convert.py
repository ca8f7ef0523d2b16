"""`bitconv convert`: Nanotron <-> HF (bf16 master), any TP/PP layout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bitconv.cli import render
from bitconv.cli.app import (
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
)
from bitconv.core.errors import UsageError
from bitconv.sources import Checkpoint

TARGETS = ("hf-bf16", "nanotron")

ToOpt = Annotated[str, typer.Option("--to", help="hf-bf16 (Nanotron -> HF bf16 master) or nanotron (HF bf16 master, "
                                    "bitconv ternary, HF packed or Nanotron -> Nanotron)", show_default=False)]
GranularityOpt = Annotated[str | None, typer.Option("--scale-granularity", help="hf-bf16 from a PR #180 BitNet "
                                                    "checkpoint: fused (default: q/k/v and gate/up keep nanotron's "
                                                    "one fused scale) or per-projection (the training latents)")]
VocabOpt = Annotated[int | None, typer.Option("--vocab-size", help="Nanotron SRC: HF vocabulary size (drops the "
                                              "padding rows; default: recorded or from a tokenizer next to SRC)")]
TpOpt = Annotated[int, typer.Option("--tp", help="nanotron: tensor-parallel size of the written shards")]
MultipleOpt = Annotated[int, typer.Option("--make-vocab-size-divisible-by", help="nanotron: the training run's "
                                          "make_vocab_size_divisible_by (embedding rows are pre-padded to it x tp)")]
ModelOpt = Annotated[str | None, typer.Option("--nanotron-model", help="nanotron: bitnet (PR #180; default for "
                                              "BitNet sources), llama (HEAD; default otherwise) or llama-pr180")]


def check_options(to: str, scale_granularity: str | None, tp: int, multiple: int, model: str | None) -> None:
    """Refuse options that do not apply to the chosen target (pure; tested without a runner)."""
    if to not in TARGETS:
        raise UsageError(f"--to {to!r} is not a convert target; choose one of {', '.join(TARGETS)}")
    if to == "hf-bf16":
        given = [n for n, on in (("--tp", tp != 1), ("--make-vocab-size-divisible-by", multiple != 1),
                                 ("--nanotron-model", model is not None)) if on]
        if given:
            raise UsageError(f"{', '.join(given)} apply to --to nanotron only")
    elif scale_granularity is not None:
        raise UsageError("--scale-granularity applies to --to hf-bf16 only")


@app.command()
@handle_errors
def convert(src: SrcArg, out: OutOpt, to: ToOpt, scale_granularity: GranularityOpt = None,
            vocab_size: VocabOpt = None, tp: TpOpt = 1, make_vocab_size_divisible_by: MultipleOpt = 1,
            nanotron_model: ModelOpt = None, compute: ComputeOpt = "float32", overwrite: OverwriteOpt = False,
            max_shard_size: ShardOpt = "5GB", json: JsonOpt = False) -> None:
    """Convert between Nanotron checkpoints (any TP/PP) and HF: --to hf-bf16 or --to nanotron."""
    from bitconv.sinks import nanotron as nc

    check_options(to, scale_granularity, tp, make_vocab_size_divisible_by, nanotron_model)
    with render.progress("convert", not json) as cb:
        if to == "hf-bf16":
            rep = nc.to_hf(src, out, scale_granularity=scale_granularity, vocab_size=vocab_size, compute=compute,
                           overwrite=overwrite, max_shard_bytes=parse_size(max_shard_size), progress=cb)
        else:
            source = _nanotron_source(src, vocab_size)
            rep = nc.to_nanotron(source, out, tp=tp, make_vocab_size_divisible_by=make_vocab_size_divisible_by,
                                 model=nanotron_model, compute=compute, overwrite=overwrite, progress=cb)
    warnings = rep.extra.get("warnings", [])
    if json:
        render.print_json({"out": str(rep.out), "target": rep.target, "source_kind": rep.source_kind,
                           "files": [str(f) for f in rep.files], "ternary_tensors": rep.n_ternary,
                           "passthrough_tensors": rep.n_passthrough, "bytes": rep.bytes_written,
                           "seconds": round(rep.seconds, 3), "warnings": warnings,
                           **{k: v for k, v in rep.extra.items() if k != "warnings"}})
        return
    for w in warnings:
        render.warning(w)
    _report(rep, False)


def _nanotron_source(src: Path, vocab_size: int | None) -> Path | Checkpoint:
    """SRC for --to nanotron: opened with --vocab-size when it is a Nanotron checkpoint, else by path."""
    from bitconv.sources.nanotron import is_nanotron_dir, open_nanotron

    if is_nanotron_dir(Path(src)):
        return open_nanotron(src, vocab_size=vocab_size)
    if vocab_size is not None:
        raise UsageError("--vocab-size applies to a Nanotron SRC (an HF source's vocabulary is its embedding)")
    return src
