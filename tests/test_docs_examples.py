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


# ------------------------------------------------------------------------------------------------ running them


def runs(path: Path) -> list[tuple[str, int]]:
    """(command line, expected exit code) for every `bitconv` line, in order. A console block shows what the line
    printed, and that decides: an `error:` line means exit 2, a `FAIL:` line exit 1, otherwise 0. In `a && b` every
    part but the last must exit 0. Lines of a bash block exit 0."""
    out: list[tuple[str, int]] = []
    for lang, block in BLOCK.findall(path.read_text()):
        lines = [ln.strip() for ln in block.splitlines()]
        for i, line in enumerate(lines):
            if lang == "console" and not line.startswith("$ "):
                continue
            shown = []
            for nxt in lines[i + 1:] if lang == "console" else []:
                if nxt.startswith("$ "):
                    break
                shown.append(nxt)
            code = 2 if any(s.startswith("error:") for s in shown) else 1 if any(s.startswith("FAIL:") for s in
                                                                                   shown) else 0
            parts = [p for p in re.split(r"\s+&&\s+|;\s+", line.removeprefix("$ ")) if p.startswith("bitconv ")]
            for j, part in enumerate(parts):
                out.append((part + (f"  {NETWORK}" if NETWORK in line and NETWORK not in part else ""),
                            code if j == len(parts) - 1 else 0))
    return out


def _nanotron(tmp: Path, name: str, into: Path) -> Path:
    import shutil
    import tarfile

    if not (tmp / "_nt").exists():
        with tarfile.open(ROOT / "fixtures" / "nanotron" / "tiny_nanotron_ckpts.tar.gz") as tar:
            tar.extractall(tmp / "_nt", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    into.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(tmp / "_nt" / name, into)
    return into


def _setup_verify(tmp: Path, env: dict) -> None:
    from bitconv import api

    master = tiny.make_tiny(tmp / "bitnet-bf16", "bitnet-2b4t")
    for alias in ("MASTER", "BF16_MASTER"):  # links: `check .` finds the one master
        (tmp / alias).symlink_to(master.name)
    api.pack(master, tmp / "OUT", to="hf")
    api.pack(master, tmp / "model-i2_s.gguf", to="gguf", type="i2_s")
    (tmp / "ids.json").write_text("[[1, 2, 3, 4, 5, 6, 7, 8]]")


def _setup_ci(tmp: Path, env: dict) -> None:
    """A model repository: the master and one artifact."""
    from bitconv import api

    master = tiny.make_tiny(tmp / "bitnet-bf16", "bitnet-2b4t")
    api.pack(master, tmp / "bitnet-packed", to="hf")


def _setup_ik(tmp: Path, env: dict) -> None:
    from bitconv import api

    master = tiny.make_tiny(tmp / "bitnet-b1.58-2B-4T-bf16", "bitnet-2b4t")
    (tmp / "bitnet-bf16").symlink_to(master.name)
    api.pack(master, tmp / "bitnet-packed", to="hf")
    api.pack(master, tmp / "ggml-model-i2_s.gguf", to="gguf", type="i2_s")


def _setup_nanotron_cli(tmp: Path, env: dict) -> None:
    _nanotron(tmp, "bitnet_tp1", tmp / "checkpoints" / "10000")
    tiny.make_tiny(tmp / "llama-bitnet-bf16", "llama-bitnet")
    tiny.make_tiny(tmp / "llama-bf16", "llama-bitnet")


def _setup_nanotron(tmp: Path, env: dict) -> None:
    from bitconv import api

    ckpt = _nanotron(tmp, "bitnet_tp1", tmp / "ckpt")
    api.convert(ckpt, tmp / "training", to="hf-bf16", purpose="training")


def _setup_runtime(tmp: Path, env: dict) -> None:
    from bitconv import api

    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'bitconv[llamacpp]')")
    master = tiny.make_tiny(tmp / "bitnet-bf16", "1bitllm")  # a model upstream llama.cpp runs (silu, arch bitnet)
    api.pack(master, tmp / "model-tq2_0.gguf", to="gguf", type="tq2_0")


def _setup_hub(tmp: Path, env: dict) -> None:
    """A loopback Hub emulator (tests/hubemu.py) holding the repos the examples name; `me` is logged in."""
    from bitconv import api
    from tests.hubemu import HubEmulator

    master = tiny.make_tiny(tmp / "_src" / "bf16", "bitnet-2b4t")
    gguf = api.pack(master, tmp / "model-i2_s.gguf", to="gguf", type="i2_s").out
    emu = HubEmulator(users={TOKEN: "me"}, max_seconds=600).start()
    files = {p.name: p for p in master.iterdir() if p.is_file()}
    repo = emu.add_repo("microsoft/bitnet-b1.58-2B-4T-bf16", files)
    repo.refs["refs/pr/3"] = repo.refs["main"]
    emu.add_repo("microsoft/bitnet-b1.58-2B-4T-gguf", {"ggml-model-i2_s.gguf": gguf})
    repo = emu.add_repo("owner/repo", {f"subfolder/{n}": p for n, p in files.items()})
    repo.refs["v1.0"] = repo.refs["main"]  # the emulator has no tags: a branch of that name stands in
    home = tmp / "_hf"
    env.update(HF_ENDPOINT=emu.url, HF_HUB_DISABLE_XET="1", HF_HOME=str(home), HF_HUB_CACHE=str(home / "hub"),
               HF_TOKEN=TOKEN, NO_PROXY="127.0.0.1,localhost", HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_OFFLINE="0")
    env["_emulator"] = emu


TOKEN = "hf_docsExampleToken0123456789"
# sizes of a real model in an example, and what the tiny model has instead
TINY_SIZES = {"docs/nanotron-cli.md": {"--vocab-size 32000": "--vocab-size 64"}}  # its 64 embedding rows
MASTER_ONLY = ("README.md", "docs/json.md", "docs/formats.md")
SETUP = {"docs/ci.md": _setup_ci, "docs/verify.md": _setup_verify, "docs/ik_llama.md": _setup_ik,
         "docs/nanotron-cli.md": _setup_nanotron_cli, "docs/nanotron.md": _setup_nanotron,
         "docs/runtime.md": _setup_runtime, "docs/hub.md": _setup_hub}


def test_every_document_with_examples_is_run():
    """A new page with `bitconv` examples must get a sandbox here (or be one of the master-only pages)."""
    with_examples = {str(d.relative_to(ROOT)) for d in DOCS if examples(d)}
    assert with_examples == set(MASTER_ONLY) | set(SETUP), with_examples


def _out_exists(words: list[str], cwd: Path) -> bool:
    """`-o X` names something the sandbox already holds (a setup made it, or an earlier example)."""
    for flag in ("-o", "--out"):
        if flag in words[:-1]:
            target = words[words.index(flag) + 1]
            return not target.endswith("/") and (cwd / target).exists()
    return False


@pytest.mark.slow
@pytest.mark.parametrize("doc", [*MASTER_ONLY, *SETUP])
def test_examples_run_on_the_tiny_model(doc, tmp_path):
    """Every `bitconv` line of the page runs, in order, in a sandbox holding the tiny model under the names the page
    uses, and exits as the page shows. An output an earlier line or the setup made is replaced (`--overwrite`);
    a line with a `# needs a Hub login` comment is left out (docs/hub.md's run against the loopback emulator)."""
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "COLUMNS": "100"}
    (tmp_path / "models").mkdir()
    if doc in MASTER_ONLY:
        for name in ("bitnet-bf16", "bitnet-b1.58-2B-4T-bf16", "falcon-e-prequantized"):
            tiny.make_tiny(tmp_path / name, "bitnet-2b4t", hidden_size=512)  # K = 512: a TL2 tiling bitnet.cpp runs
    else:
        SETUP[doc](tmp_path, env)
    emu = env.pop("_emulator", None)
    ran = 0
    try:
        for line, code in runs(ROOT / doc):
            if NETWORK in line:
                continue
            for real, small in TINY_SIZES.get(doc, {}).items():
                line = line.replace(real, small)
            words = _words(line)[1:]
            if _out_exists(words, tmp_path):
                words.append("--overwrite")
            p = subprocess.run([sys.executable, "-m", "bitconv", *words], cwd=tmp_path, capture_output=True,
                               text=True, env=env)
            assert p.returncode == code, f"{doc}: {line} (exit {p.returncode}, the page shows {code})\n{p.stderr}"
            ran += 1
    finally:
        if emu is not None:
            emu.stop()
    assert ran >= 1
