"""`bitconv convert`: Nanotron <-> HF (bf16 master), any TP/PP layout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
from bitconv.errors import UsageError
from bitconv.sources import Checkpoint

TARGETS = ("hf-bf16", "nanotron")

ToOpt = Annotated[str, typer.Option("--to", help="hf-bf16 (Nanotron -> HF bf16 master) or nanotron (HF bf16 master, "
                                    "bitconv ternary, HF packed or Nanotron -> Nanotron)", show_default=False)]
ForOpt = Annotated[str | None, typer.Option("--for", help="hf-bf16 from a PR #180 BitNet checkpoint: release "
                                            "(default: the ternary model nanotron trained, q/k/v and gate/up with "
                                            "its fused scales; what verify --ref <nanotron> expects) or training "
                                            "(the bf16 training latents, to continue training elsewhere)",
                                            show_default=False)]
GranularityOpt = Annotated[str | None, typer.Option("--scale-granularity", help="older spelling of --for: fused "
                                                    "(= release) or per-projection (= training)",
                                                    show_default=False)]
VocabOpt = Annotated[int | None, typer.Option("--vocab-size", help="Nanotron SRC: HF vocabulary size (drops the "
                                              "padding rows; default: recorded or from a tokenizer next to SRC)")]
TpOpt = Annotated[int | None, typer.Option("--tp", help="nanotron: tensor-parallel size of the written shards "
                                           "(default: a Nanotron SRC's own, else 1)", show_default=False)]
PpOpt = Annotated[int | None, typer.Option("--pp", help="nanotron: pipeline-parallel size; layers go to the stages "
                                           "nanotron's build_model gives them (default: a Nanotron SRC's own, "
                                           "else 1)", show_default=False)]
MultipleOpt = Annotated[int, typer.Option("--make-vocab-size-divisible-by", help="nanotron: the training run's "
                                          "make_vocab_size_divisible_by (embedding rows are pre-padded to it x tp)")]
ModelOpt = Annotated[str | None, typer.Option("--nanotron-model", help="nanotron: bitnet (PR #180; default for "
                                              "BitNet sources), llama (HEAD; default otherwise) or llama-pr180")]


def check_options(to: str, scale_granularity: str | None, tp: int | None, multiple: int, model: str | None,
                  pp: int | None = None, purpose: str | None = None) -> None:
    """Refuse options that do not apply to the chosen target (pure; tested without a runner)."""
    if to not in TARGETS:
        raise UsageError(f"--to {to!r} is not a convert target; choose one of {', '.join(TARGETS)}")
    if to == "hf-bf16":
        given = [n for n, on in (("--tp", tp is not None), ("--pp", pp is not None),
                                 ("--make-vocab-size-divisible-by", multiple != 1),
                                 ("--nanotron-model", model is not None)) if on]
        if given:
            raise UsageError(f"{', '.join(given)} apply to --to nanotron only")
    elif scale_granularity is not None or purpose is not None:
        raise UsageError(f"{'--for' if purpose is not None else '--scale-granularity'} applies to --to hf-bf16 only")


@app.command()
@handle_errors
def convert(src: SrcArg, out: OutOpt, to: ToOpt, purpose: ForOpt = None, scale_granularity: GranularityOpt = None,
            vocab_size: VocabOpt = None, tp: TpOpt = None, pp: PpOpt = None,
            make_vocab_size_divisible_by: MultipleOpt = 1, nanotron_model: ModelOpt = None,
            compute: ComputeOpt = "float32", overwrite: OverwriteOpt = False, max_shard_size: ShardOpt = "5GB",
            json: JsonOpt = False) -> None:
    """Convert between Nanotron checkpoints (any TP/PP) and HF: --to hf-bf16 or --to nanotron."""
    from bitconv.nanotron import convert as nc

    check_options(to, scale_granularity, tp, make_vocab_size_divisible_by, nanotron_model, pp, purpose)
    with render.progress("convert", not json, unit="bytes" if to == "hf-bf16" else "tensors") as cb:
        if to == "hf-bf16":
            rep = nc.to_hf(src, out, purpose=purpose, scale_granularity=scale_granularity, vocab_size=vocab_size,
                           compute=compute, overwrite=overwrite, max_shard_bytes=parse_size(max_shard_size),
                           progress=cb)
        else:
            from bitconv.output import precheck

            precheck(out, overwrite)  # before SRC is read
            source = _nanotron_source(src, vocab_size)
            rep = nc.to_nanotron(source, out, tp=tp, pp=pp,
                                 make_vocab_size_divisible_by=make_vocab_size_divisible_by, model=nanotron_model,
                                 compute=compute, overwrite=overwrite, progress=cb)
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
    if rep.extra.get("export_meaning"):
        render.out.print(f"export --for {rep.extra['export_meaning']}", markup=False)


def _nanotron_source(src: Path, vocab_size: int | None) -> Path | Checkpoint:
    """SRC for --to nanotron: opened with --vocab-size when it is a Nanotron checkpoint, else by path."""
    from bitconv.sources.nanotron import is_nanotron_dir, open_nanotron

    if is_nanotron_dir(Path(src)):
        return open_nanotron(src, vocab_size=vocab_size)
    if vocab_size is not None:
        raise UsageError("--vocab-size applies to a Nanotron SRC (an HF source's vocabulary is its embedding)")
    return src
