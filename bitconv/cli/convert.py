"""`bitconv convert`: Nanotron <-> HF (bf16 master), any TP/PP layout."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from bitconv import api
from bitconv.cli import render
from bitconv.cli.app import (
    ComputeOpt,
    DryRunOpt,
    JsonOpt,
    OutOpt,
    OverwriteOpt,
    RevisionOpt,
    ShardOpt,
    SrcArg,
    TokenOpt,
    _report,
    app,
    handle_errors,
)
from bitconv.core.errors import UsageError

TARGETS = api.CONVERT_TARGETS

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
    api._check_convert_options(to, scale_granularity, tp, multiple, model, pp, purpose)


@app.command(epilog="Example: bitconv convert checkpoints/10000 --to hf-bf16 -o ./bitnet-bf16  |  Other jobs: "
             "`bitconv pack` (deployable HF packed / GGUF), `bitconv unpack` (trainable bf16 from packed), "
             "`bitconv verify` (prove it right).")
@handle_errors
def convert(src: SrcArg, out: OutOpt, to: ToOpt, purpose: ForOpt = None, scale_granularity: GranularityOpt = None,
            vocab_size: VocabOpt = None, tp: TpOpt = None, pp: PpOpt = None,
            make_vocab_size_divisible_by: MultipleOpt = 1, nanotron_model: ModelOpt = None,
            compute: ComputeOpt = "float32", overwrite: OverwriteOpt = False, max_shard_size: ShardOpt = "5GB",
            json: JsonOpt = False, token: TokenOpt = None, revision: RevisionOpt = None,
            dry_run: DryRunOpt = False) -> None:
    """Convert between Nanotron checkpoints (any TP/PP) and HF: --to hf-bf16 or --to nanotron."""
    t0 = time.perf_counter()
    with render.progress("convert", not json and not dry_run) as cb:
        rep = api.convert(src, out, to=to, purpose=purpose, scale_granularity=scale_granularity,
                          vocab_size=vocab_size, tp=tp, pp=pp,
                          make_vocab_size_divisible_by=make_vocab_size_divisible_by, nanotron_model=nanotron_model,
                          compute=compute, overwrite=overwrite, max_shard_size=max_shard_size, token=token,
                          revision=revision, progress=cb, dry_run=dry_run)
    if dry_run:
        from bitconv.cli.commands import _print_plan

        _print_plan(rep, json, time.perf_counter() - t0, "convert")
        return
    _report(rep, json, "convert", target=to.lower())
    if not json and rep.extra.get("export_meaning"):
        render.out.print(f"export --for {rep.extra['export_meaning']}", markup=False)
