"""Reports of `verify` and `check` as JSON, JUnit XML (CI test results) and GitHub-flavoured markdown (for
$GITHUB_STEP_SUMMARY). Pure functions of the report dataclasses; the CLI decides where they go.

JUnit: one <testsuite> per verified artifact; one <testcase> per config check, per tensor of the round trip and
per logit comparison, a <failure type="FAULT" message="..."> where one failed.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from bitconv.verify import VerifyReport
from bitconv.verify.parity import ParityMetrics
from bitconv.verify.runtime import LoadFailure


@dataclass(frozen=True)
class Case:
    classname: str
    name: str
    failure: tuple[str, str] | None = None  # (type, message)
    seconds: float = 0.0


@dataclass(frozen=True)
class Suite:
    name: str
    cases: list[Case]
    seconds: float = 0.0
    out: str = ""  # <system-out>


def to_json(report: object) -> str:
    return json.dumps(report.to_dict(), indent=2, default=str) + "\n"


# ------------------------------------------------------------------------------------------------ verify


def _metrics(m: ParityMetrics) -> str:
    return (f"max |Δlogit| {m.max_dlogit:.4g} ({m.rel_dlogit:.2%} of range), mean KL {m.mean_kl:.3g}, "
            f"top-1 {m.top1:.1%}, top-5 {m.top5:.1%}")


def summary_lines(rep: VerifyReport) -> list[tuple[str, str]]:
    """(check, result) rows shared by the terminal table and the markdown summary."""
    rt = rep.roundtrip
    n_pass = len(rt.tensors) - rt.n_ternary
    rows = [("artifact", f"{rep.out_kind}" + (f" ({rep.out_layout})" if rep.out_layout else "") +
             f", {rep.family}"),
            ("round trip", f"{rt.n_ternary} ternary + {n_pass} passthrough tensors, {len(rt.failures)} failed; "
                           f"{rt.compute_note}; scale stored as {rt.scale_storage}")]
    p = rep.parity
    if p is not None:
        rows.append(("logits OUT vs REF", f"{_metrics(p.out_vs_ref)} on {len(p.tokens)}x{len(p.tokens[0])} "
                                          f"{p.token_source} tokens (REF {p.ref_mode}, OUT {p.out_mode})"))
        if p.out_vs_floor is not None:
            exact = "exact: " if p.out_vs_floor.max_dlogit == 0 else ""
            rows.append(("OUT vs floor", exact + _metrics(p.out_vs_floor) + " (floor = REF's codes in OUT's "
                                                                             "arithmetic)"))
            rows.append(("floor vs REF", _metrics(p.floor_vs_ref)))
        if p.out_vs_plain is not None:
            rows.append(("OUT vs plain bf16 (info)", _metrics(p.out_vs_plain)))
        if p.ref_vs_plain is not None:
            rows.append(("REF vs plain bf16 (info)", _metrics(p.ref_vs_plain)))
    r = rep.runtime
    if isinstance(r, LoadFailure):
        rows.append((f"{r.runtime} run", r.message()))
    elif r is not None:
        head = f"{r.version}, arch {r.arch}, {'/'.join(r.types)}"
        rows.append((f"{r.runtime} vs emulation", f"{_metrics(r.emulation.metrics)} (limit {r.emulation.limit:.2%}; "
                                                  f"{head})"))
        rows.append((f"{r.runtime} vs reference", f"{_metrics(r.reference.metrics)} (limit "
                                                  f"{r.reference.limit:.2%})"))
        rows.append(("emulation vs reference (info)", _metrics(r.emulation_vs_reference)))
        rows += [("runtime diagnosis", d) for d in r.diagnosis]
    return rows


def verify_suite(rep: VerifyReport) -> Suite:
    cases = [Case("bitconv.verify.config", "config", _config_failure(rep))]
    for t in rep.roundtrip.tensors:
        cases.append(Case(f"bitconv.verify.roundtrip.{t.kind}", t.name, (t.fault or "", t.message)
                          if not t.ok else None))
    if rep.parity is not None:
        p = rep.parity
        fail = ("logit-parity", "; ".join(p.failures)) if p.failures else None
        cases.append(Case("bitconv.verify.parity", "logits OUT vs REF", fail, p.seconds))
    if rep.runtime is not None:
        errs = [f for f in rep.findings if f.check == "runtime"]
        fail = (errs[0].fault, "; ".join(f.message for f in errs)) if errs else None
        cases.append(Case("bitconv.verify.runtime", f"{rep.runtime.runtime} logits", fail,
                          getattr(rep.runtime, "seconds", 0.0)))
    out = "\n".join(f"{k}: {v}" for k, v in summary_lines(rep))
    return Suite(f"verify {rep.out} against {rep.ref}", cases, rep.seconds, out)


def _config_failure(rep: VerifyReport) -> tuple[str, str] | None:
    errs = [f.message for f in rep.config if f.severity == "error"]
    return ("config", "; ".join(errs)) if errs else None


def _status(ok: bool) -> str:
    return "✅ pass" if ok else "❌ FAIL"


def verify_markdown(rep: VerifyReport) -> str:
    lines = [f"### bitconv verify {_status(rep.ok)}: `{rep.out}` against `{rep.ref}`", "",
             "| check | result |", "|---|---|"]
    lines += [f"| {k} | {_md(v)} |" for k, v in summary_lines(rep)]
    lines += _findings_md(rep.findings)
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _findings_md(findings: list) -> list[str]:
    if not findings:
        return []
    out = ["", "| severity | check | fault | message |", "|---|---|---|---|"]
    out += [f"| {f.severity} | {f.check} | {f.fault} | {_md(f.message)} |" for f in findings[:50]]
    if len(findings) > 50:
        out.append(f"| … | | | {len(findings) - 50} more |")
    return out


# ------------------------------------------------------------------------------------------------ JUnit


def to_junit(suites: list[Suite], name: str = "bitconv") -> str:
    root = ET.Element("testsuites", name=name, tests=str(sum(len(s.cases) for s in suites)),
                      failures=str(sum(1 for s in suites for c in s.cases if c.failure)),
                      time=f"{sum(s.seconds for s in suites):.3f}")
    for s in suites:
        el = ET.SubElement(root, "testsuite", name=s.name, tests=str(len(s.cases)),
                           failures=str(sum(1 for c in s.cases if c.failure)), errors="0", skipped="0",
                           time=f"{s.seconds:.3f}")
        for c in s.cases:
            tc = ET.SubElement(el, "testcase", classname=c.classname, name=c.name, time=f"{c.seconds:.3f}")
            if c.failure:
                f = ET.SubElement(tc, "failure", type=c.failure[0], message=c.failure[1])
                f.text = c.failure[1]
        if s.out:
            ET.SubElement(el, "system-out").text = s.out
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
