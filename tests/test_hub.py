"""The Hub feature against a local Hub emulator (tests/hubemu.py) and the unmodified huggingface_hub client:
repo ids as SRC, `bitconv upload` (LFS, branch, PR, card), `pack --push-to-hub`, every error path, and no token
in any output."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import HfApi, ModelCard, constants
from typer.testing import CliRunner

from bitconv import pipeline
from bitconv.cli import app
from bitconv.publish import card
from bitconv.sources import hub, open_source
from tests.hubemu import MIB, HubEmulator

TOKEN = "hf_bitconvEmulatorSecret0123456789"  # alice's
OTHER = "hf_otherUserSecret9876543210abc"  # bob's
ROOT = Path(__file__).resolve().parent.parent
I2S = ROOT / "fixtures" / "golden" / "gguf-i2s" / "ggml-model-i2_s.gguf"

runner = CliRunner()
# huggingface_hub 2.4.0 passes the LFS PUT body as `data=`; httpx2 deprecates that (hub.md §1)
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def emu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A running emulator; huggingface_hub pointed at it with Xet off and its cache/home under tmp_path."""
    server = HubEmulator(users={TOKEN: "alice", OTHER: "bob"}, max_seconds=120).start()
    home = tmp_path / "hf-home"
    env = {"HF_ENDPOINT": server.url, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(home),
           "HF_HUB_CACHE": str(home / "hub"), "NO_PROXY": "127.0.0.1,localhost", "HF_HUB_DISABLE_TELEMETRY": "1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    consts = {"ENDPOINT": server.url, "HUGGINGFACE_CO_URL_TEMPLATE": server.url + "/{repo_id}/resolve/{revision}/"
              "{filename}", "HF_HUB_DISABLE_XET": True, "HF_HUB_OFFLINE": False, "HF_HOME": str(home),
              "HF_HUB_CACHE": str(home / "hub"), "HF_TOKEN_PATH": str(home / "token"),
              "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json")}
    for k, v in consts.items():
        monkeypatch.setattr(constants, k, v)
    yield server
    server.stop()
    hub.use_token(None)


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory, models):
    """Packed HF folders: "small" (default tiny) and "big" (untied, 12k vocab: model.safetensors > 10 MiB)."""
    base = tmp_path_factory.mktemp("hub-packed")
    small = models()
    big = models(tied=False, vocab_size=12288)
    return {"small-src": small, "small": pipeline.pack_hf(small, base / "small").out,
            "big": pipeline.pack_hf(big, base / "big").out}


def _seed_source(emu: HubEmulator, folder: Path, repo_id: str = "microsoft/tiny-bitnet", **kw) -> None:
    files: dict = {p.name: p for p in folder.iterdir() if p.is_file()}
    files["README.md"] = "---\nlicense: mit\nlanguage:\n- en\n---\n\n# tiny bitnet\n"
    files["pytorch_model.bin"] = b"\0not needed by bitconv"
    emu.add_repo(repo_id, files, **kw)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _card(emu: HubEmulator, repo_id: str, revision: str = "main") -> ModelCard:
    return ModelCard(emu.read_files(repo_id, revision)["README.md"].decode())


def _one_line_error(r, *needles: str) -> str:
    """The run failed with exactly one `error:` line (download progress bars may precede it on stderr)."""
    err = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
    assert r.exit_code != 0 and err.startswith("error: ") and r.stderr.count("error:") == 1, r.output
    assert "Traceback" not in r.output
    for n in needles:
        assert n in err, err
    return err


# ------------------------------------------------------------------------------------------------ references


@pytest.mark.parametrize("text, want", [
    ("owner/name", ("owner/name", None, None)),
    ("owner/name@dev", ("owner/name", "dev", None)),
    ("owner/name@refs/pr/3", ("owner/name", "refs/pr/3", None)),
    ("owner/name/ggml-model-i2_s.gguf", ("owner/name", None, "ggml-model-i2_s.gguf")),
    ("owner/name/sub/m.gguf@v1.0", ("owner/name", "v1.0", "sub/m.gguf")),
    ("owner/name@v1/m.gguf", ("owner/name", "v1", "m.gguf")),
    ("owner/name/packed", ("owner/name", None, "packed")),
    ("./owner/name", None), ("/abs/path", None), ("single", None), ("a--b/c", None), ("owner/name/../x", None),
])
def test_parse_ref(text, want):
    ref = hub.parse_ref(text)
    assert (ref and (ref.repo_id, ref.revision, ref.path)) == want or (ref is None and want is None)


def test_local_paths_win(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "owner" / "name").mkdir(parents=True)
    # issue 14: a path whose parent folder exists is local (a typo there is "no such file", not a download)
    assert not hub.is_repo_ref("owner/name") and not hub.is_repo_ref("owner/other")
    assert hub.is_repo_ref("someone/other")


def test_scrub_removes_explicit_env_and_shaped_tokens(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "plain-env-secret")
    text = hub.scrub("a explicit-secret b plain-env-secret c hf_abcdefghijklmnop", "explicit-secret")
    assert text == "a *** b *** c hf_***"


# ------------------------------------------------------------------------------------------------ download


def test_repo_id_src_downloads_only_what_it_needs_then_pack_and_push(emu, packed, tmp_path):
    _seed_source(emu, packed["small-src"])
    out = tmp_path / "out"
    r = run("pack", "microsoft/tiny-bitnet", "-o", out, "--push-to-hub", "alice/tiny-packed", "--token", TOKEN)
    assert r.exit_code == 0, r.output
    assert "/alice/tiny-packed/commit/" in r.stdout and hub.token_or_default(None) is None  # --token: one command
    fetched = {q["path"].split("/resolve/")[1].split("/", 1)[1] for q in emu.requests if "/resolve/" in q["path"]}
    assert "pytorch_model.bin" not in fetched and {"config.json", "model.safetensors", "README.md"} <= fetched
    files = emu.read_files("alice/tiny-packed")
    assert files["model.safetensors"] == (out / "model.safetensors").read_bytes()
    assert {"config.json", "tokenizer.json", "README.md"} <= set(files)
    card = _card(emu, "alice/tiny-packed")
    assert card.data.base_model == "microsoft/tiny-bitnet" and card.data.base_model_relation == "quantized"
    assert card.data.library_name == "transformers" and card.data.license == "mit" and card.data.language == ["en"]
    assert {"bitnet", "1.58-bit", "ternary", "safetensors", "hf-autobitlinear"} <= set(card.data.tags)
    assert "bits/ternary weight" in card.text and "AutoModelForCausalLM" in card.text


def test_offline_mode_serves_the_cached_snapshot(emu, packed, monkeypatch):
    _seed_source(emu, packed["small-src"])
    r = run("inspect", "microsoft/tiny-bitnet", "--json", "--no-stats")
    assert r.exit_code == 0 and json.loads(r.stdout)["kind"] == "bf16-master", r.output
    before = emu.request_count
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    r = run("inspect", "microsoft/tiny-bitnet", "--json", "--no-stats")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["kind"] == "bf16-master" and emu.request_count == before
    _one_line_error(run("inspect", "microsoft/never-downloaded"), "HF_HUB_OFFLINE")


def test_gguf_file_sharded_subfolder_and_revision_refs(emu, models):
    emu.add_repo("microsoft/tiny-gguf", {"ggml-model-i2_s.gguf": I2S, "README.md": "# gguf\n"})
    path = hub.resolve("microsoft/tiny-gguf/ggml-model-i2_s.gguf")
    assert path.read_bytes() == I2S.read_bytes()
    assert hub.resolve("microsoft/tiny-gguf") == path  # the only .gguf of the repo
    sharded = models(max_shard_bytes=1_000_000)
    repo = emu.add_repo("org/sharded", {f"bf16/{p.name}": p for p in sharded.iterdir()})
    repo.refs["v1"] = repo.refs["main"]
    folder = hub.resolve("org/sharded/bf16@v1")
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in sharded.iterdir())
    r = run("inspect", "org/sharded/bf16", "--json", "--no-stats")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["kind"] == "bf16-master" and len(d["tensors"]) == len(open_source(sharded).tensors)


def test_download_errors_are_one_line(emu, packed, monkeypatch):
    _seed_source(emu, packed["small-src"], "meta/gated", gated=True, granted=("bob",))
    _seed_source(emu, packed["small-src"], "alice/private", private=True)
    emu.add_repo("someone/notes", {"README.md": "# just notes\n", "notes.txt": "hello"})
    _one_line_error(run("inspect", "nobody/missing"), "nobody/missing", "no such repo")
    _one_line_error(run("inspect", "meta/gated"), "meta/gated", "gated repo", "token")
    _one_line_error(run("inspect", "alice/private"), "alice/private", "private")
    _one_line_error(run("inspect", "someone/notes"), "not a supported checkpoint", "notes.txt")
    _one_line_error(run("inspect", "meta/gated@nope"), "meta/gated@nope", "no such revision")
    monkeypatch.setenv("HF_TOKEN", OTHER)  # bob has access to the gated repo
    r = run("inspect", "meta/gated", "--no-stats")
    assert r.exit_code == 0 and "bf16-master" in r.stdout, r.output


# ------------------------------------------------------------------------------------------------ upload


def test_upload_creates_repo_with_lfs_multipart(emu, packed):
    big = packed["big"]
    assert (big / "model.safetensors").stat().st_size > 10 * MIB
    r = run("upload", "alice/big-packed", big, "--token", TOKEN, "--private", "--base-model", "microsoft/big",
            "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["url"].startswith(f"{emu.url}/alice/big-packed/commit/") and not res["dry_run"]
    assert emu.repos["alice/big-packed"].private
    entries = emu.entries("alice/big-packed")
    assert entries["model.safetensors"].lfs and not entries["config.json"].lfs and not entries["README.md"].lfs
    assert (entries["model.safetensors"].sha256, "multipart") in emu.lfs_transfers
    assert emu.read_files("alice/big-packed")["model.safetensors"] == (big / "model.safetensors").read_bytes()
    card = _card(emu, "alice/big-packed")
    assert card.data.base_model == "microsoft/big" and "model.safetensors" in card.text
    n_commits = len(emu.repos["alice/big-packed"].commits)
    again = run("upload", "alice/big-packed", big, "--token", TOKEN, "--base-model", "microsoft/big")
    assert again.exit_code == 0, again.output  # an unchanged re-upload commits nothing, and says so
    assert again.stdout.splitlines()[-1] == "nothing to upload: alice/big-packed@main already holds these files"
    assert "/commit/" not in again.stdout and "uploaded" not in again.stdout
    assert len(emu.repos["alice/big-packed"].commits) == n_commits
    assert emu.read_files("alice/big-packed")["model.safetensors"] == (big / "model.safetensors").read_bytes()


def test_upload_to_branch_and_as_pr(emu, packed):
    small = packed["small"]
    r = run("upload", "alice/tiny", small, "--revision", "dev", "--token", TOKEN, "--commit-message", "on dev")
    assert r.exit_code == 0, r.output
    assert "README.md" in emu.read_files("alice/tiny", "dev") and "README.md" not in emu.read_files("alice/tiny")
    r = run("upload", "alice/tiny", small, "--create-pr", "--token", TOKEN, "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["url"] == res["pr_url"] == f"{emu.url}/alice/tiny/discussions/1"
    assert "model.safetensors" in emu.read_files("alice/tiny", "refs/pr/1")
    assert "model.safetensors" not in emu.read_files("alice/tiny")
    _one_line_error(run("upload", "alice/tiny", small, "--create-pr", "--revision", "dev"), "--create-pr")


def test_upload_gguf_card_dry_run_makes_no_request(emu, tmp_path):
    before = emu.request_count
    r = run("upload", "alice/tiny-gguf", I2S, "--dry-run", "--token", TOKEN, "--base-model", "microsoft/bitnet")
    assert r.exit_code == 0, r.output
    assert emu.request_count == before
    assert "nothing uploaded (--dry-run)" in r.stdout and "ggml-model-i2_s.gguf" in r.stdout
    card = ModelCard(r.stdout[r.stdout.index("---\n"):r.stdout.index("total ")])
    assert card.data.library_name == "gguf" and card.data.base_model == "microsoft/bitnet"
    assert {"gguf", "i2_s", "ternary"} <= set(card.data.tags) and "run_inference.py" in card.text
    plan = json.loads(run("upload", "alice/tiny-gguf", I2S, "--dry-run", "--json").stdout)["plan"]
    assert [f["path_in_repo"] for f in plan["files"]] == ["ggml-model-i2_s.gguf", "README.md"]
    assert emu.request_count == before


def test_failed_verify_is_refused_unless_forced(emu, packed, copy_dir):
    art = copy_dir(packed["small"], "art")
    report = {"ok": False, "exit_code": 1, "findings": [{"check": "roundtrip", "severity": "error",
                                                         "message": "q_proj.weight: inverted scale"}]}
    (art / card.VERIFY_REPORT).write_text(json.dumps(report))  # no out_files: not provably stale, so still refused
    before = emu.request_count
    err = _one_line_error(run("upload", "alice/bad", art, "--token", TOKEN), "refusing", "--force",
                          "inverted scale")
    assert "1 fault" in err and emu.request_count == before
    report["out_files"] = [{"path": "model.safetensors", "bytes": 1, "sha256": _sha256(art / "model.safetensors")}]
    (art / card.VERIFY_REPORT).write_text(json.dumps(report))  # as `bitconv verify --report` writes it now
    err = _one_line_error(run("upload", "alice/bad", art, "--token", TOKEN), "refusing", "--force",
                          "inverted scale")
    assert emu.request_count == before
    r = run("upload", "alice/bad", art, "--token", TOKEN, "--force")
    assert r.exit_code == 0, r.output
    files = emu.read_files("alice/bad")
    assert card.VERIFY_REPORT in files and "FAILED" in files["README.md"].decode()


def test_upload_errors_are_one_line(emu, packed, tmp_path):
    small = packed["small"]
    _one_line_error(run("upload", "alice/x", small), "alice/x", "token")  # anonymous create: 401
    _one_line_error(run("upload", "alice/x", small, "--token", OTHER), "alice/x", "403")  # bob in alice's ns
    _one_line_error(run("upload", "not a repo id", small, "--dry-run"), "not a Hub repo id")
    (tmp_path / "empty").mkdir()
    _one_line_error(run("upload", "alice/x", tmp_path / "empty", "--dry-run"), "not a bitconv artifact")


# ------------------------------------------------------------------------------------------------ the token


def test_token_never_appears_in_any_output(emu, packed, tmp_path, caplog, capfd, monkeypatch):
    caplog.set_level(logging.DEBUG)
    _seed_source(emu, packed["small-src"], "meta/gated", gated=True, granted=("alice",))
    results = [
        run("pack", "meta/gated", "-o", tmp_path / "p", "--push-to-hub", "alice/p", "--token", TOKEN),
        run("upload", "alice/p", packed["small"], "--token", TOKEN, "--create-pr"),
        run("upload", "alice/p", packed["small"], "--token", TOKEN, "--dry-run", "--json"),
        run("upload", "bob/p", packed["small"], "--token", TOKEN),  # 403: no rights in bob's namespace
        run("pack", "meta/gated@nope", "-o", tmp_path / "q", "--token", TOKEN),
        run("pack", "nobody/missing", "-o", tmp_path / "r", "--token", TOKEN),
    ]
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    results.append(run("inspect", "meta/gated", "--no-stats"))
    results.append(run("upload", "alice/p2", packed["small"], "--json"))
    assert [r.exit_code for r in results] == [0, 0, 0, 2, 2, 2, 0, 0], [r.output for r in results]
    captured = capfd.readouterr()
    texts = [r.output for r in results] + [r.stderr for r in results] + [caplog.text, captured.out, captured.err]
    assert all(TOKEN not in t for t in texts)
    env = {**os.environ, "HF_DEBUG": "1", "HF_HUB_VERBOSITY": "debug", "BITCONV_DEBUG": "0"}
    env.pop("HF_TOKEN")
    proc = subprocess.run([sys.executable, "-m", "bitconv", "upload", "alice/p3", str(packed["small"]), "--token",
                           TOKEN], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "/alice/p3/commit/" in proc.stdout and "curl" in proc.stderr  # HF_DEBUG logged every request
    assert TOKEN not in proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------------------ upload (issue 12)

TQ2 = ROOT / "fixtures" / "golden" / "gguf-tq" / "ggml-model-tq2_0.gguf"
TL1 = ROOT / "fixtures" / "golden" / "gguf-tl" / "tl1"


def _section(text: str) -> str:
    """The text between bitconv's markers (exactly one pair)."""
    assert text.count(card.BEGIN) == 1 and text.count(card.END) == 1, text
    return text.split(card.BEGIN)[1].split(card.END)[0]


def _rows(text: str, heading: str) -> list[str]:
    """The first cells of the table under `## heading` (header and separator left out)."""
    block = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return [ln.split("|")[1].strip() for ln in block.splitlines() if ln.startswith("| ")][1:]


def test_noop_upload_pr_and_branch_commit_nothing_and_say_so(emu, packed, copy_dir):
    small = packed["small"]
    first = json.loads(run("upload", "alice/tiny", small, "--token", TOKEN, "--json").stdout)
    assert first["committed"] is True and first["pr_url"] is None and first["branch_created"] is False
    assert first["url"] == first["commit_url"] == f"{emu.url}/alice/tiny/commit/{first['commit']}"
    assert first["head"] == first["commit"] == emu.repos["alice/tiny"].refs["main"]
    n_commits = len(emu.repos["alice/tiny"].commits)
    again = json.loads(run("upload", "alice/tiny", small, "--token", TOKEN, "--json").stdout)
    assert {k: again[k] for k in ("committed", "url", "commit", "commit_url", "pr_url", "revision", "head")} == \
        {"committed": False, "url": None, "commit": None, "commit_url": None, "pr_url": None, "revision": "main",
         "head": first["commit"]}
    pr = run("upload", "alice/tiny", small, "--token", TOKEN, "--create-pr")
    assert pr.exit_code == 0, pr.output
    assert pr.stdout.splitlines()[-1] == "nothing to upload: alice/tiny@main already holds these files"
    assert "/discussions/" not in pr.stdout and "/commit/" not in pr.stdout and "uploaded" not in pr.stdout
    pr_json = json.loads(run("upload", "alice/tiny", small, "--token", TOKEN, "--create-pr", "--json").stdout)
    assert pr_json["committed"] is False and pr_json["pr_url"] is None and pr_json["url"] is None
    assert emu.repos["alice/tiny"].discussions == []
    dev = run("upload", "alice/tiny", small, "--token", TOKEN, "--revision", "dev")
    assert dev.exit_code == 0, dev.output
    assert dev.stdout.splitlines()[-2:] == ["created branch dev from main",
                                            "nothing to upload: alice/tiny@dev already holds these files"]
    dev = json.loads(run("upload", "alice/tiny", small, "--token", TOKEN, "--revision", "dev", "--json").stdout)
    assert (dev["committed"], dev["branch_created"], dev["url"], dev["revision"]) == (False, False, None, "dev")
    assert len(emu.repos["alice/tiny"].commits) == n_commits
    # a real change as a PR: committed, and every URL says what happened
    changed = copy_dir(small, "changed")
    (changed / "generation_config.json").write_text('{"bos_token_id": 1}\n')
    res = json.loads(run("upload", "alice/tiny", changed, "--token", TOKEN, "--create-pr", "--json").stdout)
    assert res["committed"] is True and res["url"] == res["pr_url"] == f"{emu.url}/alice/tiny/discussions/1"
    assert res["commit_url"] == f"{emu.url}/alice/tiny/commit/{res['commit']}"
    assert res["commit"] == emu.repos["alice/tiny"].refs["refs/pr/1"] != res["head"]
    assert emu.read_files("alice/tiny", "refs/pr/1")["generation_config.json"] == b'{"bos_token_id": 1}\n'
    assert res["changed"] == ["generation_config.json", "README.md"]  # the Files table gives its new size
    r = run("upload", "alice/tiny", changed, "--token", TOKEN)  # the same change, straight to main
    head = emu.repos["alice/tiny"].refs["main"]
    assert r.stdout.splitlines()[-2:] == [f"uploaded 2 files ({r.stdout.split('uploaded 2 files (')[1].split(')')[0]}"
                                          "); 5 already there, unchanged", f"{emu.url}/alice/tiny/commit/{head}"]
    assert re.fullmatch(r"\d+\.\d\d KiB", r.stdout.split("uploaded 2 files (")[1].split(")")[0])


def test_card_is_merged_one_files_table_and_user_text_kept(emu, tmp_path):
    user_top = "# My BitNet builds\n\nHand-written notes: these come from our cluster run 42.\n\n"
    user_end = "\n\n## Licence notes\n\nAsk legal before shipping.\n"
    emu.add_repo("alice/gguf", {"README.md": "---\nlicense: mit\ntags:\n- mine\n---\n" + user_top})
    for f in (I2S, TQ2):
        r = run("upload", "alice/gguf", f, "--token", TOKEN, "--base-model", "microsoft/bitnet")
        assert r.exit_code == 0, r.output
    text = emu.read_files("alice/gguf")["README.md"].decode()
    body = text.split("\n---\n", 1)[1]
    assert body.startswith(user_top) and body.index(card.BEGIN) == len(user_top)  # the user's text, unchanged
    sec = _section(text)
    assert text.count("## Files") == 1 and text.count("## Format") == 1
    assert _rows(sec, "Files") == ["ggml-model-i2_s.gguf", "ggml-model-tq2_0.gguf"]
    assert _rows(sec, "Format") == ["ggml-model-i2_s.gguf", "ggml-model-tq2_0.gguf"]
    assert sec.count("\n### ggml-model-i2_s.gguf\n") == 1 and sec.count("\n### ggml-model-tq2_0.gguf\n") == 1
    assert [ln.split("`")[1] for ln in sec.split("## Verification")[1].splitlines() if ln.startswith("- ")] == \
        ["ggml-model-i2_s.gguf", "ggml-model-tq2_0.gguf"]
    data = _card(emu, "alice/gguf").data
    assert data.license == "mit" and data.tags[0] == "mine" and {"i2_s", "tq2_0", "gguf"} <= set(data.tags)
    # text after the marked section is the user's too; an upload of the first file again changes nothing else
    HfApi(token=TOKEN).upload_file(path_or_fileobj=(text + user_end).encode(), path_in_repo="README.md",
                                   repo_id="alice/gguf")
    r = run("upload", "alice/gguf", I2S, "--token", TOKEN, "--base-model", "microsoft/bitnet", "--json")
    assert json.loads(r.stdout)["committed"] is False, r.output
    assert emu.read_files("alice/gguf")["README.md"].decode() == text + user_end


def test_no_card_leaves_the_readme_alone_also_on_pack(emu, packed, tmp_path):
    mine = "---\nlicense: apache-2.0\n---\n\n# hand-written, not bitconv's\n"
    emu.add_repo("alice/mine", {"README.md": mine})
    r = run("upload", "alice/mine", I2S, "--token", TOKEN, "--no-card", "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["committed"] is True and res["files"] == ["ggml-model-i2_s.gguf"] and res["plan"]["card"] == ""
    files = emu.read_files("alice/mine")
    assert set(files) == {".gitattributes", "README.md", "ggml-model-i2_s.gguf"}
    assert files["README.md"].decode() == mine
    r = run("pack", packed["small-src"], "-o", tmp_path / "out", "--push-to-hub", "alice/packed", "--no-card",
            "--token", TOKEN)
    assert r.exit_code == 0, r.output
    assert "README.md" not in emu.read_files("alice/packed") and "model.safetensors" in emu.read_files("alice/packed")


def test_tl_upload_carries_its_kernel_config_and_the_build_steps(emu, copy_dir):
    art = copy_dir(TL1, "tl1")
    r = run("upload", "alice/tl1", art / "ggml-model-tl1.gguf", "--token", TOKEN, "--base-model", "microsoft/x")
    assert r.exit_code == 0, r.output
    files = emu.read_files("alice/tl1")
    assert set(files) == {".gitattributes", "README.md", "ggml-model-tl1.gguf", "ggml-model-tl1.kernel_config.ini"}
    assert files["ggml-model-tl1.kernel_config.ini"] == (TL1 / "kernel_config.ini").read_bytes()
    sec = _section(files["README.md"].decode())
    steps = [ln.split(". ", 1)[1] for ln in sec.splitlines() if re.match(r"\d+\. `", ln)]
    assert steps == [
        "`git clone --recursive https://github.com/microsoft/BitNet && cd BitNet  (then check out the commit of a "
        "runtime named below)`",
        "`hf download alice/tl1 ggml-model-tl1.gguf ggml-model-tl1.kernel_config.ini --local-dir .`",
        "`add \"custom\": [[256, 256], [512, 256], [256, 512]], to ModelShapeDict in utils/codegen_tl1.py (codegen "
        "looks the model up there: without it, KeyError: 'custom')`",
        "`python utils/codegen_tl1.py --model custom --BM 128,256,128 --BK 64,128,128 --bm 32,64,32  (writes "
        "include/bitnet-lut-kernels.h and include/kernel_config.ini, which must equal "
        "ggml-model-tl1.kernel_config.ini)`",
        "`cmp include/kernel_config.ini ggml-model-tl1.kernel_config.ini  (no output: the generated kernels are the "
        "ones this file was tiled for)`",
        "`cmake -B build -DBITNET_ARM_TL1=ON && cmake --build build --config Release`"]
    assert _rows(sec, "Files") == ["ggml-model-tl1.gguf", "ggml-model-tl1.kernel_config.ini"]
    (art / "kernel_config.ini").unlink()  # a TL file without its ini is not published
    before = emu.request_count
    _one_line_error(run("upload", "alice/tl1b", art / "ggml-model-tl1.gguf", "--token", TOKEN), "kernel_config.ini")
    assert emu.request_count == before and "alice/tl1b" not in emu.repos


def test_stale_verify_report_is_not_quoted(emu, models, tmp_path):
    master = models("bitnet-2b4t")
    out = tmp_path / "m.gguf"
    report = tmp_path / f"m.gguf.{card.VERIFY_REPORT}"
    assert run("pack", master, "--to", "gguf", "--type", "i2_s", "-o", out).exit_code == 0
    r = run("verify", out, "--ref", master, "--no-parity", "--report", report)
    assert r.exit_code == 0, r.output
    recorded = json.loads(report.read_text())["out_files"]
    assert recorded == [{"path": "m.gguf", "bytes": out.stat().st_size, "sha256": _sha256(out)}]
    r = run("upload", "alice/fresh", out, "--token", TOKEN, "--base-model", "microsoft/x")
    assert r.exit_code == 0, r.output
    files = emu.read_files("alice/fresh")
    assert files[f"m.gguf.{card.VERIFY_REPORT}"] == report.read_bytes()
    line = next(ln for ln in _section(files["README.md"].decode()).splitlines() if ln.startswith("- `m.gguf`"))
    assert line.startswith("- `m.gguf`: `bitconv verify` passed: ") and f"(report: `m.gguf.{card.VERIFY_REPORT}`)" \
        in line
    # pack --overwrite replaces the file and leaves the report: the card must not trust it
    r = run("pack", master, "--to", "gguf", "--type", "i2_s", "--embd-type", "f32", "-o", out, "--overwrite")
    assert r.exit_code == 0 and _sha256(out) != recorded[0]["sha256"], r.output
    r = run("upload", "alice/stale", out, "--token", TOKEN, "--base-model", "microsoft/x")
    assert r.exit_code == 0, r.output
    assert (f"warning: verify report {report}: the verify report was written for another file: the sha256 of m.gguf "
            "is not the one it records (re-run `bitconv verify`); it is not uploaded and the card says not verified"
            ) in " ".join(r.stderr.split())
    files = emu.read_files("alice/stale")
    assert set(files) == {".gitattributes", "README.md", "m.gguf"}
    sec = _section(files["README.md"].decode())
    assert "passed" not in sec and sec.split("## Verification\n\n")[1].splitlines()[0] == (
        "- `m.gguf`: not verified: the verify report was written for another file: the sha256 of m.gguf is not the "
        "one it records (re-run `bitconv verify`)")


def test_old_argument_order_gets_a_hint(emu, packed, tmp_path, monkeypatch):
    small = packed["small"]
    before = emu.request_count
    err = _one_line_error(run("upload", small, "alice/tiny", "--token", TOKEN))
    assert err == (f"error: {str(small)!r} is a local path and 'alice/tiny' is not: the arguments are REPO_ID "
                   f"[LOCAL_PATH], as in `hf upload` (bitconv upload alice/tiny {small})")
    err = _one_line_error(run("upload", small, "--token", TOKEN))
    assert err == (f"error: {str(small)!r} is a local path, and is not a Hub repo id (owner/name): the arguments are "
                   "REPO_ID [LOCAL_PATH], as in `hf upload`")
    assert emu.request_count == before and "alice/tiny" not in emu.repos
    monkeypatch.chdir(small)  # LOCAL_PATH defaults to "."
    r = run("upload", "alice/here", "--token", TOKEN, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["committed"] is True, r.output
    assert emu.read_files("alice/here")["model.safetensors"] == (small / "model.safetensors").read_bytes()


def test_card_of_an_earlier_bitconv_is_taken_as_its_section():
    """A card bitconv wrote before the markers existed is bitconv's section, not user text: no second copy."""
    plan = card.plan_upload(I2S, "alice/gguf", base_model="microsoft/bitnet", base_card="")
    legacy = plan.card.replace(card.BEGIN + "\n", "").replace("\n" + card.END, "")
    assert card.BEGIN not in legacy and "## Files" in legacy
    assert card.merge_card(legacy, plan, {"ggml-model-i2_s.gguf", "README.md"}) == plan.card
    mine = "# Notes\n\nSee ## Files below.\n"
    merged = card.merge_card(mine, plan, {"ggml-model-i2_s.gguf"})  # no markers, not bitconv's: kept, then ours
    assert merged.split("---\n", 2)[2] == mine + "\n" + plan.card.split("\n# gguf\n\n", 1)[1]
