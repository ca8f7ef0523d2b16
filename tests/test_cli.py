"""Every command through the CLI: exit codes, one-line errors, --json, and no traceback without BITCONV_DEBUG."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from bitconv.api import parse_size
from bitconv.cli import app
from bitconv.core.errors import UsageError
from bitconv.layouts import list_layouts
from bitconv.sources import open_source

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_help_lists_commands():
    r = run("--help")
    assert r.exit_code == 0
    for cmd in ("quantize", "pack", "unpack", "inspect", "demo", "layouts"):
        assert cmd in r.output


def test_quantize_pack_unpack_inspect_json(models, tmp_path):
    m = models()
    r = run("quantize", m, "-o", tmp_path / "t", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["layout"] == "bitconv-ternary" and rep["ternary_tensors"] == 14
    r = run("pack", tmp_path / "t", "--to", "hf", "-o", tmp_path / "p", "--linear-class", "bitlinear", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["layout"] == "hf-bitlinear"
    r = run("unpack", tmp_path / "p", "-o", tmp_path / "u", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["ternary_tensors"] == 14
    qc = json.loads((tmp_path / "u" / "config.json").read_text())["quantization_config"]
    assert (qc["linear_class"], qc["quantization_mode"]) == ("autobitlinear", "online")
    u = open_source(tmp_path / "u")
    assert u.kind == "bf16-master" and u.tensors["model.layers.0.mlp.down_proj.weight"].dtype == "BF16"
    r = run("inspect", tmp_path / "p", "--json")
    d = json.loads(r.stdout)
    assert d["kind"] == "hf-packed" and d["layout"] == "hf-bitlinear" and d["family"] == "bitnet-2b4t"
    assert d["ternary_parameters"] == 2 * (2 * 256 * 256 + 2 * 128 * 256 + 3 * 768 * 256)
    assert 2.0 < d["ternary_bits_per_weight"] < 2.01
    assert d["scale_stats"]["count"] == 14 and 0.2 < d["zero_fraction"] < 0.5
    row = next(t for t in d["tensors"] if t["name"] == "model.layers.0.mlp.down_proj.weight")
    assert row["shape"] == [256, 768] and row["dtype"] == "U8" and row["layout"] == "hf-bitlinear"


def test_inspect_human_output(models):
    r = run("inspect", models("1bitllm"))
    assert r.exit_code == 0
    assert "bf16-master" in r.output and "BitnetForCausalLM" in r.output and "zero codes" in r.output


def test_pack_dry_run_writes_nothing(models, tmp_path):
    r = run("pack", models(), "-o", tmp_path / "p", "--dry-run", "--json")
    assert r.exit_code == 0
    plan = json.loads(r.stdout)
    assert plan["layout"] == "hf-autobitlinear" and plan["bytes"] > 0 and plan["dry_run"] is True
    assert not (tmp_path / "p").exists()


def test_layouts_lists_registry():
    r = run("layouts", "--json")
    assert r.exit_code == 0, r.output
    rows = {x["name"]: x for x in json.loads(r.stdout)["layouts"]}
    assert sorted(rows) == list_layouts()
    # numbers as numbers: 2 bits + 2 bytes of scale per 65536 weights
    assert rows["hf-bitlinear"]["bits_per_weight_256x256"] == pytest.approx(2.0 + 16 / 65536, abs=1e-4)
    assert rows["bitconv-ternary"]["bits_per_weight_256x256"] == pytest.approx(8.0 + 32 / 65536, abs=1e-4)
    r = run("layouts")
    assert r.exit_code == 0 and all(name in r.stdout for name in rows)


@pytest.mark.slow
def test_demo_passes(tmp_path):
    r = run("demo", "--keep", tmp_path / "demo", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    rows = doc["steps"]
    assert doc["ok"] and all(row["ok"] for row in rows)
    assert {"quantize", "unpack", "inspect"} <= {row["step"] for row in rows}


# --------------------------------------------------------------------------------------------- error paths


def assert_one_line_error(r, *needles: str, code: int = 2):
    assert r.exit_code == code, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    assert "Traceback" not in r.output


def test_missing_source(tmp_path):
    assert_one_line_error(run("inspect", tmp_path / "nope"), "nope", "no such file")


def test_existing_output(models, tmp_path):
    (tmp_path / "p").mkdir()
    assert_one_line_error(run("pack", models(), "-o", tmp_path / "p"), "already exists", "--overwrite")


def test_overwrite_flag(models, tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "stale.txt").write_text("old output")
    r = run("pack", models(), "-o", tmp_path / "p", "--overwrite", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["layout"] == "hf-autobitlinear"
    written = sorted(p.name for p in (tmp_path / "p").iterdir())
    assert "stale.txt" not in written and {"config.json", "model.safetensors"} <= set(written)
    assert open_source(tmp_path / "p").layout == "hf-autobitlinear"


def test_bad_target_and_options(models, tmp_path):
    assert_one_line_error(run("pack", models(), "--to", "onnx", "-o", tmp_path / "x"),
                          "--to must be one of hf, gguf, got 'onnx'")
    assert_one_line_error(run("pack", models(), "-o", tmp_path / "x", "--linear-class", "foo"), "--linear-class")
    assert_one_line_error(run("quantize", models(), "-o", tmp_path / "x", "--compute", "fp8"), "--compute")
    assert_one_line_error(run("pack", models(), "-o", tmp_path / "x", "--max-shard-size", "lots"), "lots")
    assert not (tmp_path / "x").exists()


def test_shape_refused_names_tensor(models, tmp_path):
    m = models("bitnet-2b4t", intermediate_size=770)
    assert_one_line_error(run("pack", m, "-o", tmp_path / "p"), "gate_proj.weight", "[770, 256]", "% 4")
    assert not (tmp_path / "p").exists()


def test_corrupt_input(models, tmp_path, copy_dir):
    src = copy_dir(models())
    (src / "model.safetensors").write_bytes(b"\x10\x00")
    assert_one_line_error(run("quantize", src, "-o", tmp_path / "t"), "model.safetensors", "truncated")


def test_unpack_of_master_is_usage_error(models, tmp_path):
    assert_one_line_error(run("unpack", models(), "-o", tmp_path / "u"), "already a bf16 master")


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("500MiB") == 500 * 2**20 and parse_size("1024") == 1024
    with pytest.raises(UsageError):
        parse_size("0")


@pytest.mark.slow
def test_console_script_no_traceback_unless_debug(tmp_path):
    cmd = [sys.executable, "-m", "bitconv", "inspect", str(tmp_path / "nope")]
    env = {k: v for k, v in os.environ.items() if k != "BITCONV_DEBUG"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    r = subprocess.run(cmd, capture_output=True, text=True, env={**env, "BITCONV_DEBUG": "1"})
    assert r.returncode != 0 and "Traceback" in r.stderr and "SourceError" in r.stderr


def test_console_script_exits_at_once_with_every_byte_and_code(models, tmp_path):
    """The executable ends without the interpreter's teardown (`_entry._exit_now`): the exit code, stdout and the
    written files are complete; a closed stdout pipe gives no traceback."""
    env = {k: v for k, v in os.environ.items() if k != "BITCONV_DEBUG"}
    base = [sys.executable, "-m", "bitconv"]
    r = subprocess.run([*base, "layouts", "--json"], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["command"] == "layouts"
    out = tmp_path / "m.gguf"
    r = subprocess.run([*base, "pack", str(models()), "--to", "gguf", "--type", "tq2_0", "-o", str(out), "--json"],
                       capture_output=True, text=True, env=env)
    doc = json.loads(r.stdout)
    assert r.returncode == 0 and doc["ok"] and out.stat().st_size == doc["bytes"]
    r = subprocess.run([*base, "pack", str(tmp_path / "nope"), "--to", "hf", "-o", str(tmp_path / "o")],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2 and r.stderr.startswith("error: ")
    p = subprocess.Popen([*base, "inspect", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    p.stdout.close()  # closed before bitconv writes: its first write meets a broken pipe
    err = p.stderr.read().decode()
    assert p.wait() in (0, 1) and "Traceback" not in err, err


@pytest.mark.parametrize("argv, torch_loaded", [(["verify", "x"], True), (["convert", "x"], True),
                                                 (["pack", "x"], False), (["quantize", "x"], False),
                                                 (["layouts"], False), (["verify", "--help"], False), ([], False)])
def test_entry_loads_modules_with_the_collector_paused(argv, torch_loaded):
    """`_entry.main` loads the CLI (and torch, for the commands that always use it; `pack` and `quantize` import it
    only where a route needs it) with the cyclic collector off, then freezes those objects and turns the collector
    back on for the command itself."""
    probe = (
        "import gc, sys\n"
        "import bitconv.cli\n"
        "def fake():\n"
        "    print(gc.isenabled(), gc.get_freeze_count() > 10000, 'torch' in sys.modules)\n"
        "    raise SystemExit(0)\n"
        "bitconv.cli.main = fake\n"
        f"sys.argv = ['bitconv'] + {argv!r}\n"
        "from bitconv import _entry\n"
        "_entry.main()\n")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "True", str(torch_loaded)]


@pytest.mark.parametrize("command", ["quantize", "unpack", "convert-nanotron", "convert-hf"])
def test_dry_run_plans_without_writing(models, tmp_path, command):
    """`--dry-run` on every writing command: the plan as JSON (planned bytes = what the real run writes, a planned
    peak), nothing written; the real run after it succeeds."""
    from bitconv import api

    src = models("llama-bitnet")
    if command == "unpack":
        api.pack(src, tmp_path / "packed", to="hf")
        src = tmp_path / "packed"
    elif command == "convert-hf":
        api.convert(src, tmp_path / "nt", to="nanotron")
        src = tmp_path / "nt"
    name, *extra = command.split("-")
    to = ["--to", {"nanotron": "nanotron", "hf": "hf-bf16"}[extra[0]]] if extra else []
    args = [name, str(src), "-o", str(tmp_path / "out"), *to]
    r = runner.invoke(app, [*args, "--dry-run", "--json"])
    assert r.exit_code == 0, r.output
    plan = json.loads(r.stdout)
    assert plan["dry_run"] is True and plan["command"] == name and not (tmp_path / "out").exists()
    assert plan["peak_memory_bytes"] > 300 << 20 and plan["tensors"]
    r = runner.invoke(app, [*args, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["bytes"] == plan["bytes"] == sum(t["bytes"] for t in plan["tensors"])
