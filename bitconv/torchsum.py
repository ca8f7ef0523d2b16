"""torch's float32 `sum` of a contiguous CPU tensor, reproduced bit for bit while reading the data in pieces.

The canonical ternarization takes `mean(|w|)` with torch's float32 reduction; a streaming converter must get the same
float32 value without holding the whole float32 tensor. torch (ATen `cascade_sum`, SumKernel.cpp) adds in float32 in a
fixed order, so the order can be replayed:

1. Parallel split (`TensorIterator::parallel_reduce` -> two-pass reduction, OpenMP `parallel_for`): with T threads and
   n >= GRAIN (32768) elements, chunk c = divup(n, t) elements per thread (t = min(T, divup(n, GRAIN))); each thread
   sums its range into its own slot (starting from 0); the slots are then summed (0 + s0 + s1 + ...).
2. Per range (`vectorized_inner_sum`, ranges of >= V elements): V-lane vectors (V = 8 on AVX2, 16 on AVX-512);
   `row_sum` over the vectors as rows of 4 vectors (L = 4V lanes) with `multi_row_sum`: level step 2^P,
   P = max(4, ceil_log2(rows) // 4); rows are added lane-wise in sequence into acc0; every 2^P rows acc0 goes into
   acc1, every 2^2P into acc2, every 2^3P into acc3; after the last full block the remaining rows go into acc0, then
   acc0 += acc1, += acc2, += acc3. The 0-3 vectors left over are added to lane group 0, then groups 1, 2, 3 are added
   to group 0; the result starts from 0, takes the < V trailing scalars in order, then the V lanes in order.

Every step is an IEEE float32 addition in a known order, so numpy replays it exactly. Which V this build uses is not
exposed, so `calibrate()` checks each candidate against torch on probe sizes; `exact_sum` returns None when no
candidate reproduces torch (the caller then falls back to the whole-tensor reduction: slower, never different).

`reduction_order()` gives (T, V) for this process. Where torch is loaded it asks torch. Where it is not, importing it
costs 2-3 s of CPU (a third of a 2B4T GGUF pack), so the (T, V) that a fresh torch reported and calibrated is kept in
a small cache file, keyed by everything that decides them: the torch build (its files' path, size and mtime), the
CPU (model, flags, the processors the process may use) and the environment variables torch reads for its thread
count and vector width. Any change of those is a cache miss: torch is imported and calibrated again. The cache is
written only by a process that imported torch for it, so a `torch.set_num_threads` of a library user never lands
there.
# ref: pytorch aten/src/ATen/native/cpu/SumKernel.cpp (cascade_sum, multi_row_sum, row_sum, vectorized_inner_sum);
#      aten/src/ATen/TensorIteratorReduce.cpp (two_pass_reduction); ATen/ParallelOpenMP.h (invoke_parallel)
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bitconv.core import dtypes, lazytorch, native
from bitconv.core.lazytorch import torch

GRAIN = 32768  # at::internal::GRAIN_SIZE
LEVELS = 4
ILP = 4

Reader = Callable[[int, int], np.ndarray]  # (start, count) -> float32 array of that many elements


def _ceil_log2(x: int) -> int:
    return 1 if x <= 2 else int(x - 1).bit_length()


def _seq_sum(x: np.ndarray) -> np.ndarray:
    """Sum over axis 1 of [g, k, L] in sequence (x0 + x1 + ... each a float32 lane-wise add), -> [g, L]."""
    acc = x[:, 0].copy()
    for j in range(1, x.shape[1]):
        np.add(acc, x[:, j], out=acc)
    return acc


class _MultiRowSum:
    """multi_row_sum over `size` rows of L lanes, fed rows in order in pieces that are multiples of step^2 rows."""

    def __init__(self, size: int, lanes: int) -> None:
        self.size, self.lanes = size, lanes
        self.p = max(4, _ceil_log2(size) // LEVELS)
        self.step = 1 << self.p
        self.acc2 = np.zeros(lanes, np.float32)
        self.acc3 = np.zeros(lanes, np.float32)
        self.groups = 0  # level-2 flushes done (complete step^2-row groups)
        self.rows = 0

    @property
    def group_rows(self) -> int:
        return self.step * self.step

    def feed(self, rows: np.ndarray) -> None:
        """A whole number of complete step^2-row groups: [k * step^2, L]."""
        s = self.step
        g = rows.shape[0] // (s * s)
        b0 = _seq_sum(rows.reshape(g * s, s, self.lanes))  # level-0 block sums [g*s, L]
        b1 = _seq_sum(b0.reshape(g, s, self.lanes))  # what acc1 holds at each step^2 boundary [g, L]
        for i in range(g):
            np.add(self.acc2, b1[i], out=self.acc2)
            self.groups += 1
            if self.groups % s == 0:
                np.add(self.acc3, self.acc2, out=self.acc3)
                self.acc2[:] = 0
        self.rows += g * s * s

    def finish(self, tail: np.ndarray) -> np.ndarray:
        """The remaining < step^2 rows; returns the lane sums (acc0 after the final fold)."""
        s = self.step
        nb = tail.shape[0] // s
        acc1 = np.zeros(self.lanes, np.float32)
        if nb:
            b0 = _seq_sum(tail[: nb * s].reshape(nb, s, self.lanes))
            for i in range(nb):
                np.add(acc1, b0[i], out=acc1)
        acc0 = np.zeros(self.lanes, np.float32)
        for r in tail[nb * s:]:
            np.add(acc0, r, out=acc0)
        self.rows += tail.shape[0]
        assert self.rows == self.size, (self.rows, self.size)
        for a in (acc1, self.acc2, self.acc3):
            np.add(acc0, a, out=acc0)
        return acc0


def _lane_sums(read: Reader, start: int, size_ilp: int, lanes: int, piece: int) -> np.ndarray:
    """multi_row_sum over the size_ilp rows of `lanes` elements from `start`, in numpy."""
    mrs = _MultiRowSum(size_ilp, lanes)
    gr = mrs.group_rows
    rows_per_piece = max(1, piece // (lanes * gr)) * gr
    done = 0  # rows fed
    while size_ilp - done >= gr:
        k = min(rows_per_piece, (size_ilp - done) // gr * gr)
        mrs.feed(read(start + done * lanes, k * lanes).reshape(k, lanes))
        done += k
    rest = size_ilp - done
    return mrs.finish(read(start + done * lanes, rest * lanes).reshape(rest, lanes))


LaneSums = Callable[[int, int, int, int], np.ndarray]  # (start, size_ilp, lanes, piece) -> lane sums


def _range_sum(read: Reader, start: int, count: int, v: int, piece: int,
               lane_sums: LaneSums | None = None) -> np.float32:
    """`vectorized_inner_sum` + `row_sum` over elements [start, start + count) (count >= v); the rows' lane sums by
    `lane_sums` (the C kernel's streamed multi_row_sum) or in numpy."""
    nvec = count // v
    size_ilp = nvec // ILP
    lanes = ILP * v
    if lane_sums is None:
        acc = _lane_sums(read, start, size_ilp, lanes, piece)
    else:
        acc = lane_sums(start, size_ilp, lanes, piece)
    groups = acc.reshape(ILP, v)
    part = groups[0].copy()
    left = nvec - size_ilp * ILP  # 0..3 vectors
    if left:
        extra = read(start + size_ilp * lanes, left * v).reshape(left, v)
        for r in extra:
            np.add(part, r, out=part)
    for k in range(1, ILP):
        np.add(part, groups[k], out=part)
    final = np.float32(0)
    ntail = count - nvec * v
    if ntail:
        for x in read(start + nvec * v, ntail):
            final = np.float32(final + x)
    for x in part:
        final = np.float32(final + x)
    return final


def _scalar_range_sum(vals: np.ndarray) -> np.float32:
    """`scalar_inner_sum` for a range shorter than one vector (row_sum with 4 scalar accumulators)."""
    n = vals.shape[0]
    size_ilp = n // ILP
    acc = np.zeros(ILP, np.float32)
    if size_ilp:
        mrs = _MultiRowSum(size_ilp, ILP)
        acc = mrs.finish(vals[: size_ilp * ILP].reshape(size_ilp, ILP).astype(np.float32))  # size_ilp < 16 rows
    p0 = acc[0]
    for x in vals[size_ilp * ILP:]:
        p0 = np.float32(p0 + x)
    for k in range(1, ILP):
        p0 = np.float32(p0 + acc[k])
    return p0


def replay_sum(read: Reader, n: int, v: int, threads: int, piece: int = 1 << 22,
               lane_sums: LaneSums | None = None) -> np.float32:
    """torch's float32 sum of n elements given by `read`, for V = v lanes and `threads` intra-op threads."""
    if n == 0:
        return np.float32(0)
    if n < GRAIN or threads == 1:
        bounds = [(0, n)]
    else:
        t = min(threads, -(-n // GRAIN))
        c = -(-n // t)
        bounds = [(b, min(n, b + c)) for b in range(0, n, c)]
    slots = []
    for b, e in bounds:
        cnt = e - b
        s = _range_sum(read, b, cnt, v, piece, lane_sums) if cnt >= v else _scalar_range_sum(read(b, cnt))
        slots.append(np.float32(np.float32(0) + s))
    if len(bounds) == 1:
        return slots[0]
    # the final reduce over `threads` slots (unused slots hold 0) is itself a scalar cascade_sum
    buf = np.zeros(threads, np.float32)
    buf[: len(slots)] = slots
    return _scalar_range_sum(buf)


_LANES: dict[int, int | None] = {}  # threads -> the V that reproduces torch here (None: none does)
CANDIDATE_LANES = (16, 8, 4, 32)
PROBE_SIZES = (7, 33, 4099, GRAIN - 1, GRAIN + 5, 3 * GRAIN + 17, 1_000_003)


def calibrate(threads: int | None = None) -> int | None:
    """The lane count V that makes `replay_sum` equal torch's float32 sum on every probe, or None."""
    threads = threads or torch.get_num_threads()
    if threads in _LANES:
        return _LANES[threads]
    g = torch.Generator().manual_seed(15)
    probes = [torch.randn(n, generator=g).abs_() * 0.02 for n in PROBE_SIZES]
    found = None
    for v in CANDIDATE_LANES:
        ok = True
        for p in probes:
            arr = p.numpy()
            got = replay_sum(lambda s, c, arr=arr: arr[s:s + c], arr.size, v, threads, piece=1 << 16)
            if got.tobytes() != p.sum().numpy().tobytes():
                ok = False
                break
        if ok:
            found = v
            break
    _LANES[threads] = found
    return found


# ------------------------------------------------------------------------------------------- the order, cached

CACHE_ENV = "BITCONV_CACHE"  # the cache folder (default: $XDG_CACHE_HOME/bitconv, else ~/.cache/bitconv); "off": none
CACHE_FILE = "torch-sum-order.json"
CACHE_VERSION = 1
# what torch reads to choose its intra-op thread count and its CPU kernels' vector width
_ENV_PREFIXES = ("OMP_", "MKL_", "GOMP_", "KMP_", "ATEN_", "TORCH_", "PYTORCH_", "OPENBLAS_")


def cache_dir() -> Path | None:
    env = os.environ.get(CACHE_ENV, "").strip()
    if env.lower() == "off":
        return None
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg) if xdg else Path.home() / ".cache") / "bitconv"


def _torch_build() -> list | None:
    """Where this interpreter's torch lives and its native library's size and mtime (found without importing it)."""
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    root = Path(spec.origin).parent
    parts = []
    for rel in ("version.py", "lib/libtorch_cpu.so", "lib/libtorch_cpu.dylib", "_C.abi3.so"):
        with contextlib.suppress(OSError):
            st = os.stat(root / rel)
            parts.append([rel, st.st_size, st.st_mtime_ns])
    return [str(root), parts] if parts else None


def _cpu() -> list:
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = []
    info = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", "rb") as f:
        lines = f.read(1 << 20).decode("latin-1").splitlines()
        info = "\n".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags", "Features", "cpu cores",
                                                                        "siblings", "physical id", "core id"))}))
    return [os.cpu_count(), cpus, hashlib.sha256(info.encode()).hexdigest()]


def _cache_key() -> str | None:
    build = _torch_build()
    if build is None:
        return None
    env = sorted((k, v) for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES))
    doc = [CACHE_VERSION, sys.platform, build, _cpu(), env]
    return hashlib.sha256(json.dumps(doc).encode()).hexdigest()


def _read_cache(key: str) -> tuple[int, int | None] | None:
    d = cache_dir()
    if d is None:
        return None
    try:
        with open(d / CACHE_FILE, encoding="utf-8") as f:
            doc = json.loads(f.read(1 << 16))
        hit = doc.get(key) if isinstance(doc, dict) else None
        threads, lanes = hit
    except (OSError, ValueError, TypeError):
        return None
    if not (type(threads) is int and threads > 0 and (lanes is None or lanes in CANDIDATE_LANES)):
        return None
    return threads, lanes


def _write_cache(key: str, order: tuple[int, int | None]) -> None:
    """Add this key's order to the cache file (a fresh file renamed over it; a failure only costs the next run the
    torch import)."""
    d = cache_dir()
    if d is None:
        return
    tmp = None
    try:
        d.mkdir(parents=True, exist_ok=True)
        doc: dict = {}
        with contextlib.suppress(OSError, ValueError), open(d / CACHE_FILE, encoding="utf-8") as f:
            old = json.loads(f.read(1 << 16))
            doc = old if isinstance(old, dict) and len(old) < 64 else {}
        doc[key] = list(order)
        tmp = d / f".{CACHE_FILE}.{os.getpid()}.{threading.get_ident()}.tmp"  # two workers may miss at once
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(json.dumps(doc))
        os.replace(tmp, d / CACHE_FILE)
        tmp = None
    except OSError:
        pass
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


_ORDER: list[tuple[int, int | None]] = []  # this process's order, once known without torch


def reduction_order() -> tuple[int, int | None]:
    """(T, V): torch's intra-op thread count and the lane count that replays its float32 sum here (V None: no
    candidate does). Asked of torch where it is loaded; else from the cache, or torch imported, asked and cached."""
    if lazytorch.loaded():
        threads = torch.get_num_threads()
        return threads, calibrate(threads)
    if _ORDER:
        return _ORDER[0]
    key = _cache_key()
    hit = _read_cache(key) if key is not None else None
    if hit is not None:
        _ORDER.append(hit)
        return hit
    threads = torch.get_num_threads()  # imports torch: its default, nothing has changed it yet
    order = (threads, calibrate(threads))
    if key is not None:
        _write_cache(key, order)
    return order


def exact_sum(read: Reader, n: int, piece: int = 1 << 22) -> np.float32 | None:
    """torch's float32 sum (at the current thread count) of n float32 elements from `read`, or None if this torch
    build's reduction order could not be reproduced (see `calibrate`)."""
    threads, v = reduction_order()
    if v is None:
        return None
    return replay_sum(read, n, v, threads, piece)


_SIGN_OFF = np.uint32(0x7FFFFFFF)


def bf16_magnitudes(bits: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """|w| as float32 from bf16 bit patterns (int16 or uint16): the 16 bits moved up (bf16 -> float32 is exact), the
    sign cleared; into `out` (float32, the same size) when given."""
    out = dtypes.f32_of_bf16(bits, out)
    np.bitwise_and(out.view(np.uint32), _SIGN_OFF, out=out.view(np.uint32))
    return out


def exact_abs_sum_bf16(read_bits: Callable[[int, int], np.ndarray], n: int, piece: int = 1 << 22) \
        -> np.float32 | None:
    """torch's float32 sum of |w| for n bf16 values whose bit patterns (int16) `read_bits(start, count)` gives, the
    rows summed by the C kernels as they are read (|w| made in registers); the few leftover values in numpy. None
    without the kernels or a calibrated order (the caller then uses `exact_sum`)."""
    ck = native.kernels()
    if ck is None:
        return None
    threads, v = reduction_order()
    if v is None:
        return None

    def mags(start: int, count: int) -> np.ndarray:
        return bf16_magnitudes(read_bits(start, count))

    def lane_sums(start: int, size_ilp: int, lanes: int, piece: int) -> np.ndarray:
        st = ck.mrs_new(size_ilp, lanes)
        rows = max(1, piece // lanes)
        for r0 in range(0, size_ilp, rows):
            k = min(rows, size_ilp - r0)
            ck.mrs_feed_bf16(st, read_bits(start + r0 * lanes, k * lanes))
        return np.frombuffer(ck.mrs_finish(st), dtype=np.float32)

    return replay_sum(mags, n, v, threads, piece, lane_sums)
