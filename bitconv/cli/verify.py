"""`bitconv verify` and `bitconv check`: parse, call `bitconv.verify`, render, exit 0 (pass) / 1 (fail) / 2 (bad
input). Reports go to --json FILE ('-' = stdout), --junit FILE, and $GITHUB_STEP_SUMMARY (appended) when set."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from bitconv.cli import render
from bitconv.cli.app import app, handle_errors
from bitconv.core.errors import UsageError
from bitconv.output import check_report_path, write_report
from bitconv.verify import Thresholds, VerifyReport, verify
from bitconv.verify.check import CheckReport, check, check_markdown, check_suites
from bitconv.verify.report import summary_lines, to_json, to_junit, verify_markdown, verify_suite

_D = Thresholds()

RefOpt = Annotated[Path, typer.Option("--ref", help="the bf16 master OUT was made from", show_default=False)]
JsonFileOpt = Annotated[str | None, typer.Option("--json", help="write the JSON report to FILE ('-' for stdout)",
                                                 show_default=False)]
JunitOpt = Annotated[Path | None, typer.Option("--junit", help="write a JUnit XML report to FILE",
                                               show_default=False)]
ParityOpt = Annotated[bool, typer.Option("--parity/--no-parity", help="also compare logits (three forward passes)")]
MaxRelOpt = Annotated[float | None, typer.Option("--max-rel-dlogit", help=f"limit of max |Δlogit| / REF's logit "
                                                 f"range [default: {_D.max_rel_dlogit}]", show_default=False)]
MaxAbsOpt = Annotated[float | None, typer.Option("--max-dlogit", help="limit of max |Δlogit| (absolute; off by "
                                                 "default)", show_default=False)]
MaxKlOpt = Annotated[float | None, typer.Option("--max-kl", help=f"limit of the mean KL(REF || OUT) per position "
                                                f"[default: {_D.max_kl}]", show_default=False)]
Top1Opt = Annotated[float | None, typer.Option("--min-top1", help=f"least top-1 agreement with REF (0..1) "
                                               f"[default: {_D.min_top1}]", show_default=False)]
Top5Opt = Annotated[float | None, typer.Option("--min-top5", help=f"least mean top-5 overlap with REF (0..1) "
                                               f"[default: {_D.min_top5}]", show_default=False)]
StrictOpt = Annotated[bool, typer.Option("--strict", help="apply the parity limits as given: never widen them to "
                                         "the floor model (what REF's own codes give in OUT's arithmetic)")]


def _thresholds(max_rel: float | None, max_abs: float | None, max_kl: float | None, top1: float | None,
                top5: float | None) -> Thresholds:
    for name, v in (("--min-top1", top1), ("--min-top5", top5)):
        if v is not None and not 0.0 <= v <= 1.0:
            raise UsageError(f"{name} must lie in [0, 1], got {v}")
    given = {"max_rel_dlogit": max_rel, "max_dlogit": max_abs, "max_kl": max_kl, "min_top1": top1, "min_top5": top5}
    given = {k: v for k, v in given.items() if v is not None}
    return Thresholds(**given, given=frozenset(given))


def _write(path: str | Path, text: str, append: bool = False, inputs: tuple[Path, ...] = ()) -> None:
    """A report file: never one of the inputs (compared by device and inode), written atomically (a temporary
    beside it, renamed into place); `append` (the CI step summary) appends."""
    try:
        if append:
            with open(path, "a", encoding="utf-8") as f:
                f.write(text)
            return
        write_report(Path(path), text, inputs)
    except OSError as e:
        raise UsageError(f"cannot write report: {e.strerror or e}", path=path) from None


def _emit(report: VerifyReport | CheckReport, json_file: str | None, junit: Path | None, suites: list,
          markdown: str, inputs: tuple[Path, ...] = ()) -> None:
    for p in (json_file if json_file != "-" else None, junit):
        if p:
            check_report_path(Path(p), inputs)  # before any report is written
    if json_file == "-":
        render.print_json(report.to_dict())
    elif json_file:
        _write(json_file, to_json(report), inputs=inputs)
    if junit:
        _write(junit, to_junit(suites), inputs=inputs)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        _write(summary, markdown + "\n", append=True)


def _print_verify(rep: VerifyReport) -> None:
    render.table(f"bitconv verify {rep.out} (REF {rep.ref})", ["check", "result"],
                 [list(r) for r in summary_lines(rep)])
    if rep.findings:
        render.table("findings", ["severity", "check", "fault", "message"],
                     [[f.severity, f.check, f.fault, f.message] for f in rep.findings])
    if rep.parity is not None and rep.parity.widened:
        render.out.print("parity limits widened to the floor model (pass --strict to apply them as given): "
                         + "; ".join(lim.note for lim in rep.parity.widened))
    render.out.print(f"{'PASS' if rep.ok else 'FAIL'}: {len(rep.errors)} error(s) in {rep.seconds:.1f} s")


@app.command("verify")
@handle_errors
def verify_command(
    out: Annotated[Path, typer.Argument(help="artifact to verify: HF packed or bitconv ternary folder, or a .gguf",
                                        show_default=False)],
    ref: RefOpt,
    json: JsonFileOpt = None, junit: JunitOpt = None,
    prompt: Annotated[str | None, typer.Option("--prompt", help="parity on this text, through the checkpoint's "
                                               "tokenizer", show_default=False)] = None,
    tokens: Annotated[Path | None, typer.Option("--tokens", help="parity on the token ids in FILE (JSON or one "
                                                "sequence per line)", show_default=False)] = None,
    parity: ParityOpt = True,
    max_rel_dlogit: MaxRelOpt = None, max_dlogit: MaxAbsOpt = None, max_kl: MaxKlOpt = None,
    min_top1: Top1Opt = None, min_top5: Top5Opt = None, strict: StrictOpt = False,
    bitlinear: Annotated[str, typer.Option("--bitlinear", help="BitLinear arithmetic to emulate: compiled "
                                           "(transformers' default) or eager (TORCHDYNAMO_DISABLE=1)")] = "compiled",
    runtime: Annotated[str | None, typer.Option("--runtime", help="also run OUT (a .gguf) in this runtime and "
                                                "judge its logits: llama.cpp (needs pip install "
                                                "'bitconv[llamacpp]')", show_default=False)] = None,
) -> None:
    """Prove OUT right against its bf16 master: tensor round trip, compute mode, logit parity, and with --runtime
    the file run in a real runtime. Exit 1 on a fault."""
    th = _thresholds(max_rel_dlogit, max_dlogit, max_kl, min_top1, min_top5)
    with render.progress("verify", json != "-") as cb:
        rep = verify(out, ref, run_parity=parity, thresholds=th, prompt=prompt, tokens_file=tokens,
                     bitlinear=bitlinear, runtime=runtime, strict=strict,
                     progress=(lambda stage, i, n: cb(i, n, stage)) if cb else None)
    _emit(rep, json, junit, [verify_suite(rep)], verify_markdown(rep), (out, ref, *((tokens,) if tokens else ())))
    if json != "-":
        _print_verify(rep)
    raise typer.Exit(rep.exit_code)


def _ok_note(rep: VerifyReport | None) -> str:
    if rep is None:
        return "ok"
    note = f"ok: verified, codes made with {rep.roundtrip.compute or '-'}"
    return note + (f", logits top-1 {rep.parity.out_vs_ref.top1:.0%}" if rep.parity else "")


def _print_check(rep: CheckReport) -> None:
    rows = []
    for a in rep.artifacts:
        errs = [f.message for f in a.findings if f.severity == "error"]
        errs += [f.message for f in a.verify.errors] if a.verify else []
        warns = [f.message for f in a.findings if f.severity == "warning"]
        if a.ok:
            verdict = _ok_note(a.verify) if a.status == "verified" else a.status
        else:
            verdict = f"FAILED: {errs[0]}" + (f" (+{len(errs) - 1} more)" if len(errs) > 1 else "")
        rows.append([a.path, a.role, a.kind or "-", a.layout or "-", a.master or "-",
                     verdict + "".join(f"; warning: {w}" for w in warns)])
    render.table(f"bitconv check {rep.path}", ["checkpoint", "role", "kind", "layout", "master", "result"], rows)
    for a in rep.artifacts:
        if a.verify is not None and not a.verify.ok:
            _print_verify(a.verify)
    render.out.print(f"{'PASS' if rep.ok else 'FAIL'}: {rep.summary}, {rep.seconds:.1f} s")


@app.command("check")
@handle_errors
def check_command(
    path: Annotated[Path, typer.Argument(help="model repository folder (or one checkpoint)", show_default=False)],
    ref: Annotated[str | None, typer.Option("--ref", help="the master every artifact is verified against: a folder, "
                                            "a file or a Hub repo id (default: the one master under PATH)",
                                            show_default=False)] = None,
    config_only: Annotated[bool, typer.Option("--config-only", help="check configs only; artifacts are not "
                                              "verified (and not failed for it)")] = False,
    json: JsonFileOpt = None, junit: JunitOpt = None, parity: ParityOpt = True,
    max_rel_dlogit: MaxRelOpt = None, max_dlogit: MaxAbsOpt = None, max_kl: MaxKlOpt = None,
    min_top1: Top1Opt = None, min_top5: Top5Opt = None, strict: StrictOpt = False,
) -> None:
    """CI for a model repo: every checkpoint's config, and every artifact verified against one named master.
    Exit 0 only when every artifact was verified and passed; 1 when one failed or could not be verified."""
    th = _thresholds(max_rel_dlogit, max_dlogit, max_kl, min_top1, min_top5)
    say = None if json == "-" else (lambda p: render.err.print(f"· verifying {p}"))
    rep = check(path, ref=ref, config_only=config_only, run_parity=parity, thresholds=th, strict=strict,
                on_item=say)
    _emit(rep, json, junit, check_suites(rep), check_markdown(rep), (path, *((ref,) if ref else ())))
    if json != "-":
        _print_check(rep)
    raise typer.Exit(rep.exit_code)
