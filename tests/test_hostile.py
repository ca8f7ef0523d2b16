"""Hostile and broken inputs: the corpus through the CLI, a fuzzer over the readers, and crash-safe writes.

Every corpus case (tests/corpus.py) must give exit code 2 and exactly one `error: ` line naming the file and the
problem; no traceback; nothing written (no OUT, no `.bitconv-tmp-*`); the input unchanged; and no allocation near
the sizes a lying header declares (each case runs under an address-space limit of the current size + 2 GiB, far
below the 10^12+ bytes those headers claim). The fuzzer mutates valid tiny safetensors, GGUF and Nanotron files and
accepts only a clean one-line BitconvError or a complete read. A SIGKILLed multi-shard `pack` leaves no OUT, and a
full disk fails in one line, leaving nothing.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from bitconv.cli import app
from bitconv.core.errors import BitconvError
from bitconv.output import TMP_PREFIX
from bitconv.sources import open_source
from tests import corpus
from tests.corpus import CASES, CONTROLS, MARKER, Case
from tests.test_hub import emu  # noqa: F401  (the Hub emulator fixture)

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent
GIB = 1 << 30


@pytest.fixture(autouse=True)
def no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    """BITCONV_DEBUG=1 turns one-line errors into tracebacks: the contract tested here is the default."""
    monkeypatch.delenv("BITCONV_DEBUG", raising=False)


@pytest.fixture(scope="session", autouse=True)
def corpus_bases(tmp_path_factory: pytest.TempPathFactory, models) -> corpus._Bases:
    corpus.BASES.root = tmp_path_factory.mktemp("corpus-bases")
    corpus.BASES.tiny = models  # the bases' tiny masters come from the session's one factory
    return corpus.BASES


def _vm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


@contextlib.contextmanager
def address_space_limit(headroom: int = 2 * GIB):
    """Cap this process's address space at its current size + `headroom`: a huge allocation fails instead."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _vm_bytes() + headroom
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def snapshot(folder: Path) -> dict[str, str]:
    """Every path under `folder` -> sha256 of its bytes ("dir" for folders, the target for links, the kind for
    FIFOs and devices: never followed or read), with the size of sparse giants instead of their bytes."""
    import stat as st_

    out = {}
    for p in sorted(folder.rglob("*")):
        m = os.lstat(p)
        if st_.S_ISLNK(m.st_mode):
            v = "link:" + os.readlink(p)
        elif st_.S_ISDIR(m.st_mode):
            v = "dir"
        elif not st_.S_ISREG(m.st_mode):
            v = f"special:{st_.S_IFMT(m.st_mode)}"
        elif m.st_size > 1 << 28:
            v = f"size:{m.st_size}:{m.st_blocks}"
        else:
            v = hashlib.sha256(p.read_bytes()).hexdigest()
        out[str(p.relative_to(folder))] = v
    return out


def leftovers(folder: Path) -> list[str]:
    return [str(p) for pat in (f"{TMP_PREFIX}*", ".bitconv-old-*", ".bitconv-lock-*") for p in folder.rglob(pat)]


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


# ------------------------------------------------------------------------------------------------------ corpus


def test_corpus_size():
    assert len(CASES) >= 50
    kinds = Counter(c.id.split("-")[0] for c in CASES)
    assert {"st", "idx", "cfg", "w", "pickle", "gguf", "nt"} <= set(kinds), kinds


@pytest.mark.parametrize("base, command", CONTROLS, ids=[f"{b}-{c[0]}" for b, c in CONTROLS])
def test_bases_are_valid(base, command, tmp_path):
    """Each (base, command) the corpus mutates succeeds unmutated: every corpus error comes from its mutation."""
    src = corpus.clone(base, tmp_path)
    r = runner.invoke(app, [a.format(src=src, out=tmp_path / "out") for a in command], catch_exceptions=False)
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_corpus_case(case: Case, tmp_path: Path):
    src = case.build(tmp_path)
    out = corpus.out_of(case, tmp_path)
    existed = os.path.lexists(out)
    before = snapshot(tmp_path)
    with address_space_limit():
        r = runner.invoke(app, corpus.command_of(case, src, out))
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code == 2, r.output
    line = one_error_line(r.stderr)
    assert case.file in line, line
    for fragment in case.expect:
        assert fragment in line, line
    assert "Traceback" not in r.output and "internal error" not in line
    assert (existed or not os.path.lexists(out)) and not leftovers(tmp_path)
    assert corpus.SECRET not in r.output, "a file outside SRC was read"
    assert not (tmp_path / MARKER).exists(), "a pickle was unpickled"
    assert snapshot(tmp_path) == before  # input unchanged, nothing left behind


def test_hostile_pickle_would_run_code(tmp_path):
    """The corpus' pickles are live: unpickling one creates the marker (so its absence above means something)."""
    import pickle

    pickle.loads(corpus.hostile_pickle(tmp_path / MARKER))
    assert (tmp_path / MARKER).exists()


def _run_with_rusage(cmd: list[str], limit: int, stderr: Path, timeout: float = 120) -> tuple[int, str, int]:
    """Run `cmd` with RLIMIT_AS = `limit`; return (exit code, stderr, peak RSS in bytes) of that one child."""
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = {k: v for k, v in os.environ.items() if k != "BITCONV_DEBUG"}
    env["PYTHONPATH"] = str(ROOT)
    with open(stderr, "wb") as err:
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, preexec_fn=cap, env=env, cwd=ROOT)
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            p.kill()
            pytest.fail(f"{cmd} ran past {timeout} s")
        time.sleep(0.02)
    p.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: Popen must not wait again
    return p.returncode, stderr.read_text(), usage.ru_maxrss * 1024


@pytest.mark.slow
@pytest.mark.parametrize("case_id", ["st-huge-shape-consistent-offsets", "gguf-huge-dims"])
def test_end_to_end_lying_header(case_id, tmp_path):
    """`python -m bitconv` as a user runs it: exit 2, one line, no traceback, bounded memory (1.5 GiB address
    space, peak RSS under 1 GiB) on a header declaring 4 TiB / 2 EiB."""
    case = next(c for c in CASES if c.id == case_id)
    work = tmp_path / "case"
    work.mkdir()
    src = case.build(work)
    before = snapshot(work)
    cmd = [sys.executable, "-m", "bitconv", *corpus.command_of(case, src, work / "out")]
    code, err, peak = _run_with_rusage(cmd, 3 * GIB // 2, tmp_path / "stderr")
    assert code == 2, err
    line = one_error_line(err)
    assert "Traceback" not in err and case.file in line and all(f in line for f in case.expect), line
    assert peak < GIB, peak
    assert snapshot(work) == before


def test_all_zero_projection_is_accepted_as_documented(tmp_path):
    """An all-zero projection is not refused: codes all 0 and scale 1e-5 (the absmean floor), see docs/refusals.md."""
    src = corpus.clone("st", tmp_path)
    corpus._values(corpus.Q, 0.0)(src / "model.safetensors")
    t = open_source(src).tensors[corpus.Q].ternary()
    assert not t.codes.any() and float(t.scale) == pytest.approx(1e-5)
    r = runner.invoke(app, ["quantize", str(src), "-o", str(tmp_path / "t")], catch_exceptions=False)
    assert r.exit_code == 0, r.output


# ------------------------------------------------------------------------------------------------------ fuzzing

FUZZ_BASE = settings(derandomize=True, database=None, deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])
EXAMPLES = {"safetensors-bytes": 300, "safetensors-header": 300, "gguf-bytes": 400, "gguf-kv": 150,
            "nanotron-bytes": 200, "nanotron-metadata": 200}
def fuzz(name: str) -> settings:
    """Derandomized, no example database, a fixed number of examples: the same run in CI every time."""
    return settings(FUZZ_BASE, max_examples=int(EXAMPLES[name] * SCALE))


SCALE = float(os.environ.get("BITCONV_FUZZ_SCALE", "1"))  # e.g. 20 for a longer local hunt; CI runs 1


OUTCOMES: dict[str, Counter] = {k: Counter() for k in EXAMPLES}
U64S = [0, 1, 7, 8, 31, 32, 2**31, 2**32 - 1, 2**32, 2**62, 2**63, 2**64 - 1]
U32S = [0, 1, 2, 3, 4, 5, 7, 8, 9, 12, 13, 30, 34, 35, 36, 38, 39, 42, 99, 2**31, 2**32 - 1]


def read_everything(src: Path) -> str:
    """Open SRC and read every tensor: "read", or "error" for a clean one-line BitconvError; anything else raises."""
    try:
        with address_space_limit():
            ck = open_source(src)
            for name, t in ck.tensors.items():
                if t.is_ternary:
                    t.ternary()
                else:
                    ck.load_passthrough(name)
    except BitconvError as e:
        msg = str(e)
        assert msg and "\n" not in msg and "\r" not in msg, msg
        return "error"
    return "read"


def byte_ops(size: int, hot: int) -> st.SearchStrategy:
    """1-3 edits of a file of `size` bytes, biased to its first `hot` bytes (the header)."""
    pos = st.one_of(st.integers(0, max(hot - 1, 0)), st.integers(0, size - 1))
    return st.lists(st.one_of(
        st.tuples(st.just("byte"), pos, st.integers(0, 255)),
        st.tuples(st.just("u64"), pos, st.sampled_from([*U64S, size, hot, size - hot])),
        st.tuples(st.just("u32"), pos, st.sampled_from(U32S)),
        st.tuples(st.just("cut"), st.integers(0, size), st.just(0)),
    ), min_size=1, max_size=3)


_PACK = {"u64": "<Q", "u32": "<I", "byte": "<B"}


def apply_ops(raw: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    b = bytearray(raw)
    for op, pos, value in ops:
        if op == "cut":
            del b[pos:]
        else:
            v = struct.pack(_PACK[op], value)
            b[pos:pos + len(v)] = v[:max(len(b) - pos, 0)]
    return bytes(b)


def st_hot(raw: bytes) -> int:
    return 8 + struct.unpack("<Q", raw[:8])[0]


@contextlib.contextmanager
def mutated(path: Path, data: bytes):
    """`path` holds `data` for the duration; its original bytes come back afterwards."""
    original = path.read_bytes()
    path.write_bytes(data)
    try:
        yield
    finally:
        path.write_bytes(original)


@pytest.fixture(scope="module")
def fuzz_src(tmp_path_factory: pytest.TempPathFactory):
    """Private copies of the bases the fuzzer mutates (restored after every example)."""
    root = tmp_path_factory.mktemp("fuzz")
    out = {}
    for name in ("st", "gguf-compact", "nt"):
        (root / name).mkdir()
        out[name] = corpus.clone(name, root / name)
    out["nt"] = _nt_yaml(root / "nt-bare", "", "")  # no recorded vocab or tokenizer: config.yaml is read
    return out


@fuzz("safetensors-bytes")
@given(data=st.data())
def test_fuzz_safetensors_bytes(fuzz_src, data):
    path = fuzz_src["st"] / "model.safetensors"
    raw = path.read_bytes()
    ops = data.draw(byte_ops(len(raw), st_hot(raw)))
    with mutated(path, apply_ops(raw, ops)):
        OUTCOMES["safetensors-bytes"][read_everything(fuzz_src["st"])] += 1


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=2),
    max_leaves=6)
HEADER_VALUES = st.one_of(
    JSON_VALUES,
    st.lists(st.integers(0, 2**20), max_size=3),  # shapes / offsets that might almost fit
    st.lists(st.sampled_from([0, 1, 64, 128, 320, 2**31, 2**40, 2**63]), min_size=1, max_size=3),
    st.sampled_from(["BF16", "F16", "F32", "U8", "I8", "BOOL", "F64", "I64", "F8_E4M3", "bf16", ""]),
)


@fuzz("safetensors-header")
@given(data=st.data())
def test_fuzz_safetensors_header(fuzz_src, data):
    """Structured mutations of the JSON header: any field of any entry (or the entry itself) gets any value."""
    path = fuzz_src["st"] / "model.safetensors"
    header, payload = corpus.st_header(path)
    for _ in range(data.draw(st.integers(1, 3))):
        name = data.draw(st.sampled_from(sorted(header)))
        field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", None, "__rename__"]))
        if field is None:
            header[name] = data.draw(HEADER_VALUES)
        elif field == "__rename__":
            header[data.draw(st.text(max_size=40))] = header.pop(name)
        elif isinstance(header[name], dict):
            header[name][field] = data.draw(HEADER_VALUES)
    head = json.dumps(header).encode()
    with mutated(path, struct.pack("<Q", len(head)) + head + payload):
        OUTCOMES["safetensors-header"][read_everything(fuzz_src["st"])] += 1


@fuzz("gguf-bytes")
@given(data=st.data())
def test_fuzz_gguf_bytes(fuzz_src, data):
    from bitconv.formats.gguf import read_gguf

    path = fuzz_src["gguf-compact"]
    raw = path.read_bytes()
    ops = data.draw(byte_ops(len(raw), read_gguf(corpus.BASES.get("gguf-compact")).data_start))
    with mutated(path, apply_ops(raw, ops)):
        OUTCOMES["gguf-bytes"][read_everything(path)] += 1


@fuzz("gguf-kv")
@given(data=st.data())
def test_fuzz_gguf_metadata(fuzz_src, data):
    """Structured mutations of the GGUF KVs: any KV replaced by a value of any type (the config is built from them)."""
    from bitconv.formats.gguf import KV, write_gguf
    from bitconv.formats.gguf.kv import ValueType

    kvs, tensors = corpus.gguf_parts(corpus.BASES.get("gguf-compact"))
    if data.draw(st.booleans()):  # the same model as `llama` (q/k rows permuted by head count on load)
        kvs, tensors = corpus._as_llama(kvs), corpus.llama_tensors(tensors)
    values = st.one_of(
        st.builds(KV.u32, st.just(""), st.sampled_from([0, 1, 2, 3, 4, 64, 128, 256, 2**31, 2**32 - 1])),
        st.builds(KV.f32, st.just(""), st.floats(width=32)),
        st.builds(KV.string, st.just(""), st.text(max_size=8)),
        st.builds(KV.boolean, st.just(""), st.booleans()),
        st.builds(lambda v: KV.array("", ValueType.INT32, v), st.lists(st.integers(-2**31, 2**31 - 1), max_size=3)),
    )
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(kvs) - 1))
        v = data.draw(values)
        kvs[i] = KV(kvs[i].key, v.type, v.value, v.item_type)
    path = fuzz_src["gguf-compact"]
    original = path.read_bytes()
    try:
        write_gguf(path, kvs, tensors)
        OUTCOMES["gguf-kv"][read_everything(path)] += 1
    finally:
        path.write_bytes(original)


def _nt_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.safetensors"))


@fuzz("nanotron-bytes")
@given(data=st.data())
def test_fuzz_nanotron_bytes(fuzz_src, data):
    root = fuzz_src["nt"]
    path = data.draw(st.sampled_from(_nt_files(root)))
    raw = path.read_bytes()
    with mutated(path, apply_ops(raw, data.draw(byte_ops(len(raw), st_hot(raw))))):
        OUTCOMES["nanotron-bytes"][read_everything(root)] += 1


YAML_VALUES = st.sampled_from(["[1]", "5", "-3", "0", "abc", "null", "{a: 1}", "''", "true", "1e400", "[a, [b]]"])
SLICE_TEXT = st.text(alphabet="0123456789,|#;() Nonep.-", max_size=60)


@fuzz("nanotron-metadata")
@given(data=st.data())
def test_fuzz_nanotron_metadata(fuzz_src, data):
    """Structured mutations of shard metadata (slices, unsharded_shape, version) and of the configs."""
    root = fuzz_src["nt"]
    sharded = [p for p in _nt_files(root) if "tp-rank" in p.name]
    path = data.draw(st.sampled_from(sharded))
    header, payload = corpus.st_header(path)
    meta = header["__metadata__"]
    key = data.draw(st.sampled_from(sorted(meta)))
    if data.draw(st.booleans()):  # a small edit of the real value keeps it close to parseable
        i = data.draw(st.integers(0, len(meta[key])))
        meta[key] = meta[key][:i] + data.draw(SLICE_TEXT) + meta[key][i + data.draw(st.integers(0, 4)):]
    else:
        meta[key] = data.draw(SLICE_TEXT)
    head = json.dumps(header).encode()
    cpath = root / data.draw(st.sampled_from(["model_config.json", "checkpoint_metadata.json", "config.yaml"]))
    text = cpath.read_text()
    if cpath.suffix == ".yaml":  # a `key: value` line gets another value (sections included)
        lines = text.splitlines()
        i = data.draw(st.sampled_from([i for i, ln in enumerate(lines) if ":" in ln]))
        lines[i] = lines[i].split(":")[0] + ": " + data.draw(YAML_VALUES)
        text = "\n".join(lines) + "\n"
    elif data.draw(st.booleans()):
        cfg = json.loads(text)
        cfg[data.draw(st.sampled_from(sorted(cfg)))] = data.draw(JSON_VALUES)
        text = json.dumps(cfg)
    with mutated(path, struct.pack("<Q", len(head)) + head + payload), mutated(cpath, text.encode()):
        OUTCOMES["nanotron-metadata"][read_everything(root)] += 1


def test_fuzz_outcomes_reported():
    """Runs after the fuzz tests (file order): prints how many examples each ran and how they ended."""
    for name, counts in OUTCOMES.items():
        print(f"fuzz {name}: {sum(counts.values())} examples, {dict(counts)}")


# ------------------------------------------------------------------------------------------------------ crash safety

PAUSING_PACK = '''
import sys, time
from pathlib import Path

from bitconv.formats import safetensors as safetensors_io

flag, done = Path(sys.argv[1]), []


def pausing(original):
    def method(self, name, data):
        original(self, name, data)
        done.append(name)
        if len(done) == 3:  # mid-write: three tensors in, the rest of the shards still to fill
            part = flag.with_name(flag.name + ".part")  # the test polls for the flag: it appears whole, never empty
            part.write_text(str(self.path))
            part.replace(flag)
            time.sleep(600)
    return method


for name in ("write", "copy_from"):
    setattr(safetensors_io.SafetensorsWriter, name, pausing(getattr(safetensors_io.SafetensorsWriter, name)))

from bitconv.cli import main

sys.argv = ["bitconv", *sys.argv[2:]]
main()
'''


def _paused_pack(tmp_path: Path) -> tuple[Path, Path, list[str], Path, subprocess.Popen]:
    """A multi-shard `bitconv pack` in a subprocess, paused after its third tensor (the flag file names the shard
    being written): (SRC, OUT, the pack arguments, the flag, the process). The caller kills it."""
    src = corpus.clone("st", tmp_path)
    out, flag, script = tmp_path / "packed", tmp_path / "mid-write", tmp_path / "pausing_pack.py"
    script.write_text(PAUSING_PACK)
    args = ["pack", str(src), "-o", str(out), "--max-shard-size", "4KB"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, str(script), str(flag), *args], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, env=env, cwd=ROOT)
    deadline = time.monotonic() + 120
    while not (flag.exists() and flag.read_text()):
        if p.poll() is not None or time.monotonic() > deadline:
            p.kill()
            p.wait()
            raise AssertionError(f"pack never reached its third tensor: {p.stderr.read().decode()}")
        time.sleep(0.02)
    return src, out, args, flag, p


def test_sigkill_mid_write_leaves_no_output(tmp_path):
    """SIGKILL a multi-shard `bitconv pack` while it writes: no OUT; the leftover is `.bitconv-tmp-<OUT>`, beside
    OUT, and the next run on the same OUT removes it and succeeds. (The pause is a test-side patch that stops the
    writer thread after its third tensor, so the kill lands mid-write every time, with no hook in bitconv.)"""
    src, out, args, flag, p = _paused_pack(tmp_path)
    try:
        tmp = Path(flag.read_text()).parent
        assert tmp.name.startswith(f"{TMP_PREFIX}packed-{p.pid}-")  # unique per run: OUT, pid, random
        shards = sorted(tmp.glob("model-*-of-*.safetensors"))
        assert len(shards) >= 3 and Path(flag.read_text()).parent == tmp and not out.exists()
    finally:
        p.kill()  # SIGKILL
        p.wait()
        p.stderr.close()
    assert p.returncode == -signal.SIGKILL
    assert not out.exists()
    assert sorted(x.name for x in tmp_path.iterdir() if x.name.startswith(TMP_PREFIX)) == [tmp.name]
    r = runner.invoke(app, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert not tmp.exists() and not leftovers(tmp_path)
    assert len(open_source(out).tensors) == len(open_source(src).tensors)
    assert len(list(out.glob("model-*-of-*.safetensors"))) == len(shards)


class _DiskFull:
    """Writes succeed until `budget` bytes, then fail with ENOSPC, as on a full disk."""

    def __init__(self, budget: int) -> None:
        self.budget = budget

    def take(self, data: object) -> None:
        n = memoryview(data).nbytes
        if n > self.budget:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.budget -= n


def _no_copy_range(*args: object) -> int:
    raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))  # bitconv falls back to pread/pwrite


def assert_clean_failure(r, tmp_path: Path, before: dict, *fragments: str) -> None:
    assert r.exit_code == 2, r.output
    line = one_error_line(r.stderr)
    assert all(f in line for f in fragments) and "Traceback" not in r.output, line
    assert not leftovers(tmp_path) and snapshot(tmp_path) == before


def test_disk_full_mid_write_multi_shard(tmp_path, monkeypatch):
    src = corpus.clone("st", tmp_path)
    before = snapshot(tmp_path)
    disk, real = _DiskFull(20_000), os.pwrite

    def pwrite(fd: int, data: object, offset: int) -> int:
        disk.take(data)
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    monkeypatch.setattr(os, "copy_file_range", _no_copy_range)
    r = runner.invoke(app, ["pack", str(src), "-o", str(tmp_path / "out"), "--max-shard-size", "10KB"])
    assert_clean_failure(r, tmp_path, before, "No space left on device", f"{TMP_PREFIX}out")
    assert disk.budget < 20_000  # it did fail mid-write, not up front


def test_disk_full_mid_write_gguf(tmp_path, monkeypatch):
    from bitconv.formats.gguf import writer

    src = corpus.clone("st", tmp_path)
    before = snapshot(tmp_path)
    disk = _DiskFull(30_000)

    class FullFile:
        def __init__(self, f) -> None:
            self._f = f

        def write(self, data: object) -> int:
            disk.take(data)
            return self._f.write(data)

        def __getattr__(self, name: str) -> object:
            return getattr(self._f, name)

    monkeypatch.setattr(writer, "open", lambda *a, **k: FullFile(open(*a, **k)), raising=False)
    r = runner.invoke(app, ["pack", str(src), "--to", "gguf", "--type", "f16", "-o", str(tmp_path / "out.gguf")])
    assert_clean_failure(r, tmp_path, before, "No space left on device")


def test_not_enough_space_refused_up_front(tmp_path, monkeypatch):
    from bitconv import output

    src = corpus.clone("st", tmp_path)
    before = snapshot(tmp_path)
    monkeypatch.setattr(output.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 4096, 4096))
    r = runner.invoke(app, ["quantize", str(src), "-o", str(tmp_path / "out")])
    assert_clean_failure(r, tmp_path, before, "not enough disk space", "headroom", "KiB are free")


def _nt_yaml(tmp_path: Path, old: str, new: str) -> Path:
    """The Nanotron base with no recorded vocabulary or tokenizer (so config.yaml decides), config.yaml edited."""
    src = corpus.clone("nt", tmp_path)
    (src / "tokenizer.json").unlink()
    meta = json.loads((src / "checkpoint_metadata.json").read_text())
    meta.pop("custom_metas")
    (src / "checkpoint_metadata.json").write_text(json.dumps(meta))
    y = (src / "config.yaml").read_text()
    y = y.replace("tokenizer_name_or_path: /", "tokenizer_name_or_path: /nonexistent/").replace(old, new)
    (src / "config.yaml").write_text(y)
    return src


@pytest.mark.parametrize("old, new", [("make_vocab_size_divisible_by: 1", "make_vocab_size_divisible_by: abc"),
                                      ("tokenizer:\n", "tokenizer: 5\nzz:\n")], ids=["multiple-abc", "tokenizer-5"])
def test_nanotron_config_yaml_values(tmp_path, old, new):
    """config.yaml sections of the wrong type (found by this corpus: once ValueError / AttributeError, exit 3)."""
    assert read_everything(_nt_yaml(tmp_path, old, new)) == "read"


# ------------------------------------------------------------------------------------------------------ found bugs
# Found by this corpus outside the readers, now fixed: a hostile name on a terminal, and disk full at the very end.


def test_error_line_with_markup_on_a_terminal(monkeypatch):
    import io

    from rich.console import Console

    from bitconv.cli import render

    buf = io.StringIO()
    monkeypatch.setattr(render, "err", Console(file=buf, force_terminal=True, width=160, soft_wrap=True))
    render.error("model.safetensors: tensor '[/x]': unknown dtype 'Q'")
    assert "[/x]" in buf.getvalue()


def test_disk_full_writing_config(tmp_path, monkeypatch):
    from bitconv.sinks import hf

    def full(path: Path, data: dict) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    src = corpus.clone("st", tmp_path)
    before = snapshot(tmp_path)
    monkeypatch.setattr(hf, "write_json", full)
    r = runner.invoke(app, ["pack", str(src), "-o", str(tmp_path / "out")])
    assert_clean_failure(r, tmp_path, before, "No space left on device")


# ------------------------------------------------------------------------------------------------------ Hub


_NESTED = "[" * 100_000 + "]" * 100_000
# kind -> (the weight files of a hostile repo (marker path) -> {name: content}, fragments of its one error line)
HUB_CASES = {
    "traversal": (lambda m: {corpus.INDEX: json.dumps({"weight_map": {corpus.Q: "../../../escape.safetensors"}})},
                  ("has no weight_map naming .safetensors files in its folder",)),
    "pickle-only": (lambda m: {"pytorch_model.bin": corpus.hostile_pickle(m)},
                    ("not a supported checkpoint", "pytorch_model.bin")),
    "truncated": (lambda m: {"model.safetensors": (corpus.BASES.get("st") / "model.safetensors").read_bytes()[:-1000]},
                  ("model.safetensors", "truncated file")),
    "pickle-as-safetensors": (lambda m: {"model.safetensors": corpus.hostile_pickle(m)},
                              ("model.safetensors", "never loaded")),
    "nested-index": (lambda m: {corpus.INDEX: _NESTED}, ("model.safetensors.index.json is not valid JSON",)),
}


@pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")
@pytest.mark.parametrize("kind", HUB_CASES)
def test_hostile_hub_repo(kind, emu, tmp_path):  # noqa: F811  (the Hub emulator fixture of test_hub)
    weights, expect = HUB_CASES[kind]
    files = {"config.json": corpus.BASES.get("st") / "config.json", "README.md": "# hostile\n"}
    emu.add_repo(f"stranger/{kind}", {**files, **weights(tmp_path / MARKER)})
    work = tmp_path / "work"
    work.mkdir()
    r = runner.invoke(app, ["pack", f"stranger/{kind}", "-o", str(work / "out")])
    assert r.exit_code == 2, r.output
    line = r.stderr.strip().splitlines()[-1]  # download progress bars may precede the error line
    assert line.startswith("error: ") and r.stderr.count("error:") == 1 and "Traceback" not in r.output, r.stderr
    assert all(f in line for f in expect), line
    assert not any(work.iterdir()) and not (tmp_path / MARKER).exists()
    assert not list(tmp_path.rglob("escape.safetensors"))  # nothing written outside the repo's cache folder


# ------------------------------------------------------------------------------------------------------ round two
# issue 13: terminal injection, concurrent writers, aliasing by mount, overwrite crash windows, SIGINT, tokens,
# the config fuzz, ini files, free space.

ESC_NAME = "model.layers.0.[/]\x1b]8;;http://evil\x07x\x1b[2J\x1b[1A.weight"


def _hostile_names(tmp_path: Path) -> Path:
    src = corpus.clone("st", tmp_path)
    corpus.st_rewrite(src / "model.safetensors", lambda h: h.update({ESC_NAME: h.pop(corpus.NORM)}))
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(torch_dtype="[/]\x1b[31mred[bold]", model_type="bitnet\x1b]8;;x\x07")
    (src / "config.json").write_text(json.dumps(cfg))
    return src


@pytest.mark.parametrize("args", [["inspect", "{src}", "--tensors"], ["inspect", "{src}"], ["check", "{src}"],
                                  ["pack", "{src}", "-o", "{out}"], ["pack", "{src}", "--dry-run", "-o", "{out}"]],
                         ids=["inspect-tensors", "inspect", "check", "pack", "pack-dry-run"])
@pytest.mark.parametrize("terminal", [False, True], ids=["pipe", "terminal"])
def test_markup_and_escapes_in_names_are_rendered_inert(args, terminal, tmp_path, monkeypatch):
    """Rich markup and ANSI/OSC-8 escapes in tensor names and config values: no crash (once exit 3, for pack after
    OUT was written), and no escape byte reaches the output, on a terminal or a pipe."""
    import io

    from bitconv.cli import render

    src = _hostile_names(tmp_path)
    buf = io.StringIO()
    if terminal:
        for name in ("out", "err"):
            monkeypatch.setattr(render, name, render.SafeConsole(file=buf, force_terminal=True, width=200,
                                                                 markup=False, highlight=False))
    r = runner.invoke(app, [a.format(src=src, out=tmp_path / "out") for a in args])
    text = r.output + buf.getvalue()
    assert r.exit_code in (0, 1) and r.exception is None or isinstance(r.exception, SystemExit), text
    assert "Traceback" not in text and "internal error" not in text, text
    assert "\x1b]" not in text and "\x1b[2J" not in text and "\x07" not in text, repr(text)
    if args[0] == "inspect" and "--tensors" in args:
        assert "[/]\\x1b]8;;http://evil\\x07x" in text  # shown, escaped, not interpreted


def test_render_clean_escapes_every_control_character():
    from bitconv.cli import render

    raw = "a\x1b[2Jb\x07c\rd\ne\x9bf\u202eg\x00"
    assert render.clean(raw) == "a\\x1b[2Jb\\x07c\\x0dd\\x0ae\\x9bf\\u202eg\\x00"
    assert render.clean("plain [/] text") == "plain [/] text"


def test_second_concurrent_writer_is_refused(tmp_path):
    """While one run holds OUT's lock, a second run on the same OUT is refused in one line and touches nothing."""
    import fcntl

    src = corpus.clone("st", tmp_path)
    lock = tmp_path / ".bitconv-lock-out"
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another bitconv run writing `out`
        before = snapshot(tmp_path)
        r = runner.invoke(app, ["pack", str(src), "-o", str(tmp_path / "out")])
        assert r.exit_code == 2, r.output
        assert "another bitconv run is writing this output" in one_error_line(r.stderr)
        assert snapshot(tmp_path) == before and not (tmp_path / "out").exists()
    lock.unlink()
    r = runner.invoke(app, ["pack", str(src), "-o", str(tmp_path / "out")])
    assert r.exit_code == 0 and not leftovers(tmp_path), r.output


def test_two_real_runs_on_one_out(tmp_path):
    """A paused `pack` holds OUT; a second `pack` to the same OUT is refused and the first one's temp survives;
    after the first is SIGKILLed its temp is stale (owner gone) and the next run cleans it and succeeds."""
    _, out, args, flag, p = _paused_pack(tmp_path)
    try:
        first_tmp = Path(flag.read_text()).parent
        r = runner.invoke(app, args)
        assert r.exit_code == 2 and "another bitconv run" in one_error_line(r.stderr), r.output
        assert first_tmp.is_dir() and not out.exists()
    finally:
        p.kill()
        p.wait()
        p.stderr.close()
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert not first_tmp.exists() and not leftovers(tmp_path)


KILL_BETWEEN_RENAMES = '''
import os, sys
from bitconv import output

real, calls = os.rename, []


def rename(a, b):
    real(a, b)
    calls.append((a, b))
    if len(calls) == 1:  # the old OUT is aside, the new one not yet in: die here
        os._exit(9)


output.os.rename = rename
from bitconv.cli import main

sys.argv = ["bitconv", *sys.argv[1:]]
main()
'''


@pytest.mark.parametrize("target", ["hf", "gguf"])
def test_kill_between_the_overwrite_renames_keeps_the_old_out(target, tmp_path):
    """--overwrite moves the old OUT aside before the new one comes in: a kill between the two renames leaves the
    old OUT recoverable, and the next run puts it back (then replaces it properly)."""
    src = corpus.clone("st", tmp_path)
    out = tmp_path / ("out.gguf" if target == "gguf" else "out")
    cmd = ["pack", str(src), "-o", str(out)] + (["--to", "gguf", "--type", "f16"] if target == "gguf" else [])
    assert runner.invoke(app, cmd).exit_code == 0
    old = snapshot(out) if out.is_dir() else hashlib.sha256(out.read_bytes()).hexdigest()
    script = tmp_path / "kill.py"
    script.write_text(KILL_BETWEEN_RENAMES)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, str(script), *cmd, "--overwrite"], env=env, cwd=ROOT, capture_output=True)
    assert p.returncode == 9, p.stderr
    assert not out.exists() and list(tmp_path.glob(".bitconv-old-*"))  # the old one is aside, not gone
    r = runner.invoke(app, cmd)  # no --overwrite: the old OUT is back, so this is "already exists"
    assert r.exit_code == 2 and "already exists" in r.stderr, r.output
    assert (snapshot(out) if out.is_dir() else hashlib.sha256(out.read_bytes()).hexdigest()) == old
    assert not leftovers(tmp_path)


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


def test_bind_mounted_out_is_the_src(tmp_path):
    """`pack b/src -o b2/src --overwrite` with b2 a bind mount of b: same (device, inode), refused; the master
    survives (it was replaced and deleted when the check compared path strings)."""
    (tmp_path / "b").mkdir()
    (tmp_path / "b2").mkdir()
    src = corpus.clone("st", tmp_path / "b")
    if not _mount("--bind", str(tmp_path / "b"), str(tmp_path / "b2")):
        pytest.skip("bind mounts need privileges this run does not have")
    try:
        before = snapshot(tmp_path / "b")
        for out in (tmp_path / "b2" / "src", tmp_path / "b2" / "src" / "inner", tmp_path / "b2"):
            r = runner.invoke(app, ["pack", str(src), "-o", str(out), "--overwrite"])
            assert r.exit_code == 2, r.output
            assert "input" in one_error_line(r.stderr)
            assert snapshot(tmp_path / "b") == before
    finally:
        _mount_off(tmp_path / "b2")


def _mount_off(p: Path) -> None:
    subprocess.run(["umount", str(p)], capture_output=True)


def test_gguf_into_a_read_only_folder(tmp_path):
    """GGUF output into a read-only folder: one line, exit 2 (once exit 3), nothing left."""
    src = corpus.clone("st", tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:
        if not _mount("--bind", "-o", "ro", str(ro), str(ro)):
            pytest.skip("root ignores folder permissions and no read-only bind mount is possible")
    else:
        ro.chmod(0o555)
    try:
        r = runner.invoke(app, ["pack", str(src), "--to", "gguf", "--type", "i2_s", "-o", str(ro / "m.gguf")])
        assert r.exit_code == 2, r.output
        line = one_error_line(r.stderr)
        assert "not writable" in line or "Read-only" in line, line
        assert not list(ro.iterdir())
    finally:
        if os.geteuid() == 0:
            _mount_off(ro)
        ro.chmod(0o755)


def test_sigint_during_imports_prints_one_line(tmp_path):
    """Ctrl-C while typer, rich and torch import (the first second or so) prints the one line, exit 130. The
    signal is sent when `-X importtime` shows the CLI's imports under way, so it lands mid-import every time."""
    src = corpus.clone("st", tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "BITCONV_DEBUG"}
    env["PYTHONPATH"] = str(ROOT)
    for marker in ("typer", "rich.console", "numpy"):
        p = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "bitconv", "pack", str(src), "-o",
                              str(tmp_path / "o")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                             cwd=ROOT)
        seen = []
        for raw in p.stderr:
            seen.append(raw.decode())
            if raw.decode().rstrip().split("|")[-1].strip() == marker:
                p.send_signal(signal.SIGINT)
                break
        rest = p.stderr.read().decode()
        p.wait(timeout=60)
        p.stderr.close()
        text = "".join(ln for ln in [*seen, *rest.splitlines(True)] if not ln.startswith("import time:"))
        assert p.returncode == 130, text
        assert "Traceback" not in text and one_error_line(text) == "error: interrupted; no output was left behind"
        assert not (tmp_path / "o").exists() and not leftovers(tmp_path)


@pytest.mark.parametrize("token", ["hf_abcdefgh\x1b[2Jijkl", "hf_abcdefgh\nijklmnop", "hf_abcdéfghijklmn",
                                   "hf_abc defghijklm", "\x00\x01\x02\x03hf_secretvalue"])
def test_token_of_any_shape_never_echoed(token, tmp_path):
    """A --token with control, space or non-ASCII characters: one line, exit 2, and no form of it in the output."""
    src = corpus.clone("st", tmp_path)
    r = runner.invoke(app, ["upload", "someone/model", str(src), "--token", token])
    assert r.exit_code == 2, r.output
    line = one_error_line(r.stderr)
    assert "token" in line and "not shown" in line
    for form in (token, repr(token)[1:-1], token.encode("unicode_escape").decode(), "abcdefgh", "secretvalue"):
        assert form not in r.output


def test_scrub_removes_every_printed_form():
    from bitconv.sources.hub import scrub

    tok = "hf_abcd\x1befgh"
    for text in (f"bad header {tok!r}", f"bad header {tok.encode()!r}", f"bad {tok}"):
        assert "abcd" not in scrub(text, tok), scrub(text, tok)


def test_kernel_config_option_never_rewrites_the_users_ini(tmp_path):
    """--kernel-config naming the kernel_config.ini beside OUT (a hand-written one, same tiling, other text):
    the GGUF is written and the user's file is byte-for-byte unchanged."""
    from bitconv.layouts.kernel_config import derive

    src = corpus.clone("st", tmp_path)
    from bitconv.sources import open_source as _open

    shapes = {t.name: t.shape for t in _open(src).ternary_tensors()}
    text = "# my tiling\n" + derive("tl1", shapes).to_ini().replace(" = ", "=")
    (tmp_path / "o").mkdir()
    ini = tmp_path / "o" / "kernel_config.ini"
    ini.write_text(text)
    r = runner.invoke(app, ["pack", str(src), "--to", "gguf", "--type", "tl1", "--kernel-config", str(ini),
                            "-o", str(tmp_path / "o" / "m.gguf"), "--overwrite"])
    assert r.exit_code == 0, r.output
    assert ini.read_text() == text and (tmp_path / "o" / "m.gguf").is_file()


def test_nanotron_free_space_counts_side_files(tmp_path, monkeypatch):
    """convert --to nanotron: free space that fits the weights but not the side files is refused up front."""
    from bitconv import output

    src = corpus.clone("llama", tmp_path)
    (src / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {}}, "pad": "x" * (8 << 20)}))
    before = snapshot(tmp_path)
    weights = sum(f.stat().st_size for f in src.glob("*.safetensors"))
    free = weights + weights // 100 + (5 << 20)  # the weights and headroom fit; the 8 MiB tokenizer does not
    monkeypatch.setattr(output.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - free, free))
    r = runner.invoke(app, ["convert", str(src), "--to", "nanotron", "-o", str(tmp_path / "nt")])
    assert_clean_failure(r, tmp_path, before, "not enough disk space", "headroom")


def test_free_space_message_on_a_small_filesystem(tmp_path, monkeypatch):
    """A small output on a small filesystem: the message states the output's size, the headroom and what is free
    (it once said '0.1 MiB needed, 10.0 MiB free' and refused)."""
    from bitconv import output
    from bitconv.core.errors import OutputError

    monkeypatch.setattr(output.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 20, 7 << 20, 3 << 20))
    output.check_free_space(tmp_path, 100 << 10)  # headroom scales with the filesystem: 100 KiB fits in 3 MiB
    output.check_free_space(tmp_path, 2 << 20)
    with pytest.raises(OutputError, match=r"needs 3\.0 MiB \(\+ 0\.1 MiB headroom\), 3\.0 MiB are free"):
        output.check_free_space(tmp_path, 3 << 20)


CONFIG_FUZZ_DEFAULT = [(k, v) for i, k in enumerate(corpus.CONFIG_FUZZ_KEYS)
                       for v in (corpus.CONFIG_FUZZ_VALUES[i % 16], corpus.CONFIG_FUZZ_VALUES[(i + 7) % 16])]


def _config_fuzz(key: str, value: object, commands: tuple, tmp_path: Path) -> None:
    src = corpus.clone("st", tmp_path)
    cfg = json.loads((src / "config.json").read_text())
    cfg[key] = value
    (src / "config.json").write_text(json.dumps(cfg))
    before = snapshot(src)
    for i, cmd in enumerate(commands):
        out = tmp_path / f"out{i}"
        r = runner.invoke(app, [a.format(src=src, out=out) for a in cmd])
        ok = (0, 2, 1) if cmd[0] == "check" else (0, 2)  # check reports a bad config as a failed check (exit 1)
        assert r.exit_code in ok and "Traceback" not in r.output and "internal error" not in r.output, \
            (key, value, cmd, r.output)
        if r.exit_code == 2:
            one_error_line(r.stderr)
    assert snapshot(src) == before


@pytest.mark.parametrize("key, value", CONFIG_FUZZ_DEFAULT, ids=[f"{k}={v!r}" for k, v in CONFIG_FUZZ_DEFAULT])
def test_config_fuzz_sample(key, value, tmp_path):
    """54 (key, value) pairs of the 27 x 16 grid through 3 commands: never exit 3."""
    _config_fuzz(key, value, (corpus.INSPECT, corpus.PACK, corpus.CONFIG_FUZZ_COMMANDS[3]), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("key", corpus.CONFIG_FUZZ_KEYS)
def test_config_fuzz_full(key, tmp_path):
    """The whole grid: 27 keys x 16 values x 8 commands (about 3 minutes): never exit 3."""
    for i, value in enumerate(corpus.CONFIG_FUZZ_VALUES):
        (tmp_path / str(i)).mkdir()
        _config_fuzz(key, value, corpus.CONFIG_FUZZ_COMMANDS, tmp_path / str(i))
