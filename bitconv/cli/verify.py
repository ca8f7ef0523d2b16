"""`bitconv verify` and `bitconv check`: parse, call `bitconv.api`, render, exit 0 (pass) / 1 (fail) / 2 (bad input).
`--json` prints the report document on stdout; reports go to --report FILE (the same JSON document), --junit FILE,
and $GITHUB_STEP_SUMMARY (appended) when set. torch is imported only once a command runs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from bitconv import api
from bitconv.cli import render
from bitconv.cli.app import JsonOpt, RevisionOpt, TokenOpt, app, handle_errors
from bitconv.core.errors import UsageError

RefOpt = Annotated[Path, typer.Option("--ref", help="the bf16 master OUT was made from", show_default=False)]
ReportOpt = Annotated[Path | None, typer.Option("--report", help="write the JSON report (the --json document) to "
                                                "FILE", show_default=False)]
JunitOpt = Annotated[Path | None, typer.Option("--junit", help="write a JUnit XML report to FILE",
                                               show_default=False)]
ParityOpt = Annotated[bool, typer.Option("--parity/--no-parity", help="also compare logits (three forward passes)")]
MaxRelOpt = Annotated[float | None, typer.Option("--max-rel-dlogit", help="limit of max |Δlogit| / REF's logit "
                                                 "range [default: 0.05]", show_default=False)]
MaxAbsOpt = Annotated[float | None, typer.Option("--max-dlogit", help="limit of max |Δlogit| (absolute; off by "
                                                 "default)", show_default=False)]
MaxKlOpt = Annotated[float | None, typer.Option("--max-kl", help="limit of the mean KL(REF || OUT) per position "
                                                "[default: 0.01]", show_default=False)]
Top1Opt = Annotated[float | None, typer.Option("--min-top1", help="least top-1 agreement with REF (0..1) "
                                               "[default: 0.85]", show_default=False)]
Top5Opt = Annotated[float | None, typer.Option("--min-top5", help="least mean top-5 overlap with REF (0..1) "
                                               "[default: 0.85]", show_default=False)]
VERIFY_EPILOG = ("Example: bitconv verify models/bitnet-bf16-i2_s.gguf --ref ./bitnet-bf16 --report r.json "
                 "--junit r.xml  |  Make artifacts with `bitconv pack`; check a whole repo with `bitconv check`.")
CHECK_EPILOG = ("Example: bitconv check . --no-parity --junit bitconv-check.xml  |  One artifact: `bitconv verify`; "
                "as a GitHub Action: see action.yml (docs/ci.md).")


StrictOpt = Annotated[bool, typer.Option("--strict", help="apply the parity limits as given: never widen them to "
                                         "the floor model (what REF's own codes give in OUT's arithmetic)")]


def _limits(max_rel: float | None, max_abs: float | None, max_kl: float | None, top1: float | None,
            top5: float | None) -> dict:
    return {"max_rel_dlogit": max_rel, "max_dlogit": max_abs, "max_kl": max_kl, "min_top1": top1, "min_top5": top5}


def _write(path: str | Path, text: str, append: bool = False, inputs: tuple[Path, ...] = ()) -> None:
    """A report file: never one of the inputs (compared by device and inode), written atomically (a temporary
    beside it, renamed into place); `append` (the CI step summary) appends."""
    from bitconv.output import write_report

    try:
        if append:
            with open(path, "a", encoding="utf-8") as f:
                f.write(text)
            return
        write_report(Path(path), text, inputs)
    except OSError as e:
        raise UsageError(f"cannot write report: {e.strerror or e}", path=path) from None


def _document(command: str, report: object, files: list[Path]) -> dict:
    from bitconv.cli import jsondoc

    d = report.to_dict()
    warnings = [f["message"] for f in d.get("findings", []) if f.get("severity") == "warning"]
    layout = d.get("out_layout") if command == "verify" else None
    out = d.get("out") if command == "verify" else d.get("path")
    return jsondoc.doc(command, ok=d["ok"], out=out, layout=layout, files=files, seconds=d.get("seconds", 0.0),
                       warnings=warnings, **{k: v for k, v in d.items() if k not in ("ok", "out", "seconds")})


def _emit(command: str, report: object, as_json: bool, report_file: Path | None, junit: Path | None, suites: list,
          markdown: str, inputs: tuple[Path, ...] = ()) -> None:
    from bitconv.output import check_report_path
    from bitconv.verify.report import to_junit

    files = [p for p in (report_file, junit) if p]
    for p in files:
        check_report_path(Path(p), inputs)  # before any report is written
    doc = _document(command, report, files)
    if report_file:
        import json as _json

        _write(report_file, _json.dumps(doc, indent=2, default=str) + "\n", inputs=inputs)
    if junit:
        _write(junit, to_junit(suites), inputs=inputs)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        _write(summary, markdown + "\n", append=True)
    if as_json:
        render.print_json(doc)


def _print_verify(rep: object) -> None:
    from bitconv.verify.report import summary_lines

    render.table(f"bitconv verify {rep.out} (REF {rep.ref})", ["check", "result"],
                 [list(r) for r in summary_lines(rep)])
    if rep.findings:
        render.table("findings", ["severity", "check", "fault", "message"],
                     [[f.severity, f.check, f.fault, f.message] for f in rep.findings])
    if rep.parity is not None and rep.parity.widened:
        render.out.print("parity limits widened to the floor model (pass --strict to apply them as given): "
                         + "; ".join(lim.note for lim in rep.parity.widened))
    render.out.print(f"{'PASS' if rep.ok else 'FAIL'}: {len(rep.errors)} error(s) in {rep.seconds:.1f} s")


@app.command("verify", epilog=VERIFY_EPILOG)
@handle_errors
def verify_command(
    out: Annotated[Path, typer.Argument(help="artifact to verify: HF packed or bitconv ternary folder, a .gguf, or a "
                                        "folder holding one .gguf", show_default=False)],
    ref: RefOpt,
    json: JsonOpt = False, report: ReportOpt = None, junit: JunitOpt = None,
    prompt: Annotated[str | None, typer.Option("--prompt", help="parity on this text, through the checkpoint's "
                                               "tokenizer", show_default=False)] = None,
    tokens: Annotated[Path | None, typer.Option("--tokens", help="parity on the token ids in FILE (JSON or one "
                                                "sequence per line)", show_default=False)] = None,
    parity: ParityOpt = True,
    max_rel_dlogit: MaxRelOpt = None, max_dlogit: MaxAbsOpt = None, max_kl: MaxKlOpt = None,
    min_top1: Top1Opt = None, min_top5: Top5Opt = None, strict: StrictOpt = False,
    runtime: Annotated[str | None, typer.Option("--runtime", help="also run OUT (a GGUF) in this runtime and judge "
                                                "its logits: llama.cpp (needs pip install 'bitconv[llamacpp]')",
                                                show_default=False)] = None,
    bitlinear: Annotated[str, typer.Option("--bitlinear", help="BitLinear arithmetic to emulate: compiled "
                                           "(transformers' default) or eager (TORCHDYNAMO_DISABLE=1)")] = "compiled",
    token: TokenOpt = None, revision: RevisionOpt = None,
) -> None:
    """Prove OUT right against its bf16 master: tensor round trip, compute mode, logit parity. Exit 1 on a fault."""
    from bitconv.verify.report import verify_markdown, verify_suite

    limits = _limits(max_rel_dlogit, max_dlogit, max_kl, min_top1, min_top5)
    with render.progress("verify", not json, unit="steps") as cb:
        rep = api.verify(out, ref, parity=parity, prompt=prompt, tokens=tokens, bitlinear=bitlinear, token=token,
                         revision=revision, runtime=runtime, strict=strict,
                         progress=(lambda stage, i, n: cb(i, n, stage)) if cb else None, **limits)
    _emit("verify", rep, json, report, junit, [verify_suite(rep)], verify_markdown(rep),
          (out, ref, *((tokens,) if tokens else ())))
    if not json:
        _print_verify(rep)
    raise typer.Exit(rep.exit_code)


def _ok_note(rep: object) -> str:
    if rep is None:
        return "ok"
    note = f"ok: verified, codes made with {rep.roundtrip.compute or '-'}"
    return note + (f", logits top-1 {rep.parity.out_vs_ref.top1:.0%}" if rep.parity else "")


def _print_check(rep: object) -> None:
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


@app.command("check", epilog=CHECK_EPILOG)
@handle_errors
def check_command(
    path: Annotated[Path, typer.Argument(help="model repository folder (or one checkpoint)", show_default=False)],
    ref: Annotated[str | None, typer.Option("--ref", help="the master every artifact is verified against: a folder, "
                                            "a file or a Hub repo id (default: the one master under PATH)",
                                            show_default=False)] = None,
    config_only: Annotated[bool, typer.Option("--config-only", help="check configs only; artifacts are not "
                                              "verified (and not failed for it)")] = False,
    json: JsonOpt = False, report: ReportOpt = None, junit: JunitOpt = None, parity: ParityOpt = True,
    max_rel_dlogit: MaxRelOpt = None, max_dlogit: MaxAbsOpt = None, max_kl: MaxKlOpt = None,
    min_top1: Top1Opt = None, min_top5: Top5Opt = None, strict: StrictOpt = False,
    runtime: Annotated[str | None, typer.Option("--runtime", help="every GGUF artifact must also run correctly in "
                                                "this runtime: llama.cpp (needs pip install 'bitconv[llamacpp]'); "
                                                "a GGUF it cannot load fails", show_default=False)] = None,
    token: TokenOpt = None,
    revision: Annotated[str | None, typer.Option("--revision", help="revision (branch, tag or commit) of a Hub "
                                                 "repo-id --ref (same as REF@REV)", show_default=False)] = None,
) -> None:
    """CI for a model repo: every checkpoint's config, and every artifact verified against one named master.
    Exit 0 only when every artifact was verified and passed; 1 when one failed or could not be verified."""
    from bitconv.verify.check import check_markdown, check_suites

    say = None if json else (lambda p: render.err.print(f"· verifying {p}", markup=False))
    rep = api.check(path, ref=ref, config_only=config_only, parity=parity, strict=strict, runtime=runtime,
                    token=token, revision=revision, on_item=say,
                    **_limits(max_rel_dlogit, max_dlogit, max_kl, min_top1, min_top5))
    _emit("check", rep, json, report, junit, check_suites(rep), check_markdown(rep), (path, *((ref,) if ref else ())))
    if not json:
        _print_check(rep)
    raise typer.Exit(rep.exit_code)
