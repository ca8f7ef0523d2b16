"""action.yml (run step by step with the env GitHub sets), .pre-commit-hooks.yaml (through `pre-commit try-repo`),
LICENSE and CHANGELOG."""

from __future__ import annotations

import importlib.util
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


def _model_repo(tmp: Path, broken: bool = False, arch: str = "bitnet-2b4t", gguf: tuple[str, ...] = ()) -> Path:
    """A model repository: bf16/ (the master), packed/ (HF packed) and one `<type>.gguf` per `gguf` type."""
    repo = tmp / "repo"
    master = tiny.make_tiny(repo / "bf16", arch)
    env = _shim(tmp / "pack")
    subprocess.run(["bitconv", "pack", str(master), "--to", "hf", "-o", str(repo / "packed")], env=env, check=True,
                   capture_output=True)
    for t in gguf:
        subprocess.run(["bitconv", "pack", str(master), "--to", "gguf", "--type", t, "-o", str(repo / f"{t}.gguf")],
                       env=env, check=True, capture_output=True)
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


def _fake_python(tmp: Path, env: dict) -> Path:
    """A `python` first on PATH that records its arguments and CMAKE_ARGS (one line per call) and installs nothing:
    the install step runs for real, pip does not (the shim is the installed bitconv)."""
    log = tmp / "python-calls.txt"
    exe = Path(env["PATH"].split(os.pathsep)[0]) / "python"
    exe.write_text(f'#!/bin/sh\nprintf "%s|CMAKE_ARGS=%s\\n" "$*" "$CMAKE_ARGS" >> "{log}"\n')
    exe.chmod(0o755)
    return log


def _run_action(tmp: Path, repo: Path, **given: str) -> tuple[int, Path, dict]:
    action = yaml.safe_load((ROOT / "action.yml").read_text())
    assert action["runs"]["using"] == "composite"
    assert set(action["inputs"]) >= {"path", "ref", "runtime", "fail-on-unverified"}
    inputs = {k: v.get("default", "") for k, v in action["inputs"].items()} | given
    env = _shim(tmp)
    summary, output, runner_temp = tmp / "summary.md", tmp / "output.txt", tmp / "runner"
    runner_temp.mkdir(parents=True)
    env.update(GITHUB_STEP_SUMMARY=str(summary), GITHUB_OUTPUT=str(output), RUNNER_TEMP=str(runner_temp),
               GITHUB_WORKSPACE=str(repo), GITHUB_ACTIONS="true", CI="true")
    rc = 0
    for step in action["runs"]["steps"]:
        step_env = {**env, **{k: _expand(str(v), inputs) for k, v in step.get("env", {}).items()}}
        if step["id"] == "install":  # pip would reach the network: a recording `python` runs in its place
            log = _fake_python(tmp, step_env)
            p = subprocess.run([step["shell"], "-e", "-c", _expand(step["run"], inputs)], cwd=repo, env=step_env,
                               capture_output=True, text=True)
            assert p.returncode == 0, p.stderr
            (tmp / "bin" / "python").unlink()
            (tmp / "install.txt").write_text(log.read_text())
            continue
        p = subprocess.run([step["shell"], "-e", "-c", _expand(step["run"], inputs)], cwd=repo, env=step_env,
                           capture_output=True, text=True)
        (tmp / "check-output.txt").write_text(p.stdout + p.stderr)
        rc = p.returncode
        if rc:
            break
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines()) if output.exists() else {}
    return rc, summary, outputs


LEAN = ("-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF "
        "-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_OPENSSL=OFF")


@pytest.mark.parametrize("install, runtime, want", [
    ("bitconv", "", "bitconv"),
    ("bitconv", "llama.cpp", "bitconv[llamacpp]"),
    ("bitconv==0.1.0", "llama.cpp", "bitconv[llamacpp]==0.1.0"),
    ("git+https://github.com/bitconv/bitconv@main", "llama.cpp",
     "bitconv[llamacpp] @ git+https://github.com/bitconv/bitconv@main"),
    (".", "llama.cpp", ".[llamacpp]"),
])
def test_action_install_step_adds_the_llamacpp_extra_for_runtime(tmp_path, install, runtime, want):
    """The install step's real commands, with a recording `python`: the llamacpp extra (and the lean llama.cpp build
    flags .ci/run uses) exactly when `runtime` is set."""
    action = yaml.safe_load((ROOT / "action.yml").read_text())
    step = next(s for s in action["runs"]["steps"] if s["id"] == "install")
    inputs = {k: v.get("default", "") for k, v in action["inputs"].items()} | {"install": install, "runtime": runtime}
    env = _shim(tmp_path)
    env.pop("CMAKE_ARGS", None)
    env.update({k: _expand(str(v), inputs) for k, v in step.get("env", {}).items()})
    log = _fake_python(tmp_path, env)
    p = subprocess.run([step["shell"], "-e", "-c", _expand(step["run"], inputs)], env=env, capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr
    cmake = LEAN if runtime else ""
    assert log.read_text().splitlines() == [
        f"-m pip install --quiet torch --index-url https://download.pytorch.org/whl/cpu|CMAKE_ARGS={cmake}",
        f"-m pip install --quiet {want} tokenizers sentencepiece|CMAKE_ARGS={cmake}"]
    assert LEAN in (ROOT / ".ci" / "run").read_text()  # the same flags as CI's own llama.cpp build


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
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                    reason="llama-cpp-python is not installed (pip install 'bitconv[llamacpp]'; .ci/run installs it)")
def test_action_runtime_llama_cpp_passes_tq2_0_and_fails_i2_s(tmp_path):
    """`runtime: llama.cpp`: the TQ2_0 file runs correctly in llama.cpp and passes; the I2_S file (a type and the
    bitnet-b1.58 architecture llama.cpp cannot load) fails the job (exit 1), saying so in the report, the JUnit
    file and the step summary."""
    good = _model_repo(tmp_path / "good", arch="1bitllm", gguf=("tq2_0",))
    rc, summary, outputs = _run_action(tmp_path / "a", good, parity="false", runtime="llama.cpp")
    assert rc == 0, (tmp_path / "a" / "check-output.txt").read_text()
    assert "bitconv[llamacpp]" in (tmp_path / "a" / "install.txt").read_text()
    rep = json.loads(Path(outputs["report"]).read_text())
    assert rep["ok"] is True and rep["runtime"] == "llama.cpp"
    row = next(a for a in rep["artifacts"] if a["path"].endswith("tq2_0.gguf"))
    assert row["status"] == "verified" and row["verify"]["runtime"]["ok"] is True
    assert "GGUF files run in llama.cpp" in summary.read_text()

    bad = _model_repo(tmp_path / "bad", arch="bitnet-2b4t", gguf=("i2_s",))
    rc, summary, outputs = _run_action(tmp_path / "b", bad, parity="false", runtime="llama.cpp")
    assert rc == 1, (tmp_path / "b" / "check-output.txt").read_text()
    rep = json.loads(Path(outputs["report"]).read_text())
    row = next(a for a in rep["artifacts"] if a["path"].endswith("i2_s.gguf"))
    assert row["status"] == "failed"
    fault = next(f for f in row["findings"] if f["fault"] == "runtime-unsupported")
    assert "llama.cpp cannot run" in fault["message"] and "I2_S" in fault["message"]
    assert next(a for a in rep["artifacts"] if a["path"].endswith("packed"))["status"] == "verified"
    assert 'type="runtime-unsupported"' in Path(outputs["junit"]).read_text()
    assert "runtime-unsupported: " in summary.read_text()


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


def test_one_repository_url_everywhere(models, tmp_path):
    """pyproject's URLs, the Action usage (`uses: owner/name@`), the pre-commit `repo:`, every github.com link to
    bitconv in the docs and code, the CLI epilog and the model card name one repository: `bitconv.REPO_URL`."""
    import bitconv
    from bitconv.api import pack
    from bitconv.cli.app import EPILOG
    from bitconv.publish.card import plan_upload

    url = bitconv.REPO_URL
    owner_name = url.removeprefix("https://github.com/")
    assert re.fullmatch(r"[\w.-]+/[\w.-]+", owner_name), url
    section = re.search(r"^\[project\.urls\]\n(.*?)(?:\n\[|\Z)", (ROOT / "pyproject.toml").read_text(), re.M | re.S)[1]
    urls = dict(re.findall(r'^(\w+) = "([^"]+)"$', section, re.M))  # tomllib is 3.11+
    assert urls["Homepage"] == url and all(u == url or u.startswith(url + "/") for u in urls.values()), urls
    texts = {p: p.read_text() for p in [ROOT / "README.md", ROOT / "action.yml", ROOT / ".pre-commit-hooks.yaml",
                                        ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*")),
                                        *sorted((ROOT / "bitconv").rglob("*.py"))] if p.is_file()}
    uses = [(p.name, m) for p, t in texts.items() for m in re.findall(r"uses:\s*([\w.-]+/bitconv[\w.-]*)@", t)]
    repos = [(p.name, m) for p, t in texts.items() for m in re.findall(r"repo:\s*(https?://\S+)", t)]
    links = [(p.name, m) for p, t in texts.items()
             for m in re.findall(r"https?://github\.com/([\w.-]+/[\w.-]*bitconv[\w.-]*)", t)]
    assert {n for _, n in uses} == {owner_name} and {"README.md", "ci.md"} <= {f for f, _ in uses}, uses
    assert {u for _, u in repos} == {url} and {".pre-commit-hooks.yaml", "ci.md"} <= {f for f, _ in repos}, repos
    assert {n for _, n in links} == {owner_name}, links
    assert f"{url}/tree/main/docs" in EPILOG
    m = models()
    packed = pack(m, tmp_path / "packed", to="hf").out
    card = plan_upload(packed, "me/tiny", base_model="microsoft/x", base_card="").card
    assert f"converted with [bitconv]({url}) {bitconv.__version__}." in card
