"""Shell examples in README.md and docs/ cannot rot.

1. Every `bitconv ...` line in a ```bash / ```console block names a real command and only options that command has.
2. The README quickstart and the docs/json.md example run, in order, on the tiny model (`bitconv.tiny.make_tiny`)
   in a sandbox; a line with a `# needs a Hub login` comment is allow-listed (it would reach the network).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.main import get_command

from bitconv import tiny
from bitconv.cli import app

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NETWORK = "# needs a Hub login"
BLOCK = re.compile(r"```(bash|console|sh)\n(.*?)```", re.S)


def examples(path: Path) -> list[str]:
    """`bitconv` command lines: every line of a bash block, the `$ ` lines of a console block (the rest is output);
    `a && b` and `a; b` give two lines."""
    out = []
    for lang, block in BLOCK.findall(path.read_text()):
        for line in block.splitlines():
            line = line.strip()
            if lang == "console" and not line.startswith("$ "):
                continue
            for part in re.split(r"\s+&&\s+|;\s+", line.removeprefix("$ ")):
                if part.startswith("bitconv "):
                    out.append(part + (f"  {NETWORK}" if NETWORK in line and NETWORK not in part else ""))
    return out


def _words(line: str) -> list[str]:
    return shlex.split(line.split(" #", 1)[0], posix=True)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_example_uses_real_commands_and_options(doc):
    group = get_command(app)
    for line in examples(doc):
        words = _words(line)
        cmd = group.commands.get(words[1]) if len(words) > 1 else None
        if words[1] in ("-h", "--help", "-V", "--version"):
            continue
        assert cmd is not None, f"{doc.name}: unknown command in: {line}"
        known = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"-h", "--help"}
        for w in words[2:]:
            if w.startswith("-") and not re.fullmatch(r"-\d.*", w):
                assert w.split("=", 1)[0] in known, f"{doc.name}: {w} is not an option of `bitconv {words[1]}`: {line}"


def test_documents_have_examples():
    assert len(examples(ROOT / "README.md")) >= 4 and sum(len(examples(d)) for d in DOCS) >= 40


@pytest.mark.slow
@pytest.mark.parametrize("doc", ["README.md", "docs/json.md"])
def test_quickstart_examples_run_on_the_tiny_model(doc, tmp_path):
    tiny.make_tiny(tmp_path / "bitnet-bf16", "bitnet-2b4t")
    (tmp_path / "models").mkdir()
    ran = 0
    for line in examples(ROOT / doc):
        if NETWORK in line:
            continue
        p = subprocess.run([sys.executable, "-m", "bitconv", *_words(line)[1:]], cwd=tmp_path, capture_output=True,
                           text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                                           "COLUMNS": "100"})
        assert p.returncode == 0, f"{doc}: {line}\n{p.stderr}"
        ran += 1
    assert ran >= 1
