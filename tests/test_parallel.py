"""Two tensors computed at once (`bitconv.sinks.prefetch`): the same bytes as one at a time, in the same order,
with bounded tensors in flight; errors raised in order."""

from __future__ import annotations

import threading
import time

import pytest

from bitconv.sinks import prefetch
from bitconv.sinks.prefetch import ordered


def test_ordered_keeps_item_order_under_uneven_work():
    def slow_first(i):
        time.sleep(0.02 if i % 3 == 0 else 0.0)
        return i * i

    assert list(ordered(slow_first, range(20), workers=2)) == [i * i for i in range(20)]
    assert list(ordered(slow_first, range(5), workers=1)) == [i * i for i in range(5)]


def test_ordered_bounds_items_in_flight_and_by_cost():
    lock = threading.Lock()
    running, peak = [0], [0]

    def work(i):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.01)
        with lock:
            running[0] -= 1
        return i

    assert list(ordered(work, range(12), workers=2)) == list(range(12))
    assert peak[0] == 2  # two at once, never more
    peak[0] = 0
    # each item costs 60 of a 100 budget: a second one is never admitted beside a running one
    assert list(ordered(work, range(6), workers=2, cost=lambda i: 60, max_cost=100)) == list(range(6))
    assert peak[0] == 1


def test_ordered_runs_ahead_within_the_held_bytes():
    started = []

    def work(i):
        started.append(i)
        return i

    gen = ordered(work, range(40), workers=2, size=lambda i: 10, max_held=35)
    assert next(gen) == 0  # the consumer now holds item 0 and does not come back for a while
    time.sleep(0.1)
    assert sorted(started) == [0, 1, 2, 3]  # 1, 2, 3 computed ahead (30 bytes held), 4 would exceed 35
    assert list(gen) == list(range(1, 40))
    gen2 = ordered(work, range(100), workers=2)  # no sizes: bounded by MAX_AHEAD items
    next(gen2)
    time.sleep(0.1)
    assert len(started) - 44 <= prefetch.MAX_AHEAD + 1
    gen2.close()


def test_ordered_counts_the_result_being_consumed():
    """While the consumer holds a big result, the next big item waits (their sum would exceed max_cost); small items
    still run ahead beside a small result."""
    started = []

    def work(i):
        started.append(i)
        return i

    big = {0, 1}
    gen = ordered(work, range(4), workers=2, cost=lambda i: 60 if i in big else 1,
                  size=lambda i: 50 if i in big else 1, max_cost=100, max_held=10)
    assert next(gen) == 0  # the consumer holds item 0 (50 bytes): item 1 (60) would make 110 > 100
    time.sleep(0.1)
    assert started == [0]
    assert next(gen) == 1  # coming back released item 0: item 1 ran, then the small ones may run ahead
    time.sleep(0.1)
    assert sorted(started) == [0, 1, 2, 3]
    assert list(gen) == [2, 3]


def test_ordered_keeps_no_reference_to_a_taken_result():
    """Once the consumer drops a result nothing else holds it (a worker waiting to start its next item kept its last
    result alive: two 235 MB codes arrays at once at 70B). Item 2 cannot start while the consumer holds item 1, so
    both workers wait; whichever computed item 0 must not hold it."""
    import gc
    import weakref

    class Result:
        pass

    for _ in range(10):  # which worker computes which item varies
        refs = []

        def work(i, refs=refs):
            r = Result()
            refs.append(weakref.ref(r))
            return r

        gen = ordered(work, range(3), workers=2, cost=lambda i: 60, size=lambda i: 50, max_cost=100, max_held=10)
        first = next(gen)
        del first
        second = next(gen)
        time.sleep(0.02)
        gc.collect()
        assert refs[0]() is None and refs[1]() is second
        del second
        assert list(gen) == [refs[2]()]


def test_ordered_raises_in_turn_and_stops():
    started = []

    def work(i):
        started.append(i)
        if i == 3:
            raise ValueError("bad item 3")
        return i

    got = []
    with pytest.raises(ValueError, match="bad item 3"):
        for r in ordered(work, range(50), workers=2):
            got.append(r)
    assert got == [0, 1, 2]  # the earlier results came first
    assert max(started) <= 3 + prefetch.MAX_AHEAD  # nothing far ahead was started


def test_ordered_closed_early_waits_for_running_items():
    done = []

    def work(i):
        time.sleep(0.01)
        done.append(i)
        return i

    gen = ordered(work, range(100), workers=2)
    assert next(gen) == 0
    gen.close()
    n = len(done)
    time.sleep(0.05)
    assert len(done) == n <= 2 + prefetch.MAX_AHEAD  # no worker still running after close()


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(params=[1, 2, 3])
def workers(request, monkeypatch):
    monkeypatch.setattr(prefetch, "default_workers", lambda: request.param)
    return request.param


@pytest.mark.parametrize("arch", ["bitnet-2b4t", "llama-bitnet"])
def test_hf_commands_same_bytes_with_any_worker_count(models, tmp_path, arch, workers, monkeypatch):
    from bitconv import pipeline

    src = models(arch)
    pipeline.pack_hf(src, tmp_path / "packed")
    pipeline.quantize(src, tmp_path / "ternary")
    pipeline.unpack_hf(tmp_path / "packed", tmp_path / "unpacked")
    got = {d: _files(tmp_path / d) for d in ("packed", "ternary", "unpacked")}
    monkeypatch.setattr(prefetch, "default_workers", lambda: 1)  # the sequential reference
    for d in got:
        getattr(pipeline, {"packed": "pack_hf", "ternary": "quantize", "unpacked": "unpack_hf"}[d])(
            tmp_path / "packed" if d == "unpacked" else src, tmp_path / f"{d}-seq")
        assert got[d] == _files(tmp_path / f"{d}-seq"), d


@pytest.mark.parametrize("gguf_type", ["i2_s", "tq1_0", "tl2", "f16", "iq2_bn"])
def test_gguf_same_bytes_with_any_worker_count(models, tmp_path, gguf_type, workers, monkeypatch):
    from bitconv.sinks.gguf import pack_gguf

    src = models("bitnet-2b4t")
    pack_gguf(src, tmp_path / "par.gguf", gguf_type, force=True)
    monkeypatch.setattr(prefetch, "default_workers", lambda: 1)
    pack_gguf(src, tmp_path / "seq.gguf", gguf_type, force=True)
    assert (tmp_path / "par.gguf").read_bytes() == (tmp_path / "seq.gguf").read_bytes()


def test_workspace_buffers_are_per_thread():
    import torch

    from bitconv.quant import Workspace

    ws = Workspace()
    main = ws.get("x", 10, torch.float32)
    other = []
    t = threading.Thread(target=lambda: other.append(ws.get("x", 10, torch.float32)))
    t.start()
    t.join()
    assert main.data_ptr() != other[0].data_ptr()
    assert ws.get("x", 5, torch.float32).data_ptr() == main.data_ptr()  # reused on its own thread


def test_ternarize_on_a_worker_thread_uses_the_same_reduction_order():
    """The scale depends on torch's float32 reduction, split over its intra-op threads; a worker thread must reduce
    exactly like the main thread (sizes above torch's GRAIN, so the split happens)."""
    import numpy as np
    import torch

    from bitconv.quant import ternarize

    g = torch.Generator().manual_seed(7)
    ws = [(torch.randn(n, generator=g) * 0.02).bfloat16().reshape(-1, 1) for n in (32769, 98_317, 1_000_003)]
    ws += [w.float() for w in ws]
    main = [ternarize(w) for w in ws]
    got = list(ordered(ternarize, ws, workers=2))
    for a, b in zip(main, got):
        assert np.array_equal(a.codes, b.codes) and np.float32(a.scale).tobytes() == np.float32(b.scale).tobytes()
