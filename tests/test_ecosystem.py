"""action.yml (run step by step with the env GitHub sets), .pre-commit-hooks.yaml (through `pre-commit try-repo`),
LICENSE and CHANGELOG."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bitconv import tiny

ROOT = Path(__file__).resolve().parent.parent


def _shim(tmp: Path) -> dict:
    """An env whose `bitconv` is this checkout's (PATH shim + PYTHONPATH), offline."""
    bindir = tmp / "bin"
    bindir.mkdir(parents=True)
    exe = bindir / "bitconv"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m bitconv "$@"\n')
    exe.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "INPUT_"))}
    env.update(PATH=f"{bindir}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    return env


def _model_repo(tmp: Path, broken: bool = False) -> Path:
    repo = tmp / "repo"
    master = tiny.make_tiny(repo / "bf16", "bitnet-2b4t")
    env = _shim(tmp / "pack")
    subprocess.run(["bitconv", "pack", str(master), "--to", "hf", "-o", str(repo / "packed")], env=env, check=True,
                   capture_output=True)
    if broken:  # one packed projection with its rows shifted: the round trip must catch it
        from safetensors.torch import load_file, save_file

        f = repo / "packed" / "model.safetensors"
        t = load_file(f)
        k = next(k for k in t if k.endswith("q_proj.weight"))
        t[k] = t[k].roll(1, 0).contiguous()  # rows shifted by one: a packing offset
        save_file(t, str(f), metadata={"format": "pt"})
    return repo


def _expand(text: str, inputs: dict) -> str:
    return re.sub(r"\$\{\{\s*inputs\.([\w-]+)\s*\}\}", lambda m: str(inputs[m[1]]), text)


def _run_action(tmp: Path, repo: Path, **given: str) -> tuple[int, Path, dict]:
    action = yaml.safe_load((ROOT / "action.yml").read_text())
    assert action["runs"]["using"] == "composite"
    inputs = {k: v.get("default", "") for k, v in action["inputs"].items()} | given
    env = _shim(tmp)
    summary, output, runner_temp = tmp / "summary.md", tmp / "output.txt", tmp / "runner"
    runner_temp.mkdir(parents=True)
    env.update(GITHUB_STEP_SUMMARY=str(summary), GITHUB_OUTPUT=str(output), RUNNER_TEMP=str(runner_temp),
               GITHUB_WORKSPACE=str(repo), GITHUB_ACTIONS="true", CI="true")
    rc = 0
    for step in action["runs"]["steps"]:
        if step["id"] == "install":  # pip from the network: the shim stands in for the installed bitconv
            assert "pip install" in step["run"] and "$INPUT_INSTALL" in step["run"]
            continue
        step_env = {**env, **{k: _expand(str(v), inputs) for k, v in step.get("env", {}).items()}}
        p = subprocess.run([step["shell"], "-e", "-c", _expand(step["run"], inputs)], cwd=repo, env=step_env,
                           capture_output=True, text=True)
        rc = p.returncode
        if rc:
            break
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines()) if output.exists() else {}
    return rc, summary, outputs


@pytest.mark.slow
def test_action_passes_and_writes_junit_and_summary(tmp_path):
    repo = _model_repo(tmp_path)
    rc, summary, outputs = _run_action(tmp_path, repo, parity="false")
    assert rc == 0
    assert "bitconv check" in summary.read_text()
    rep = json.loads(Path(outputs["report"]).read_text())
    assert rep["command"] == "check" and rep["ok"] is True
    assert "<testsuite" in Path(outputs["junit"]).read_text()


@pytest.mark.slow
def test_action_fails_on_a_bad_artifact_unless_told_not_to(tmp_path):
    repo = _model_repo(tmp_path, broken=True)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    rc, _, outputs = _run_action(tmp_path / "a", repo, parity="false")
    assert rc == 1
    assert "<failure" in Path(outputs["junit"]).read_text()
    rc, _, _ = _run_action(tmp_path / "b", repo, parity="false", **{"fail-on-unverified": "false"})
    assert rc == 0


@pytest.mark.slow
def test_pre_commit_try_repo_offline(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    pre_commit = shutil.which("pre-commit", path=str(Path(sys.executable).parent))
    if pre_commit is None:
        pytest.skip("pre-commit not installed (pip install pre-commit)")
    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert [h["id"] for h in hooks] == ["bitconv-check"] and hooks[0]["language"] == "system"
    repo = _model_repo(tmp_path)
    env = _shim(tmp_path / "pc") | {"PRE_COMMIT_HOME": str(tmp_path / "cache"), "GIT_AUTHOR_NAME": "t",
                                     "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                                     "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True, env=env)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True, env=env)
    p = subprocess.run([pre_commit, "try-repo", str(ROOT), "bitconv-check", "--all-files"], cwd=repo, env=env,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "bitconv check" in p.stdout and "Passed" in p.stdout


def test_license_and_changelog():
    text = (ROOT / "LICENSE").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert text.startswith("MIT License") and 'license = { text = "MIT" }' in pyproject
    changelog = (ROOT / "CHANGELOG.md").read_text()
    version = re.search(r'^version = "([^"]+)"', pyproject, re.M)[1]
    assert f"## [{version}]" in changelog or "## [Unreleased]" in changelog
