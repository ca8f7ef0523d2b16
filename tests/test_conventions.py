"""The CLI conventions of issue 14: -h/-V, one-line usage errors, one --json schema for every command, case-insensitive
choices, local path vs Hub id, llama.cpp-style GGUF output names, a fast --help, and the Python API at the root."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

import bitconv
from bitconv import api
from bitconv.cli import app
from bitconv.core.errors import OutputError, UsageError
from bitconv.sources import hub
from tests.test_hub import emu  # noqa: F401, F811  (the loopback Hub emulator fixture)

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "docs" / "bitconv-report.schema.json").read_text())
runner = CliRunner()


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def valid(r, command: str) -> dict:
    assert r.exit_code in (0, 1), r.output
    d = json.loads(r.stdout)  # exactly one document: json.loads refuses trailing text
    jsonschema.validate(d, SCHEMA)
    assert d["command"] == command
    return d


def one_line(r, *needles: str, code: int = 2) -> str:
    assert r.exit_code == code, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------------------------------ basics


def test_version_and_short_help():
    for flag in ("--version", "-V"):
        r = run(flag)
        assert r.exit_code == 0 and r.stdout.strip() == f"bitconv {bitconv.__version__}"
    for cmd in ("pack", "unpack", "quantize", "inspect", "verify", "check", "convert", "upload", "layouts", "demo"):
        r = run(cmd, "-h")
        assert r.exit_code == 0 and "Example: bitconv " in r.stdout, (cmd, r.output)
    assert "--install-completion" in run("-h").stdout
    assert "bitconv convert" in run("pack", "-h").stdout  # where the other jobs live


def test_usage_errors_are_one_line():
    one_line(run("pack"), "Missing argument", "bitconv pack -h")
    one_line(run("pack", "x", "--bogus"), "--bogus")
    one_line(run("nosuchcommand"), "No such command")


def test_schema_layout_names_are_the_registry():
    from bitconv.layouts import list_layouts

    assert SCHEMA["$defs"]["layout"]["enum"] == [None, *list_layouts()]


def test_schema_rejects_broken_documents():
    good = {"command": "layouts", "ok": True, "out": None, "layout": None, "files": [], "bytes": 0, "seconds": 0.1,
            "warnings": [], "schema_version": 1, "layouts": []}
    jsonschema.validate(good, SCHEMA)
    for broken in ({**good, "bytes": "12"}, {**good, "layout": "gguf-i2_s"}, {k: v for k, v in good.items()
                                                                               if k != "warnings"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, SCHEMA)


def test_help_does_not_import_heavy_libraries():
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom bitconv.cli import app\nfrom bitconv import api\n"
            "api.layouts()\nfor args in (['--help'], ['layouts'], ['layouts', '--json']):\n"
            "    assert CliRunner().invoke(app, args).exit_code == 0, args\n"
            "print(sorted(m for m in ('torch', 'transformers', 'gguf', 'huggingface_hub') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"


def test_python_api_at_the_root():
    import importlib

    for name in ("pack", "inspect", "convert", "upload", "quantize", "unpack", "check", "layouts"):
        fn = getattr(bitconv, name)
        assert fn is getattr(api, name) and fn.__doc__ and "Example" in fn.__doc__ or name in ("check", "layouts")
    importlib.import_module("bitconv.verify.check")  # the subpackage is loaded, bitconv.verify stays callable
    assert callable(bitconv.verify) and api.verify.__doc__


# ------------------------------------------------------------------------------------------------ --json everywhere


def test_every_command_json_matches_schema(models, tmp_path, monkeypatch):
    m = models()
    d = valid(run("quantize", m, "-o", tmp_path / "t", "--json"), "quantize")
    assert d["layout"] == "bitconv-ternary" and d["ternary_tensors"] == 14 and d["bytes"] > 0
    d = valid(run("pack", tmp_path / "t", "--to", "HF", "-o", tmp_path / "p", "--linear-class", "BitLinear",
                  "--json"), "pack")
    assert d["layout"] == "hf-bitlinear" and d["target"] == "hf"
    assert all(Path(f).is_file() for f in d["files"])
    d = valid(run("pack", m, "--to", "gguf", "--type", "I2_S", "-o", tmp_path / "m.gguf", "--json"), "pack")
    assert d["layout"] == "gguf-i2-s" and d["gguf"]["type"] == "I2_S"
    d = valid(run("pack", m, "--to", "gguf", "--type", "tq2_0", "-o", tmp_path / "x.gguf", "--dry-run", "--json"),
              "pack")
    assert d["dry_run"] is True and d["layout"] == "gguf-tq2-0" and not (tmp_path / "x.gguf").exists()
    valid(run("unpack", tmp_path / "p", "-o", tmp_path / "u", "--json"), "unpack")
    d = valid(run("inspect", tmp_path / "m.gguf", "--json"), "inspect")
    assert d["layout"] == "gguf-i2-s" and d["files"] == ["m.gguf"]
    assert d["bytes"] == (tmp_path / "m.gguf").stat().st_size
    d = valid(run("layouts", "--json"), "layouts")
    assert {x["name"] for x in d["layouts"]} >= {"gguf-i2-s", "hf-autobitlinear"}
    d = valid(run("verify", tmp_path / "p", "--ref", m, "--no-parity", "--json", "--report", tmp_path / "r.json"),
              "verify")
    assert d["ok"] and d["layout"] == "hf-bitlinear" and d["files"] == [str(tmp_path / "r.json")]
    assert json.loads((tmp_path / "r.json").read_text()) == d
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("p",):
        (repo / name).symlink_to(tmp_path / name)
    d = valid(run("check", tmp_path / "p", "--no-parity", "--json"), "check")
    assert isinstance(d["artifacts"], list)
    d = valid(run("upload", "alice/tiny", tmp_path / "p", "--dry-run", "--json"), "upload")
    assert d["dry_run"] is True and "README.md" in d["files"] and d["bytes"] > 0
    d = valid(run("demo", "--keep", tmp_path / "demo", "--json"), "demo")
    assert d["ok"] is True and d["steps"]


def test_convert_json_matches_schema(tmp_path):
    import tarfile

    with tarfile.open(ROOT / "fixtures" / "nanotron" / "tiny_nanotron_ckpts.tar.gz") as tar:
        tar.extractall(tmp_path / "nt", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    d = valid(run("convert", tmp_path / "nt" / "bitnet_tp1", "--to", "HF-BF16", "-o", tmp_path / "hf", "--json"),
              "convert")
    assert d["target"] == "hf-bf16" and d["layout"] is None and d["ternary_tensors"] > 0


# ------------------------------------------------------------------------------------------------ paths and ids


def test_local_path_or_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "bitnet-bf16").mkdir()
    for text in ("./a/b", "../a/b", "/a/b", "~/a/b", "models/bitnt-bf16"):
        assert not hub.is_repo_ref(text), text
    assert hub.is_repo_ref("microsoft/bitnet-b1.58-2B-4T")
    assert hub.parse_ref("https://huggingface.co/microsoft/bitnet-b1.58-2B-4T").repo_id == \
        "microsoft/bitnet-b1.58-2B-4T"
    ref = hub.parse_ref("https://huggingface.co/o/n/blob/v2/sub/m.gguf")
    assert (ref.repo_id, ref.revision, ref.path) == ("o/n", "v2", "sub/m.gguf")
    line = one_line(run("inspect", "models/bitnt-bf16"), "no such file or folder", "did you mean",
                    "models/bitnet-bf16")
    assert "Hub" not in line


def test_gguf_output_paths(models, tmp_path):
    m = models()
    out = tmp_path / "dir"
    out.mkdir()
    r = run("pack", m, "--to", "gguf", "--type", "tq1_0", "-o", f"{out}/", "--json")
    assert json.loads(r.stdout)["out"] == str(out / f"{m.name}-tq1_0.gguf")
    r = run("pack", m, "--to", "gguf", "--type", "tq1_0", "-o", out, "--model-name", "tiny", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["out"] == str(out / "tiny-tq1_0.gguf")
    from bitconv.sources.gguf import gguf_header

    assert gguf_header(out / "tiny-tq1_0.gguf").get("general.name") == "tiny"
    r = run("pack", m, "--to", "gguf", "--type", "tq1_0", "-o", tmp_path / "noext", "--json")
    assert json.loads(r.stdout)["out"] == str(tmp_path / "noext.gguf")
    assert run("inspect", tmp_path / "noext.gguf").exit_code == 0
    one_line(run("pack", m, "--to", "hf", "-o", tmp_path / "x.gguf"), "x.gguf", "not a .gguf file")
    one_line(run("pack", m, "--to", "nanotron", "-o", tmp_path / "n"), "bitconv convert")
    # a folder holding exactly one .gguf is that file
    (out / f"{m.name}-tq1_0.gguf").unlink()
    d = json.loads(run("inspect", out, "--json", "--no-stats").stdout)
    assert d["kind"] == "gguf" and d["files"] == ["tiny-tq1_0.gguf"]
    (out / "second.gguf").write_bytes(b"")  # two GGUFs: the folder is not a checkpoint
    assert run("inspect", out, "--no-stats").exit_code == 2


def test_gguf_out_path_rules(tmp_path):
    (tmp_path / "d").mkdir()
    assert api.gguf_out_path(tmp_path / "d", "m", "i2_s") == tmp_path / "d" / "m-i2_s.gguf"
    assert api.gguf_out_path(tmp_path / "a.GGUF", "m", "i2_s") == tmp_path / "a.GGUF"
    assert api.gguf_out_path(tmp_path / "a", "m", "i2_s") == tmp_path / "a.gguf"
    with pytest.raises(OutputError):
        api.gguf_out_path(f"{tmp_path}/missing/", "m", "i2_s")
    with pytest.raises(UsageError):
        api.gguf_out_path(tmp_path / "a.safetensors", "m", "i2_s")


def test_general_name_never_a_snapshot_hash(models, tmp_path):
    import shutil

    snap = tmp_path / "hub" / "models--microsoft--tiny-bitnet" / "snapshots" / ("0123abcd" * 5)
    shutil.copytree(models(), snap)
    from bitconv.sinks.gguf import model_name_of
    from bitconv.sources import open_source

    assert model_name_of(open_source(snap)) == "tiny-bitnet"


def test_case_insensitive_choices(models, tmp_path):
    assert api.choice("I2_S", ("i2_s", "tl1"), "--type") == "i2_s"
    with pytest.raises(UsageError, match="--type must be one of"):
        api.choice("i3_s", ("i2_s",), "--type")
    r = run("pack", models(), "--to", "GGUF", "--type", "TQ2_0", "-o", tmp_path / "a.gguf", "--compute", "Float32")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("arch, written", [("bitnet-2b4t", "tokenizer.json"), ("1bitllm", "tokenizer.model")])
def test_pack_from_gguf_to_hf_writes_the_tokenizer(models, tmp_path, arch, written):
    """`pack model.gguf --to hf` rebuilds the tokenizer from the GGUF's vocabulary: transformers loads it, every id
    maps to the GGUF's token, and text encodes to the ids the original model's tokenizer gives."""
    from transformers import AutoTokenizer

    from bitconv.formats.gguf.reader import read_gguf

    m = models(arch)
    assert run("pack", m, "--to", "gguf", "--type", "tq2_0", "-o", tmp_path / "m.gguf").exit_code == 0
    d = json.loads(run("pack", tmp_path / "m.gguf", "--to", "hf", "-o", tmp_path / "hf", "--json").stdout)
    jsonschema.validate(d, SCHEMA)
    assert d["warnings"] == []
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == sorted(
        ["config.json", "model.safetensors", written, "tokenizer_config.json"])
    tokens = read_gguf(tmp_path / "m.gguf").get("tokenizer.ggml.tokens")
    out, ref = AutoTokenizer.from_pretrained(tmp_path / "hf"), AutoTokenizer.from_pretrained(m)
    assert out.convert_ids_to_tokens(list(range(len(tokens)))) == list(tokens)
    for text in ("The capital of France is Paris.", "  two  spaces\n\nand 12345 ünïcödé 漢字", ""):
        assert out(text)["input_ids"] == ref(text)["input_ids"], text
    assert (out.bos_token, out.eos_token) == (ref.bos_token, ref.eos_token)
    # unpack of the same GGUF carries the tokenizer too
    assert run("unpack", tmp_path / "m.gguf", "-o", tmp_path / "bf16").exit_code == 0
    assert (tmp_path / "bf16" / written).is_file()


def test_pack_from_gguf_without_a_vocabulary_warns(models, tmp_path):
    m = models()
    assert run("pack", m, "--to", "gguf", "--type", "i2_s", "-o", tmp_path / "m.gguf").exit_code == 0
    data = (tmp_path / "m.gguf").read_bytes()
    key = b"tokenizer.ggml.model"
    at = data.index(key) + len(key) + 4 + 8  # the string value after the KV type and its length
    assert data[at:at + 4] == b"gpt2"
    (tmp_path / "m.gguf").write_bytes(data[:at] + b"bert" + data[at + 4:])  # a vocabulary bitconv cannot rebuild
    d = json.loads(run("pack", tmp_path / "m.gguf", "--to", "hf", "-o", tmp_path / "hf", "--json").stdout)
    jsonschema.validate(d, SCHEMA)
    assert len(d["warnings"]) == 1 and d["warnings"][0].startswith("m.gguf: no tokenizer written: the file holds no "
                                                                   "vocabulary bitconv can rebuild")
    assert not any((tmp_path / "hf" / n).exists() for n in ("tokenizer.json", "tokenizer.model"))


def test_progress_off_a_terminal_prints_a_line_every_few_seconds(capsys, monkeypatch):
    from bitconv.cli import render

    times = iter([0.0, 1.0, 6.0, 7.0, 12.0])
    monkeypatch.setattr("time.monotonic", lambda: next(times))
    cb = render._line_progress("pack", "bytes", every=5.0)  # t0 = 0
    cb(1 << 20, 4 << 20, "a")   # t = 1: too soon, nothing
    cb(2 << 20, 4 << 20, "b")   # t = 6: a line
    cb(3 << 20, 4 << 20, "c")   # t = 7: too soon
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["pack: 2.00 MiB / 4.00 MiB (50%), 341.33 KiB/s, ETA 6 s b"]


# ------------------------------------------------------------------------------------------------ terminal width

_ROWS = [["model.layers.0.self_attn.q_proj.weight", [2560, 2560], "uint8", "hf-autobitlinear", 1638400, "0.01234",
          "0.334"],
         ["model.embed_tokens.weight", [128256, 2560], "bfloat16", "-", 656670720, "-", "-"],
         ["lm_head.weight", [128256, 2560], "float16", "-", 656670720, "1.2e-07", "12.50%"]]
_PROSE = [["round trip", "14 ternary + 10 passthrough tensors, 0 failed; codes made with compute=float32 "
           "(transformers WeightQuant; bitconv's canonical recipe); scale stored as F32 (tolerance 1.2e-07 "
           "relative), 656670720 bytes, 3.75 GiB"]]
_NUMBER = re.compile(r"\d[\d.,e+-]*\d%?|\d")


def _numbers_intact(text: str, rows: list) -> None:
    """Every number of the cells (a word that is a number: 1638400, 1.2e-07, 12.50%, 2560 of a shape) is on one
    line of `text`, whole."""
    for r in rows:
        for cell in r:
            for tok in [w.strip("()[],;") for w in str(cell).split()]:
                if not _NUMBER.fullmatch(tok):
                    continue
                pat = re.compile(rf"(?<![\w.]){re.escape(tok)}(?![\w.])")
                assert any(pat.search(line) for line in text.splitlines()), (tok, text)


@pytest.mark.parametrize("width, shape", [(1000, "table"), (80, "table"), (60, "records")])
def test_tables_fit_the_width_and_never_split_a_number(width, shape):
    import io

    from bitconv.cli import render

    for rows, cols in ((_ROWS, ["name", "shape", "dtype", "layout", "bytes", "scale", "zeros"]),
                       (_PROSE, ["check", "result"])):
        buf = io.StringIO()
        con = render.SafeConsole(file=buf, width=width, highlight=False, soft_wrap=True)
        render.table("tensors", cols, rows, console=con)
        text = buf.getvalue()
        assert max(len(line) for line in text.splitlines()) <= width, text
        _numbers_intact(text, rows)
        if rows is _ROWS:
            assert ("┃ name" in text) == (shape == "table") and ("- name:" in text) == (shape == "records"), text
            if width == 1000:  # one line per row when there is room
                assert sum("│ model." in line for line in text.splitlines()) == 2, text
        else:  # two columns always fit: prose wraps between words
            assert "┃ check" in text and (width == 1000) == (len(text.splitlines()) == 6), text


@pytest.mark.parametrize("columns", ["1000", "80", "60"])
def test_columns_env_sets_the_table_width(columns):
    env = {**os.environ, "COLUMNS": columns, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "bitconv", "layouts"], capture_output=True, text=True, env=env,
                       cwd=ROOT)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert max(map(len, lines)) <= int(columns)
    assert max(map(len, lines)) > int(columns) - 10 or columns == "1000"  # the table uses the width it is given
    for row in bitconv.api.layouts():
        bits = f"{row['bits_per_weight_256x256']:.3f}"
        assert any(re.search(rf"(?<![\d.]){re.escape(bits)}(?![\d.])", line) for line in lines), (bits, p.stdout)


def test_width_is_columns_or_the_terminal():
    from bitconv.cli import render

    class Stream:
        def __init__(self, tty: bool) -> None:
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    old = os.environ.pop("COLUMNS", None)
    try:
        assert render._width(Stream(True)) is None  # a terminal: rich asks it for its real width
        assert render._width(Stream(False)) == 160  # a pipe or CI log
        os.environ["COLUMNS"] = "72"
        assert render._width(Stream(True)) == 72 and render._width(Stream(False)) == 72
    finally:
        os.environ.pop("COLUMNS", None)
        if old is not None:
            os.environ["COLUMNS"] = old


# ------------------------------------------------------------------------------------------------ progress


def test_hub_download_progress_off_a_terminal(models, emu, tmp_path, monkeypatch):  # noqa: F811
    """A repo-id SRC downloads through bitconv's own progress: off a terminal, `download:` lines with bytes, rate
    and ETA (the same format as local progress), ending at the snapshot's size; none of huggingface_hub's bars."""
    from bitconv.cli import render
    from tests.test_hub import _seed_source

    _seed_source(emu, models())
    monkeypatch.setattr(render, "LINE_EVERY", 0.0)  # every update prints its line
    r = run("pack", "microsoft/tiny-bitnet", "--to", "hf", "-o", tmp_path / "out")
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("download: ")]
    assert lines, r.stderr
    pat = re.compile(r"download: ([\d.]+ \w+) / ([\d.]+ \w+) \((\d+)%\), [\d.]+ \w+/s, ETA \d+ s "
                     r"microsoft/tiny-bitnet")
    assert all(pat.fullmatch(ln) for ln in lines), lines
    weights = (models() / "model.safetensors").stat().st_size
    done, total, pct = pat.fullmatch(lines[-1]).groups()
    assert done == total and pct == "100" and render.human_bytes(weights) == total, lines
    assert "Fetching" not in r.stderr and "it/s" not in r.stderr and "Download complete" not in r.stderr
    assert r.stdout.startswith("wrote ")


def test_hub_download_shares_the_terminal_bar(models, emu, tmp_path, monkeypatch):  # noqa: F811
    """On a terminal the download is a row of the command's own bar (rich allows one live display): pack from the
    Hub runs, and the bar showed a `download` row next to `pack`."""
    import io

    from bitconv.cli import render
    from tests.test_hub import _seed_source

    _seed_source(emu, models())
    seen: list[list[str]] = []
    real_bar = render._bar

    def bar():
        b = real_bar()
        orig = b.add_task

        def add_task(label, **kw):
            seen.append([label, *[t.description for t in b.tasks]])
            return orig(label, **kw)

        b.add_task = add_task
        return b

    monkeypatch.setattr(render, "_bar", bar)
    monkeypatch.setattr(render, "err", render.SafeConsole(file=io.StringIO(), force_terminal=True, width=100))
    r = run("pack", "microsoft/tiny-bitnet", "--to", "hf", "-o", tmp_path / "out")
    assert r.exit_code == 0, r.output
    assert seen == [["pack"], ["download", "pack"]] and not render._LIVE
    r = run("inspect", "microsoft/tiny-bitnet", "--no-stats")  # no bar of its own: the download starts one
    assert r.exit_code == 0, r.output
    assert seen[2:] == [] and not render._LIVE  # cached now: nothing to download, no bar


def test_every_command_taking_a_repo_id_takes_token_and_revision():
    from typer.main import get_command

    group = get_command(app)
    for name in ("quantize", "pack", "unpack", "inspect", "verify", "check", "convert", "upload"):
        opts = {o for p in group.commands[name].params for o in p.opts}
        assert {"--token", "--revision"} <= opts, name


def test_case_insensitive_runtime(monkeypatch):
    from bitconv.verify import check as check_mod

    seen = {}
    monkeypatch.setattr("bitconv.verify.verify", lambda out, ref, **kw: seen.setdefault("runtime", kw["runtime"]))
    api.verify("a", "b", runtime="LLAMA.CPP")
    assert seen["runtime"] == "llama.cpp"
    with pytest.raises(UsageError, match="--runtime must be one of llama.cpp, got 'vllm'"):
        check_mod.check(ROOT / "fixtures" / "golden" / "gguf-tq", runtime="vllm")


# ------------------------------------------------------------------------------------------------ README


def test_readme_structure():
    """At most 200 lines: what bitconv is (three lines), install, a quickstart with real output, the command table,
    where each file runs, the CI snippet (the Action), links that resolve."""
    text = (ROOT / "README.md").read_text()
    lines = text.splitlines()
    assert len(lines) <= 200
    intro = text.split("\n\n")[1]
    assert len(intro.splitlines()) <= 3 and "BitNet b1.58" in intro
    heads = [ln for ln in lines if ln.startswith("## ")]
    assert [h.split(":")[0] for h in heads] == ["## Install", "## Quickstart", "## Commands",
                                                "## Where each file runs", "## CI", "## Benchmarks",
                                                "## Layout of the code", "## Documentation"], heads
    install = text.split("## Install")[1].split("## ")[0]
    assert "pip install bitconv" in install and install.count("python3 -m venv .venv") == 2
    quick = text.split("## Quickstart")[1].split("## ")[0]
    block = re.search(r"```console\n(.*?)```", quick, re.S)[1].splitlines()
    assert sum(ln.startswith("$ bitconv ") for ln in block) >= 4 and sum(ln.startswith("wrote ") for ln in block) >= 2
    assert re.search(r"uses: [\w.-]+/bitconv@v\d", text.split("## CI")[1])
    bench = text.split("## Benchmarks")[1].split("\n## ")[0]  # issue 15: the table shows the three sizes
    assert all(f"| {size}" in bench for size in ("2B4T", "8B", "70B")) and "bench_scale.py" in bench
    code = text.split("## Layout of the code")[1].split("\n## ")[0]  # issue 10: one diagram, a paragraph per folder
    assert code.count("```") == 2 and "**Add a layout**" in code and "**Add a container**" in code
    for folder in ("core/", "formats/", "layouts/", "sources/", "sinks/", "verify/", "cli/"):
        assert f"**{folder}" in code or f", {folder}**" in code, folder
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target
