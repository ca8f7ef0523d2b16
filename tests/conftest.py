from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from bitconv import tiny

# bitconv caches torch's reduction order (`bitconv.torchsum`) under the user's cache folder: the tests, and the CLI
# processes they start, use a folder of their own
_CACHE = tempfile.mkdtemp(prefix="bitconv-test-cache-")
os.environ["BITCONV_CACHE"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, True)

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "fixtures" / "golden"


@pytest.fixture(scope="session")
def golden_hf() -> Path:
    return GOLDEN / "hf-packed"


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory):
    """The one factory for tiny generated checkpoints (`bitconv.tiny.make_tiny`): each parameter set is built once
    per test run, `models(arch, tied=..., **make_tiny_kwargs) -> folder`. The folders are shared: a test that
    modifies a model works on a copy (`copy_dir`, or `corpus.clone`)."""
    base = tmp_path_factory.mktemp("models")
    cache: dict[str, Path] = {}

    def get(arch: str = "bitnet-2b4t", tied: bool | None = None, **kw) -> Path:
        key = f"{arch}-{tied}-" + "-".join(f"{k}{v}" for k, v in sorted(kw.items()))
        if key not in cache:
            cache[key] = tiny.make_tiny(base / key, arch, tied=tied, **kw)
        return cache[key]

    return get


def tree_hash(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def copy_dir(tmp_path: Path):
    def copy(src: Path, name: str = "src") -> Path:
        dst = tmp_path / name
        shutil.copytree(src, dst)
        for p in dst.rglob("*"):
            p.chmod(0o644 if p.is_file() else 0o755)
        return dst

    return copy
