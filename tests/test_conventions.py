"""The CLI conventions of issue 14: -h/-V, one-line usage errors, one --json schema for every command, case-insensitive
choices, local path vs Hub id, llama.cpp-style GGUF output names, a fast --help, and the Python API at the root."""

from __future__ import annotations

import json
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
    code = ("import sys\nfrom bitconv.cli import app\nfrom bitconv import api\napi.layouts()\n"
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
    d = valid(run("upload", tmp_path / "p", "alice/tiny", "--dry-run", "--json"), "upload")
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


def test_pack_from_gguf_to_hf_warns_about_tokenizer(models, tmp_path):
    m = models()
    assert run("pack", m, "--to", "gguf", "--type", "i2_s", "-o", tmp_path / "m.gguf").exit_code == 0
    d = json.loads(run("pack", tmp_path / "m.gguf", "--to", "hf", "-o", tmp_path / "hf", "--json").stdout)
    jsonschema.validate(d, SCHEMA)
    assert any("tokenizer" in w for w in d["warnings"])


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
