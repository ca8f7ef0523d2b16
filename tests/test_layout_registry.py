"""A layout is one file (issue 10 item 1): every fact of a format lives in its layout module, and every other table is
derived from the registry.

* No module outside `bitconv/layouts/` and the GGUF container (`bitconv/formats/gguf/`) names a GGML type of a
  layout (anywhere in its text), a layout name or `--type` spelling as a string constant, or imports a layout module.
* The container's type rows and sizes agree with each layout's `spec` (one size formula, registered by the layout).
* The trial: a scratch copy of the package gets one new file, a second I2_S type id; pack, inspect, the targets, the
  container's sizes, the demo's list, `check`'s layouts and `bitconv layouts` all pick it up with no other edit.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from bitconv.core.tensors import Ternary
from bitconv.formats.gguf.ggml_types import FILE_TYPES, GGML_TYPES
from bitconv.formats.gguf.types import by_id, tensor_nbytes
from bitconv.layouts import (
    deploy_layouts,
    encode_scale,
    get_layout,
    gguf_layouts,
    hf_layouts,
    layout_class,
    layout_classes,
    list_layouts,
)
from bitconv.sources.checkpoint import KINDS

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "bitconv"
OWNERS = ("bitconv/layouts/", "bitconv/formats/gguf/")  # the only places that may name a layout's facts
# The GGML types of issue 10 (fixed, so the scan cannot pass by an empty registry), plus every registered one.
KNOWN_TYPES = ("I2_S", "TL1", "TL2", "TL2_42", "TQ1_0", "TQ2_0", "IQ1_BN", "IQ2_BN", "IQ2_BN_R4")
# Modules of bitconv.layouts the rest of the package may import: the registry (through the package), the runtime
# compatibility table and the kernel tiling format; never one layout's own module.
SHARED_LAYOUT_MODULES = {"bitconv.layouts", "bitconv.layouts.registry", "bitconv.layouts.runtimes",
                         "bitconv.layouts.kernel_config"}


def _outside(root: Path = PKG) -> list[Path]:
    return [p for p in sorted(root.rglob("*.py"))
            if not p.relative_to(root.parent).as_posix().startswith(OWNERS)]


def ggml_names() -> set[str]:
    return set(KNOWN_TYPES) | {r.name for c in layout_classes() for r in c.ggml_rows()}


def type_name_hits(text: str, names: set[str]) -> list[str]:
    pat = re.compile(r"(?<![A-Za-z0-9_])(" + "|".join(sorted(map(re.escape, names), key=len, reverse=True))
                     + r")(?![A-Za-z0-9_])")
    return [f"{text.count(chr(10), 0, m.start()) + 1}: {m[1]}" for m in pat.finditer(text)]


def _norm(s: str) -> str:
    return s.strip().lower().replace("_", "-")


def layout_spellings() -> set[str]:
    """Every layout name and `--type` key, normalized; a checkpoint kind that shares a layout's name is not one."""
    out = {_norm(n) for n in list_layouts()} | {_norm(k) for k in gguf_layouts()}
    return out - {_norm(k) for k in KINDS}


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def constant_hits(source: str, spellings: set[str]) -> list[str]:
    """String constants (not docstrings) that spell a layout or a --type, and imports of a layout's own module."""
    tree = ast.parse(source)
    docs = _docstrings(tree)
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs \
                and _norm(node.value) in spellings:
            hits.append(f"{node.lineno}: {node.value!r}")
        mods = ([node.module] if isinstance(node, ast.ImportFrom) and node.module else
                [a.name for a in node.names] if isinstance(node, ast.Import) else [])
        if isinstance(node, ast.ImportFrom) and node.module == "bitconv.layouts":
            mods = [f"bitconv.layouts.{a.name}" for a in node.names if (PKG / "layouts" / f"{a.name}.py").exists()] \
                or mods
        hits += [f"{node.lineno}: import {m}" for m in mods
                 if m.startswith("bitconv.layouts") and m not in SHARED_LAYOUT_MODULES]
    return sorted(hits, key=lambda h: int(h.split(":")[0]))


# ------------------------------------------------------------------------------------------------ the scans


def test_scans_can_fail():
    names, spell = ggml_names(), layout_spellings()
    assert type_name_hits('x = "IQ2_BN_R4"  # and TL2\nI2_SX = 1\n', names) == ["1: IQ2_BN_R4", "1: TL2"]
    src = 'T = {"i2_s": 1, "gguf-tq2-0": 2}\nfrom bitconv.layouts.gguf_tl import SIG\nfrom bitconv.layouts import ' \
          'gguf_i2s, get_layout\n'
    assert constant_hits(src, spell) == ["1: 'i2_s'", "1: 'gguf-tq2-0'", "2: import bitconv.layouts.gguf_tl",
                                         "3: import bitconv.layouts.gguf_i2s"]
    assert constant_hits('"""i2_s"""\nx = "bitconv-ternary"\n', spell) == []  # docstring; a checkpoint kind


def test_no_ggml_type_name_outside_layouts_and_container():
    names = ggml_names()
    found = {p.relative_to(ROOT).as_posix(): h for p in _outside()
             if (h := type_name_hits(p.read_text(encoding="utf-8"), names))}
    assert found == {}, "GGML type names belong to their layout file (bitconv/layouts/): " + json.dumps(found)


def test_no_layout_constant_outside_layouts_and_container():
    spell = layout_spellings()
    found = {p.relative_to(ROOT).as_posix(): h for p in _outside()
             if (h := constant_hits(p.read_text(encoding="utf-8"), spell))}
    assert found == {}, "derive these from bitconv.layouts' registry: " + json.dumps(found)


# ------------------------------------------------------------------------------------------------ derived tables


LEGAL = (256, 512)  # out, in: every layout holds it (TL tilings derived)


@pytest.mark.parametrize("key", sorted(gguf_layouts()))
def test_container_rows_and_sizes_are_the_layouts(key):
    cls = gguf_layouts()[key]
    lay = get_layout(cls.name)
    rows = cls.ggml_rows()
    assert rows[0].name == cls.ggml_type and [r.name for r in rows[1:]] == list(cls.ggml_aliases)
    for r in rows:
        assert GGML_TYPES[r.name] is r or GGML_TYPES[r.name] == r
        assert by_id(r.id, "bitnet.cpp" if r.dialect == "bitnet.cpp" else "upstream") == r
        assert FILE_TYPES[r.name] == cls.file_type
        dims = lay.gguf_dims(LEGAL)
        assert dims == (512, 256)
        assert tensor_nbytes(r, dims) == lay.spec(LEGAL)["data"].nbytes  # one size: the layout's
    assert key == cls.name.removeprefix("gguf-").replace("-", "_")


def test_hf_and_deploy_tables_are_derived():
    assert hf_layouts() == {"autobitlinear": "hf-autobitlinear", "bitlinear": "hf-bitlinear"}
    assert deploy_layouts() == ("gguf-i2-s", "gguf-tq2-0", "hf-autobitlinear")
    assert sorted(gguf_layouts()) == ["i2_s", "iq1_bn", "iq2_bn", "iq2_bn_r4", "tl1", "tl2", "tq1_0", "tq2_0"]


@pytest.mark.parametrize("name", list_layouts())
def test_stored_scale_is_what_unpack_gives(name):
    """The scale rule `verify` expects (`Layout.stored_scale`) is the one pack/unpack apply: one decoder."""
    lay = get_layout(name)
    codes = np.ones(LEGAL, dtype=np.int8)
    for scale in (0.0159, 0.5, 1e-3 / 3):
        t = Ternary(codes, np.float32(scale))
        got = lay.unpack(lay.pack(t), LEGAL).scale
        assert np.float32(got) == layout_class(name).stored_scale(scale), (name, scale)


def test_one_scale_rule_for_bitlinear():
    """1/scale in bf16 (bitlinear): encode then decode, RNE; the stored bits are the transformers bits."""
    bits = encode_scale(0.0159, "BF16", inverted=True)
    assert bits.dtype == np.uint16 and int(bits[0]) == 0x427C  # 1/0.0159 = 62.89 -> bf16 63.0 (spacing 0.25)
    assert layout_class("hf-bitlinear").stored_scale(0.0159) == np.float32(1.0) / np.float32(63.0)
    assert layout_class("hf-autobitlinear").stored_scale(0.0159) == np.float32(0.015869140625)  # bf16(0.0159)


# ------------------------------------------------------------------------------------------------ the trial

TRIAL_LAYOUT = '''
"""Trial (tests/test_layout_registry.py): I2_S bytes under a second, private GGML type id."""

from typing import ClassVar

from bitconv.layouts.gguf_i2s import GGUFI2S
from bitconv.layouts.runtimes import BITNET_2026_01


class GGUFI2STrial(GGUFI2S, name="gguf-i2-s-trial", container="gguf"):
    description = "trial: bitnet.cpp I2_S bytes under type id 200"
    ggml_type: ClassVar[str] = "I2_S_TRIAL"
    ggml_type_id: ClassVar[int] = 200
    file_type: ClassVar[int] = 240
    deploy_check = True
    runtime_support = {"I2_S_TRIAL": {BITNET_2026_01: ""}}
'''

TRIAL_SCRIPT = '''
import json, sys
from pathlib import Path

import numpy as np

import bitconv.demo as demo
from bitconv import api, tiny
from bitconv.describe import describe
from bitconv.formats.gguf import read_gguf
from bitconv.formats.gguf.types import by_id, tensor_nbytes
from bitconv.layouts import list_layouts
from bitconv.sinks.gguf import GGUF_TARGETS, pack_gguf, plan_pack_gguf
from bitconv.sources import open_source
from bitconv.verify.check import DEPLOY_LAYOUTS

w = Path(sys.argv[1])
m = tiny.make_tiny(w / "m", "bitnet-2b4t", hidden_size=256, intermediate_size=512, num_layers=1)
src = open_source(m)
plan = plan_pack_gguf(src, "i2_s_trial")
ref = pack_gguf(m, w / "ref.gguf", "i2_s")
rep = pack_gguf(m, w / "trial.gguf", "i2_s_trial")
g, r = read_gguf(w / "trial.gguf"), read_gguf(w / "ref.gguf")
proj = [n for n, t in g.tensors.items() if t.type.name == "I2_S_TRIAL"]
out = {
    "layouts": "gguf-i2-s-trial" in list_layouts(),
    "api_layouts": [d["name"] for d in api.layouts() if d["name"].endswith("trial")],
    "target": GGUF_TARGETS["i2_s_trial"].layout,
    "plan_types": sorted({s.type_name for s in plan.steps}),
    "file_type": g.get("general.file_type"),
    "ids": sorted({g.tensors[n].type.id for n in proj}),
    "n_proj": len(proj),
    "same_bytes": all(g.read(g.tensors[n]).tobytes() == r.read(r.tensors[n]).tobytes() for n in proj),
    "size": tensor_nbytes(by_id(200, "bitnet.cpp"), (256, 512)),
    "dialect": g.dialect,
    "inspect": describe(w / "trial.gguf").layout,
    "decoded_equal": all(np.array_equal(t.ternary().codes, open_source(w / "ref.gguf").tensors[t.name].ternary().codes)
                         for t in open_source(w / "trial.gguf").ternary_tensors()),
    "demo": "i2_s_trial" in demo.GGUF_STEPS,
    "check": "gguf-i2-s-trial" in DEPLOY_LAYOUTS,
    "report_target": rep.target,
    "runs_on": rep.extra["runs_on"],
    "inspect_runs_on": describe(w / "trial.gguf", stats=False).runtimes["runs_on"],
}
print(json.dumps(out))
'''


def test_trial_layout_is_one_file(tmp_path):
    """A new GGUF layout in a scratch copy touches one file: the copy differs from the package by that file only,
    and every derived table, pack, the reader and inspect know the new type."""
    copy = tmp_path / "copy"
    shutil.copytree(PKG, copy / "bitconv", ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "bitconv" / "layouts" / "gguf_i2s_trial.py").write_text(TRIAL_LAYOUT, encoding="utf-8")
    before = {p.relative_to(PKG).as_posix() for p in PKG.rglob("*.py") if "__pycache__" not in p.parts}
    after = {p.relative_to(copy / "bitconv").as_posix() for p in (copy / "bitconv").rglob("*.py")}
    assert after - before == {"layouts/gguf_i2s_trial.py"} and before <= after
    env = dict(os.environ, PYTHONPATH=str(copy), BITCONV_DEBUG="1")
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(TRIAL_SCRIPT), str(tmp_path / "w")], env=env,
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got == {
        "layouts": True, "api_layouts": ["gguf-i2-s-trial"], "target": "gguf-i2-s-trial",
        "plan_types": ["F16", "F32", "I2_S_TRIAL"], "file_type": 240, "ids": [200], "n_proj": 7,
        "same_bytes": True, "size": 256 * 512 // 4 + 32, "dialect": "bitnet.cpp", "inspect": "gguf-i2-s-trial",
        "decoded_equal": True, "demo": True, "check": True, "report_target": "gguf-i2-s-trial",
        "runs_on": "runs on: bitnet.cpp 2026-01 (1876a3e)", "inspect_runs_on": "runs on: bitnet.cpp 2026-01 (1876a3e)",
    }


# ------------------------------------------------------------------------------------------------ one decoder


@pytest.mark.parametrize("target", ["bitlinear", "autobitlinear", "i2_s", "tq2_0", "ternary"])
def test_sources_decode_only_through_the_layouts_unpack(models, tmp_path, monkeypatch, target):
    """Issue 10 item 2: opening a packed artifact decodes every ternary tensor by its layout's `unpack` (a spy sees
    each one), and the scale that comes back is the layout's stored scale of the master's (bitlinear: 1/scale)."""
    from bitconv import pipeline
    from bitconv.sinks import gguf as gguf_sink
    from bitconv.sources import open_source

    master = models("bitnet-2b4t")
    out = tmp_path / "out"
    if target in hf_layouts():
        pipeline.pack_hf(master, out, linear_class=target)
        name = hf_layouts()[target]
    elif target == "ternary":
        pipeline.quantize(master, out)
        name = open_source(out).layout
    else:
        out = tmp_path / "out.gguf"
        gguf_sink.pack_gguf(master, out, target)
        name = gguf_layouts()[target].name
    cls = layout_class(name)
    calls: list[str | None] = []
    real = cls.unpack

    def spy(self, fields, shape, tensor=None):  # noqa: ANN001, ANN202
        calls.append(tensor)
        return real(self, fields, shape, tensor)

    monkeypatch.setattr(cls, "unpack", spy)
    ck, ref = open_source(out), open_source(master)
    assert ck.layout == name
    got = {t.name: t.ternary() for t in ck.ternary_tensors()}
    assert len(calls) == len(got) == 7 * 2  # two layers of seven projections, each decoded once, by the layout
    for n, t in got.items():
        want = ref.tensors[n].ternary()
        assert np.array_equal(t.codes, want.codes)
        assert t.scale == cls.stored_scale(want.scale), n


def test_runtime_types_come_from_the_layouts():
    """Which runtime computes which ternary type is declared by the layouts; the derived sets are the measured ones."""
    from bitconv.layouts.runtimes import RUNTIMES

    floats = ["BF16", "F16", "F32"]
    fork = ["I2_S", "TL1", "TL2", "TQ1_0", "TQ2_0"]
    assert {r.key: sorted(r.all_types()) for r in RUNTIMES} == {
        "llama.cpp@0c1e570": [*floats, "TQ1_0", "TQ2_0"],
        "bitnet.cpp@37c247c": [*floats, *fork], "bitnet.cpp@1876a3e": [*floats, *fork],
        "bitnet.cpp@425fbbc": [*floats, "I2_S", "TL1", "TL2_42", "TQ1_0", "TQ2_0"],
        "ik_llama.cpp@8337e4cd": [*floats, "IQ1_BN", "IQ2_BN", "IQ2_BN_R4"],
    }
    assert all(set(r.types) == set(floats) for r in RUNTIMES)  # the runtime table names no ternary type
    llama = RUNTIMES[0]
    assert llama.why_not("TL2_42") == "type id 42 is Q2_0 upstream: TL2 bytes would be misread"
    assert llama.why_not("IQ2_BN_R4") == "does not compute IQ2_BN_R4"
