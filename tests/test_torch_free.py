"""`pack` and `quantize` of a bf16 master without importing torch, and the pieces that make it possible.

torch's import is 2-3 s of CPU, a third of a 2B4T GGUF pack. The usual routes need none of it: the C kernels
ternarize and pack, numpy converts the float tensors, and `bitconv.torchsum` caches torch's reduction order. These
tests check that those routes do run without torch (in a fresh process, once the order is cached) and write exactly
the bytes of the torch path, and that each numpy replacement of a torch conversion gives torch's bytes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bitconv import api, quant, torchsum
from bitconv.core import lazytorch
from bitconv.core.dtypes import bf16_of_f32
from bitconv.formats.gguf.quants import stored_to_float_type, to_float_type
from bitconv.layouts import gguf_layouts
from bitconv.layouts.registry import encode_scale
from tests.conftest import tree_hash

ck = pytest.importorskip("bitconv._ckernels", reason="built by pip install -e . (test_native_kernels_built fails)")

GGUF_TYPES = sorted(cls.name.removeprefix("gguf-").replace("-", "_") for cls in gguf_layouts().values())
ROUTES = [("hf", None), ("quantize", None), *[("gguf", t) for t in GGUF_TYPES]]

# A fresh process packs each route and says whether torch was imported. The embedding is converted in row blocks
# (CHUNK_BYTES shrunk) and the projections above 2^16 elements are ternarized from 40000-element blocks
# (STREAM_MIN_ELEMS, BLOCK_ELEMS shrunk), as a big model's are.
PROBE = """
import json, sys
from pathlib import Path
import bitconv.sinks.gguf as g
from bitconv import quant
g.CHUNK_BYTES = 16 << 10
quant.STREAM_MIN_ELEMS, quant.BLOCK_ELEMS = 1 << 16, 40_000
from bitconv import api
src, out, routes = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
for to, t in routes:
    dest = out / f"{to}-{t}" if to != "gguf" else out / f"{t}" / "m.gguf"
    if to == "quantize":
        api.quantize(src, dest)
    else:
        api.pack(src, dest, to=to, type=t)
print(json.dumps({"torch": "torch" in sys.modules}))
"""


def _probe(src: Path, out: Path, routes: list, cache: Path) -> dict:
    env = {**os.environ, "BITCONV_CACHE": str(cache), "BITCONV_PURE_PYTHON": "0"}
    r = subprocess.run([sys.executable, "-c", PROBE, str(src), str(out), json.dumps(routes)], capture_output=True,
                       text=True, env=env, cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def _in_process(src: Path, out: Path, to: str, t: str | None) -> Path:
    dest = out / f"{to}-{t}" if to != "gguf" else out / f"{t}" / "m.gguf"
    if to == "quantize":
        api.quantize(src, dest)
    else:
        api.pack(src, dest, to=to, type=t)
    return dest


def test_usual_routes_run_without_torch_and_write_the_torch_paths_bytes(models, tmp_path, monkeypatch):
    """Every layout of `pack`, and `quantize`, from a bf16 master: the first fresh process imports torch once (to
    learn its order) and caches it; the next imports no torch at all. It writes the bytes this process writes with
    torch loaded and without the C kernels (torch's own mean of |w|, torch's conversions)."""
    src = models("bitnet-2b4t", hidden_size=512)  # the demo model's shapes: every GGUF type runs somewhere
    cache = tmp_path / "cache"
    first = _probe(src, tmp_path / "first", ROUTES[:1], cache)
    assert first["torch"] is True and (cache / torchsum.CACHE_FILE).is_file()
    again = _probe(src, tmp_path / "fresh", ROUTES, cache)
    assert again == {"torch": False}
    import bitconv.sinks.gguf as g

    monkeypatch.setattr(g, "CHUNK_BYTES", 16 << 10)
    monkeypatch.setenv("BITCONV_PURE_PYTHON", "1")
    for to, t in ROUTES:
        want = _in_process(src, tmp_path / "torch", to, t)
        got = tmp_path / "fresh" / want.relative_to(tmp_path / "torch")
        if want.is_dir():
            assert tree_hash(got) == tree_hash(want), (to, t)
        else:
            assert got.read_bytes() == want.read_bytes(), (to, t)


def test_a_library_users_thread_count_is_used_and_never_cached(tmp_path, monkeypatch):
    """With torch loaded, the order is torch's live one (a `torch.set_num_threads` of the caller counts) and the
    cache is not written: only a process that imported torch for the cache writes it."""
    monkeypatch.setenv(torchsum.CACHE_ENV, str(tmp_path))
    old = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        threads, lanes = torchsum.reduction_order()
    finally:
        torch.set_num_threads(old)
    assert threads == 3 and lanes == torchsum.calibrate(3)
    assert not (tmp_path / torchsum.CACHE_FILE).exists()


CACHE_PROBE = """
import json, sys
from bitconv import torchsum
print(json.dumps([torchsum.reduction_order(), "torch" in sys.modules]))
"""


def _order_in_fresh_process(cache: str, **env: str) -> list:
    full = {**os.environ, "BITCONV_CACHE": cache, **env}
    r = subprocess.run([sys.executable, "-c", CACHE_PROBE], capture_output=True, text=True, env=full)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_cache_is_keyed_by_what_decides_the_order(tmp_path):
    """A miss imports torch and adds an entry; a hit does not import it; a thread-count variable torch reads is
    part of the key (OMP_NUM_THREADS=1 is its own entry, with torch's answer for it)."""
    cache = str(tmp_path)
    (order, imported) = _order_in_fresh_process(cache)
    assert imported is True and order[0] == torch.get_num_threads() and order[1] == torchsum.calibrate()
    assert _order_in_fresh_process(cache) == [order, False]
    one = _order_in_fresh_process(cache, OMP_NUM_THREADS="1")
    assert one[1] is True and one[0][0] == 1
    assert _order_in_fresh_process(cache, OMP_NUM_THREADS="1") == [one[0], False]
    doc = json.loads((tmp_path / torchsum.CACHE_FILE).read_text())
    assert len(doc) == 2


@pytest.mark.parametrize("content", ["", "{", "[1, 2]", '{"KEY": [0, 8]}', '{"KEY": [2, 5]}', '{"KEY": "x"}',
                                     '{"KEY": [2.0, 8]}'])
def test_a_damaged_cache_is_ignored_and_rewritten(tmp_path, content):
    """An unreadable file, or an entry that is not a positive thread count and a known lane count, is a miss."""
    key = torchsum._cache_key()
    (tmp_path / torchsum.CACHE_FILE).write_text(content.replace("KEY", key))
    order, imported = _order_in_fresh_process(str(tmp_path))
    assert imported is True and order == [torch.get_num_threads(), torchsum.calibrate()]
    assert json.loads((tmp_path / torchsum.CACHE_FILE).read_text())[key] == order


def test_cache_off_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    order, imported = _order_in_fresh_process("off")
    assert imported is True and order == [torch.get_num_threads(), torchsum.calibrate()]
    assert list(tmp_path.iterdir()) == []


LAZY_PROBE = """
import gc, sys, threading, time
from bitconv.core.lazytorch import torch, loaded, is_tensor
assert "torch" not in sys.modules and not loaded() and not is_tensor(object())
got = []
ts = [threading.Thread(target=lambda: got.append(torch.get_num_threads())) for _ in range(4)]
for t in ts: t.start()
while any(t.is_alive() for t in ts):  # torch half imported by a worker: still no tensor here, and no error
    assert not is_tensor(object())
    time.sleep(0.001)
for t in ts: t.join()
print(len(got), loaded(), gc.isenabled(), gc.get_freeze_count() > 10000, is_tensor(torch.zeros(1)))
"""


def test_lazy_torch_imports_once_for_concurrent_first_users():
    """Four threads reading torch at once through the stand-in all get it (none sees a half-imported module), and
    `is_tensor` answers meanwhile; the import ran with the collector paused and froze what it made."""
    r = subprocess.run([sys.executable, "-c", LAZY_PROBE], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["4", "True", "True", "True", "True"]


# ------------------------------------------------------------------------------- numpy in place of torch conversions


def _awkward_f32(n: int = 1 << 20) -> np.ndarray:
    """Random float32 bit patterns (every class) plus the edges: zeros, subnormals, rounding ties, the largest
    finite values (rounding to Inf), infinities."""
    rng = np.random.default_rng(5)
    bits = rng.integers(0, 1 << 32, size=n, dtype=np.uint64).astype(np.uint32)
    edges = np.array([0, 0x80000000, 1, 0x8000, 0x00018000, 0x00017FFF, 0x3F808000, 0x3F818000, 0x3F80FFFF,
                      0x7F7FFFFF, 0x7F7F8000, 0x7F7F7FFF, 0xFF7FFFFF, 0x7F800000, 0xFF800000], dtype=np.uint32)
    return np.concatenate([bits, edges]).view(np.float32)


def test_bf16_bits_is_torchs_rounding():
    x = _awkward_f32()
    finite = ~np.isnan(x)
    want = torch.from_numpy(x.copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    got = bf16_of_f32(x)
    np.testing.assert_array_equal(got[finite], want[finite])
    assert (got[~finite] == 0x7FC0).all()


@pytest.mark.parametrize("scale", [1e-5, 0.0123, 1.0, 3.0e38, 1.00390625, 1.01171875])
def test_encode_scale_bf16_is_torchs(scale):
    want = torch.tensor([scale], dtype=torch.float32).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert encode_scale(scale, "BF16").tobytes() == want.tobytes()


def _stored(dtype: str, x: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
    t = torch.from_numpy(x.copy()).to({"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[dtype])
    storage = t.view(torch.int16).numpy().view(np.uint16) if dtype == "BF16" else t.numpy()
    return storage, t


@pytest.mark.parametrize("pure", ["0", "1"])
@pytest.mark.parametrize("type_name", ["F32", "F16", "BF16", "Q8_0"])
@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_stored_to_float_type_is_to_float_type(dtype, type_name, pure, monkeypatch):
    """Every stored float dtype into every GGUF float type, the awkward values included (NaN and Inf only where the
    conversion is defined on them: Q8_0 blocks are finite in a model), the same bytes as the torch conversion."""
    monkeypatch.setenv("BITCONV_PURE_PYTHON", pure)
    x = _awkward_f32(1 << 16)
    if type_name == "Q8_0":  # a model's embedding: finite, and finite in every dtype
        x = np.where(np.isfinite(x) & (np.abs(x) < 6e4), x, np.float32(0.5))
    x = x[: x.size // 32 * 32].reshape(-1, 64)
    storage, t = _stored(dtype, x)
    got = stored_to_float_type(storage, dtype, type_name)
    want = to_float_type(t, type_name)
    assert got.shape == want.shape or type_name == "Q8_0"
    assert np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(want).tobytes()


def test_mean_of_sum_is_torchs_division():
    """`sum.div_(n)` in float32: n is rounded to float32 first (2^24 + 1 is not), then one float32 division."""
    rng = np.random.default_rng(9)
    totals = (rng.random(4000) * 10.0 ** rng.integers(-3, 8, 4000)).astype(np.float32)
    ns = [1, 3, 7, 1000, 65536, 17_694_720, (1 << 24) + 1, (1 << 24) + 3, 58_720_256, 1_050_000_001]
    for n in ns:
        want = torch.from_numpy(totals.copy()).div_(n).numpy()
        got = np.array([quant.mean_of_sum(t, n) for t in totals], dtype=np.float32)
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32), err_msg=str(n))


@pytest.mark.parametrize("block", [1, 97, 32768, 40_000, 1 << 22])
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (4, 33), (2, 32769), (97, 2049), (640, 2560)])
def test_ternarize_bf16_stream_is_the_recipe(shape, block):
    """The block-at-a-time torch-free path, on awkward sizes and blocks, against the recipe written in torch."""
    n = int(np.prod(shape))
    w = (torch.randn(n, generator=torch.Generator().manual_seed(n + 1)) * 0.02).bfloat16().reshape(shape)
    flat = w.view(torch.int16).numpy().view(np.uint16).reshape(-1)
    reads = []

    def read(start: int, count: int) -> np.ndarray:
        assert count <= max(block, 64)  # the sum reads whole 4-vector rows even for a tiny block
        reads.append(count)
        return flat[start:start + count].copy()  # a fresh buffer each call, as a reused scratch would be

    got = quant.ternarize_bf16_stream(read, shape, "x.weight", block=block)
    wf = w.float()
    s = 1.0 / wf.abs().mean().clamp(min=1e-5)
    assert got.codes.tobytes() == (wf * s).round().clamp(-1, 1).to(torch.int8).numpy().tobytes()
    assert np.float32(got.scale).tobytes() == (1.0 / s).numpy().tobytes() and got.codes.shape == shape
    assert sum(reads) >= 2 * n - block  # two passes (the first may read a block's tail piece by piece)


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (4, 33), (2, 32769), (97, 2049), (640, 2560)])
def test_ternarize_bf16_bits_is_ternarize(shape):
    """The torch-free entry point from bit patterns (uint16, as a mapped file gives them) against the recipe written
    in torch (transformers' WeightQuant), on awkward sizes and an all-zero weight."""
    n = int(np.prod(shape))
    w = (torch.randn(n, generator=torch.Generator().manual_seed(n)) * 0.02).bfloat16().reshape(shape)
    for weight in (w, torch.zeros(shape, dtype=torch.bfloat16)):
        bits = weight.view(torch.int16).numpy().view(np.uint16)
        got = quant.ternarize_bf16_bits(bits, shape, "x.weight")
        wf = weight.float()
        s = 1.0 / wf.abs().mean().clamp(min=1e-5)
        assert got.codes.tobytes() == (wf * s).round().clamp(-1, 1).to(torch.int8).numpy().tobytes()
        assert got.codes.shape == shape
        assert np.float32(got.scale).tobytes() == (1.0 / s).numpy().tobytes()


def test_lazytorch_is_torch():
    assert lazytorch.torch.bfloat16 is torch.bfloat16 and lazytorch.loaded()
