"""Round trip: every tensor of OUT against a fresh ternarization of the same tensor of REF.

Ternary tensors: OUT's codes are decoded and compared with `ternarize(REF)` code for code; OUT's scale with REF's
scale as OUT's format stores it (each layout's `scale_dtype` / `scale_inverted`, encoded and decoded by the layouts'
one scale rule, `bitconv.layouts.encode_scale` / `decode_scale`: bf16 for HF packed, 1/scale for `bitlinear`, float32
or fp16 for the GGUF types), within one unit in the last place of that precision (a re-pack between linear classes
rounds twice). The compute mode that made OUT's codes (`float32`, transformers' WeightQuant, or `bfloat16`,
onebitllms) is detected: the declared or last matching mode is tried
first, the other only on a mismatch. Passthrough tensors must equal REF's cast to OUT's stored dtype (exact for
every float type); Q8_0 ones (decoded by a loader) within half a quantization step.

A mismatch is diagnosed (`FAULTS`) so the message names the tensor and what went wrong: inverted scale, codes
re-quantized from already-ternary weights (codes unchanged, scale x nonzero fraction), llama.cpp's q/k RoPE
permutation applied (once, or twice), rows shifted or permuted, codes negated, transposed, or plain code flips with
the count and the first mismatching row.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from bitconv.core import dtypes, native
from bitconv.core.alloc import keep_freed_memory, release_freed_memory
from bitconv.core.errors import BitconvError
from bitconv.core.tensors import Ternary, row_ranges
from bitconv.layouts import decode_scale, encode_scale, layout_class
from bitconv.memory import ternary_bytes
from bitconv.quant import COMPUTE_MODES
from bitconv.sinks.prefetch import ordered
from bitconv.sources import Checkpoint, ModelTensor
from bitconv.verify.reference import LATENT_KINDS, plain_info, read_raw_rows

# one unit in the last place, relative (the largest spacing over a binade): the scale tolerance
ULP = {"BF16": 2.0**-7, "F16": 2.0**-10, "F32": 2.0**-23}

COMPUTE_NOTES = {
    "float32": "float32 (transformers WeightQuant; bitconv's canonical recipe)",
    "bfloat16": "bfloat16 (onebitllms quantize_to_1bit arithmetic)",
}

FAULTS = {
    "missing": "missing from OUT",
    "unexpected": "in OUT but not in REF",
    "not-ternary": "stored unquantized in OUT",
    "shape": "shape differs",
    "transposed": "transposed",
    "codes": "codes differ",
    "codes-negated": "codes negated",
    "rows-shifted": "rows shifted",
    "rows-permuted": "rows permuted",
    "qk-permutation": "q/k permutation",
    "scale": "scale differs",
    "scale-inverted": "scale inverted",
    "requantized": "codes re-quantized from ternary weights",
    "passthrough": "values differ",
    "sub-norm": "sub-norm weight differs",
    "tied": "lm_head tying differs",
    "content": "not a valid stored tensor",
}

SUB_NORMS = ("attn_sub_norm", "ffn_sub_norm", "inner_attn_ln", "ffn_layernorm")
CHUNK_BYTES = 16 << 20  # passthrough tensors are compared this many float32 bytes of rows at a time


@dataclass
class TensorCheck:
    """The verdict on one tensor. `fault` is a key of `FAULTS`; `message` names the tensor and the fault."""

    name: str
    kind: str  # "ternary" or "passthrough"
    ok: bool
    fault: str | None = None
    message: str = ""
    shape: list[int] | None = None
    compute: str | None = None  # the compute mode whose codes OUT holds
    code_mismatches: int | None = None
    mismatched_rows: int | None = None
    first_bad_row: int | None = None
    scale_ref: float | None = None  # REF's scale as OUT's format stores it (decoded to a magnitude)
    scale_out: float | None = None
    scale_rel_diff: float | None = None
    scale_tolerance: float | None = None
    max_abs_diff: float | None = None  # passthrough

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RoundTripReport:
    out_kind: str
    out_layout: str | None
    ref_kind: str
    compute: str | None  # detected compute mode of OUT's codes (None when REF is not a master or nothing matched)
    compute_note: str
    scale_storage: str
    tensors: list[TensorCheck] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tensors)

    @property
    def failures(self) -> list[TensorCheck]:
        return [t for t in self.tensors if not t.ok]

    @property
    def n_ternary(self) -> int:
        return sum(1 for t in self.tensors if t.kind == "ternary")

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(ok=self.ok, n_ternary=self.n_ternary, n_failed=len(self.failures))
        return d


def _fail(check: TensorCheck, fault: str, detail: str) -> TensorCheck:
    check.ok, check.fault = False, fault
    check.message = f"{check.name}: {FAULTS[fault]}: {detail}"
    return check


# ------------------------------------------------------------------------------------------------ scale


def scale_storage(layout: str | None, tensor: ModelTensor | None = None) -> tuple[str, bool]:
    """(dtype, inverted) of the stored scale of `layout`. Without a packed layout (a float GGUF holding
    codes * scale) the tensor's own float dtype; float32 otherwise."""
    cls = layout_class(layout) if layout else None  # each layout declares scale_dtype / scale_inverted
    if cls is not None:
        return cls.scale_dtype, cls.scale_inverted
    dt = tensor.dtype if tensor is not None and tensor.dtype in ULP else "F32"
    return dt, False


def stored_scale(scale: float, storage: tuple[str, bool]) -> float:
    """`scale` as the format stores it, decoded back to a float32 magnitude (what a correct OUT holds)."""
    dt, inverted = storage
    return float(decode_scale(encode_scale(scale, dt, inverted), inverted))


def _near(a: float, b: float, tol: float) -> bool:
    return b != 0 and abs(a / b - 1.0) <= tol


# Diagnoses run only after a mismatch, so they may be loose: the faulty path may have rounded through bf16.
_DIAG_TOL = 2.0**-7


def _scale_inverted(ref: Ternary, out: Ternary, tol: float) -> str | None:
    if _near(float(out.scale) * float(ref.scale), 1.0, max(2 * tol, _DIAG_TOL)):
        return (f"OUT holds {float(out.scale):.6g} = 1/{float(ref.scale):.6g}; the format stores the other "
                "convention (autobitlinear stores scale, bitlinear 1/scale)")
    return None


def _requantized(ref: Ternary, out: Ternary, tol: float) -> str | None:
    p = float(np.count_nonzero(ref.codes)) / max(ref.codes.size, 1)
    if 0 < p < 1 and _near(float(out.scale), float(ref.scale) * p, max(2 * tol, _DIAG_TOL)):
        return (f"scale {float(out.scale):.6g} = REF scale {float(ref.scale):.6g} x nonzero fraction {p:.4f}: "
                "the weights were ternarized again after dequantization (codes * scale)")
    return None


SCALE_DIAGNOSES: tuple[tuple[str, Callable[[Ternary, Ternary, float], str | None]], ...] = (
    ("scale-inverted", _scale_inverted),
    ("requantized", _requantized),
)


def _check_scale(check: TensorCheck, ref: Ternary, out: Ternary, storage: tuple[str, bool]) -> TensorCheck:
    tol = ULP[storage[0]]
    want = stored_scale(float(ref.scale), storage)
    got = float(out.scale)
    check.scale_ref, check.scale_out, check.scale_tolerance = want, got, tol
    check.scale_rel_diff = abs(got / want - 1.0) if want else float("inf")
    if check.scale_rel_diff <= tol:
        return check
    for fault, diagnose in SCALE_DIAGNOSES:
        detail = diagnose(Ternary(ref.codes, np.float32(want)), out, tol)
        if detail:
            return _fail(check, fault, detail)
    return _fail(check, "scale", f"{got:.6g} vs {want:.6g} from REF (relative {check.scale_rel_diff:.2e} > "
                                 f"{tol:.1e}, the {storage[0]} storage precision)")


# ------------------------------------------------------------------------------------------------ codes


def permute_qk(w: np.ndarray, n_head: int, inverse: bool = False) -> np.ndarray:
    """llama.cpp's RoPE row permutation (n_head, 2, d/2) -> (n_head, d/2, 2), or its inverse."""
    m = w.shape[0]
    split = (n_head, m // n_head // 2, 2) if inverse else (n_head, 2, m // n_head // 2)
    return np.ascontiguousarray(w.reshape(*split, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


_QK_POWERS = {"once": (1, False), "twice": (2, False), "inverse once": (1, True), "inverse twice": (2, True)}


@dataclass(frozen=True)
class CodeContext:
    name: str
    heads: int | None  # for q_proj / k_proj: the head count the RoPE permutation uses


def _qk(ref: np.ndarray, out: np.ndarray, ctx: CodeContext) -> tuple[str, str] | None:
    if not ctx.heads or ref.shape[0] % (2 * ctx.heads):
        return None
    for label, (times, inverse) in _QK_POWERS.items():
        w = ref
        for _ in range(times):
            w = permute_qk(w, ctx.heads, inverse)
        if np.array_equal(w, out):
            return "qk-permutation", (f"rows are REF's in llama.cpp's RoPE-interleaved order (permutation "
                                      f"applied {label}, {ctx.heads} heads); HF checkpoints keep rotate_half order")
    return None


def _negated(ref: np.ndarray, out: np.ndarray, ctx: CodeContext) -> tuple[str, str] | None:
    bad = np.flatnonzero((ref != out).any(axis=1))
    if bad.size and np.array_equal(out[bad], -ref[bad]):
        whole = "every row" if bad.size == ref.shape[0] else f"{bad.size} row(s), first row {bad[0]}"
        return "codes-negated", f"every code of {whole} has the opposite sign"
    return None


def _row_keys(codes: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(0)
    return codes.astype(np.int64) @ rng.integers(1, 2**62, size=codes.shape[1], dtype=np.int64)


def row_permutation(ref: np.ndarray, out: np.ndarray) -> np.ndarray | None:
    """perm with out[i] == ref[perm[i]] for every row, or None when OUT's rows are not a permutation of REF's."""
    rk, ok = _row_keys(ref), _row_keys(out)
    where: dict[int, list[int]] = {}
    for i, k in enumerate(rk.tolist()):
        where.setdefault(k, []).append(i)
    perm = np.empty(len(ok), dtype=np.int64)
    for i, k in enumerate(ok.tolist()):
        rows = where.get(k)
        if not rows:
            return None
        perm[i] = rows.pop()
    return perm if np.array_equal(ref[perm], out) else None


def _permuted(ref: np.ndarray, out: np.ndarray, ctx: CodeContext) -> tuple[str, str] | None:
    perm = row_permutation(ref, out)
    if perm is None:
        return None
    n = len(perm)
    shift = int(perm[0] % n)
    if np.array_equal(perm, (np.arange(n) + shift) % n):
        return "rows-shifted", f"OUT row i holds REF row (i + {shift}) mod {n}"
    moved = np.flatnonzero(perm != np.arange(n))
    return "rows-permuted", f"{moved.size} of {n} rows moved; row {moved[0]} holds REF row {perm[moved[0]]}"


# tried in order; the first that explains the mismatch names the fault
CODE_DIAGNOSES: tuple[Callable[[np.ndarray, np.ndarray, CodeContext], tuple[str, str] | None], ...] = (
    _qk, _negated, _permuted,
)


def _diagnose_codes(check: TensorCheck, ref: np.ndarray, out: np.ndarray, ctx: CodeContext) -> TensorCheck:
    diff = ref != out
    bad_rows = np.flatnonzero(diff.any(axis=1))
    check.code_mismatches = int(np.count_nonzero(diff))
    check.mismatched_rows, check.first_bad_row = int(bad_rows.size), int(bad_rows[0])
    for diagnose in CODE_DIAGNOSES:
        found = diagnose(ref, out, ctx)
        if found:
            return _fail(check, *found)
    return _fail(check, "codes", f"{check.code_mismatches} of {ref.size} codes differ in {bad_rows.size} of "
                                 f"{ref.shape[0]} rows (first mismatching row {bad_rows[0]})")


# ------------------------------------------------------------------------------------------------ ternary tensors


class _ComputeTracker:
    """Tries the last matching compute mode first; remembers which mode matched each tensor."""

    def __init__(self, declared: str | None, ref_is_master: bool) -> None:
        self.order = [declared] if declared in COMPUTE_MODES else []
        self.order += [m for m in COMPUTE_MODES if m not in self.order]
        self.active = ref_is_master
        self.matched: dict[str, int] = {}

    def candidates(self) -> list[str]:
        return self.order if self.active else self.order[:1]

    def hit(self, mode: str) -> None:
        self.matched[mode] = self.matched.get(mode, 0) + 1
        self.order.remove(mode)
        self.order.insert(0, mode)


def _heads(name: str, config: dict) -> int | None:
    table = {".q_proj.weight": "num_attention_heads", ".k_proj.weight": "num_key_value_heads"}
    for suffix, key in table.items():
        if name.endswith(suffix):
            return int(config.get(key) or config.get("num_attention_heads") or 0) or None
    return None


Decoded = tuple[Ternary, dict[str, Ternary]]  # OUT's codes, REF's codes per compute mode (computed ahead)


def decode_pair(r: ModelTensor, o: ModelTensor, mode: str) -> Decoded | None:
    """OUT's codes and REF's codes in `mode`: the costly half of `check_ternary`, run ahead on a worker thread."""
    if not (r.is_ternary and o.is_ternary) or tuple(o.shape) != tuple(r.shape):
        return None
    try:
        out = o.ternary("float32")
    except BitconvError:  # a content fault of OUT: check_ternary decodes it again and reports it
        return None
    return out, {mode: r.ternary(mode)}


def codes_equal(a: np.ndarray, b: np.ndarray, block: int = 1 << 24) -> bool:
    """`np.array_equal` a slice at a time: no full-size boolean temporary (235 MB for a 70B FFN matrix)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    if a.dtype == b.dtype and a.dtype.kind in "iub" and a.flags.c_contiguous \
            and b.flags.c_contiguous:  # integer arrays: equal exactly when their bytes are (memcmp, no temporary)
        return native.same_bytes(a, b, block)
    fa, fb = a.reshape(-1), b.reshape(-1)
    return all(np.array_equal(fa[i:i + block], fb[i:i + block]) for i in range(0, fa.size, block))


def check_ternary(r: ModelTensor, o: ModelTensor, layout: str | None, tracker: _ComputeTracker,
                  config: dict, decoded: Decoded | None = None) -> TensorCheck:
    """One ternary tensor: the first compute mode whose codes and scale both match wins; codes matching with a
    wrong scale give the scale fault; codes matching no mode are diagnosed against the first mode tried.
    `decoded` (from `decode_pair`) saves decoding what was decoded ahead; other modes are computed here."""
    check = TensorCheck(r.name, "ternary", True, shape=list(r.shape))
    if tuple(o.shape) != tuple(r.shape):
        return _fail(check, "shape", f"OUT {list(o.shape)} vs REF {list(r.shape)}")
    if decoded is not None:
        out, refs = decoded
    else:
        try:
            out = o.ternary("float32")
        except BitconvError as e:  # a non-ternary code or a bad scale in OUT: what verify exists to find
            return _fail(check, "content", e.args[0] if e.args else str(e))
        refs = {}
    storage = scale_storage(layout, o)
    first, scale_fault = None, None
    for mode in tracker.candidates():
        ref = refs.pop(mode, None)
        ref = ref if ref is not None else r.ternary(mode)
        first = first or ref
        if not codes_equal(ref.codes, out.codes):
            continue
        c = _check_scale(TensorCheck(r.name, "ternary", True, shape=list(r.shape), code_mismatches=0,
                                     mismatched_rows=0, compute=mode if tracker.active else None), ref, out, storage)
        if c.ok:
            tracker.hit(mode)
            return c
        scale_fault = scale_fault or c
    if scale_fault is not None:
        return scale_fault
    assert first is not None
    return _diagnose_codes(check, np.asarray(first.codes), np.asarray(out.codes),
                           CodeContext(r.name, _heads(r.name, config)))


def _reconcile(checks: list[TensorCheck], ref_ck: Checkpoint, out_ck: Checkpoint, tracker: _ComputeTracker) -> None:
    """Tensors matched before the mode switched may match the majority mode too: relabel those that do."""
    modes = [c.compute for c in checks if c.ok and c.compute]
    if len(set(modes)) < 2:
        return
    major = max(set(modes), key=modes.count)
    for i, c in enumerate(checks):
        if c.ok and c.compute and c.compute != major:
            solo = _ComputeTracker(major, True)
            solo.order = [major]
            again = check_ternary(ref_ck.tensors[c.name], out_ck.tensors[c.name], out_ck.layout, solo,
                                  ref_ck.config)
            if again.ok:
                tracker.matched[c.compute] -= 1
                tracker.matched[major] += 1
                checks[i] = again
    tracker.matched = {k: v for k, v in tracker.matched.items() if v}


# ------------------------------------------------------------------------------------------------ passthrough


def _chunks(ck: Checkpoint, name: str, by_rows: bool):
    t = ck.tensors[name]
    if not by_rows:
        yield ck.load_passthrough(name)
        return
    for a, b in row_ranges(t.shape[0], 4 * int(np.prod(t.shape[1:])), CHUNK_BYTES):
        yield t.read_rows(a, b)  # from the file, or the source's row loader (`_rows_readable`)


def _rows_readable(ck: Checkpoint, name: str) -> bool:
    """Read a block of rows at a time: a plain stored tensor, or one whose source decodes rows alone (GGUF Q8_0)."""
    return plain_info(ck, name) is not None or ck.tensors[name].row_loader is not None


def _out_dtype(o: ModelTensor) -> torch.dtype:
    return dtypes.DTYPES[o.dtype].torch if o.dtype in dtypes.DTYPES else torch.float32


def _same_bytes(ref_ck: Checkpoint, ref_name: str, out_ck: Checkpoint, out_name: str) -> bool | None:
    """Bitwise equality of two stored tensors of one dtype, in row chunks; None when not both plain 2-D."""
    a, b = plain_info(ref_ck, ref_name), plain_info(out_ck, out_name)
    if a is None or b is None or a.dtype != b.dtype or len(a.shape) != 2 or tuple(a.shape) != tuple(b.shape):
        return None
    for r0, r1 in row_ranges(a.shape[0], 4 * int(np.prod(a.shape[1:])), CHUNK_BYTES):
        if not codes_equal(read_raw_rows(a, range(r0, r1)).view(np.uint8),
                           read_raw_rows(b, range(r0, r1)).view(np.uint8)):  # bytes: NaN == NaN, -0 != +0
            return False
    return True


def compare_values(ref_ck: Checkpoint, ref_name: str, out_ck: Checkpoint, out_name: str) -> tuple[bool, float]:
    """(equal, max |Δ|): OUT's values against REF's cast to OUT's dtype, in row chunks when both sources allow
    (bitwise when both store one dtype). Tensors decoded by a loader (GGUF Q8_0) get half a quantization step
    (max|REF| / 254) of slack."""
    if _same_bytes(ref_ck, ref_name, out_ck, out_name):
        return True, 0.0
    o = out_ck.tensors[out_name]
    odt = _out_dtype(o)
    quantized = o.loader is not None
    by_rows = len(o.shape) == 2 and _rows_readable(ref_ck, ref_name) and _rows_readable(out_ck, out_name)
    exact, worst, amax = True, 0.0, 0.0
    for a, b in zip(_chunks(ref_ck, ref_name, by_rows), _chunks(out_ck, out_name, by_rows)):
        want = a.to(odt)
        if torch.equal(want, b.to(odt)):
            continue
        exact = False
        worst = max(worst, float((want.float() - b.float()).abs().max()))
        amax = max(amax, float(a.float().abs().max()))
    if quantized and not exact:
        return worst <= amax / 254 * 1.01, worst
    return exact, worst


def _role(name: str) -> str:
    return "sub-norm" if any(f".{s}." in name for s in SUB_NORMS) else "passthrough"


def check_passthrough(ref_ck: Checkpoint, out_ck: Checkpoint, name: str, ref_name: str | None = None) -> TensorCheck:
    ref_name = ref_name or name
    r, o = ref_ck.tensors[ref_name], out_ck.tensors[name]
    check = TensorCheck(name, "passthrough", True, shape=list(r.shape))
    if tuple(o.shape) != tuple(r.shape):
        return _fail(check, "shape", f"OUT {list(o.shape)} vs REF {list(r.shape)}")
    equal, worst = compare_values(ref_ck, ref_name, out_ck, name)
    check.max_abs_diff = worst
    if equal:
        return check
    detail = f"max |Δ| {worst:.4g} against REF{'' if ref_name == name else f' {ref_name}'} ({o.dtype} in OUT)"
    if len(o.shape) == 1 and bool((out_ck.load_passthrough(name).float() == 1).all()):
        detail += "; OUT holds all ones (the trained weight was dropped)"
    return _fail(check, _role(name), detail)


def _tied(ref_ck: Checkpoint, out_ck: Checkpoint) -> list[TensorCheck]:
    """lm_head present on one side only: the other side must tie it to REF's embed_tokens."""
    head, embed = "lm_head.weight", "model.embed_tokens.weight"
    in_ref, in_out = head in ref_ck.tensors, head in out_ck.tensors
    if in_ref == in_out or embed not in ref_ck.tensors:
        return []
    if in_out:  # OUT stores an untied copy: it must equal REF's embedding
        c = check_passthrough(ref_ck, out_ck, head, embed)
        return [c if c.ok else _fail(c, "tied", "REF ties lm_head to embed_tokens but OUT stores a different "
                                                 "lm_head")]
    check = TensorCheck(head, "passthrough", True, shape=list(ref_ck.tensors[head].shape))
    equal, worst = compare_values(ref_ck, head, ref_ck, embed)
    if equal:
        check.message = f"{head}: tied in OUT; REF's lm_head equals its embed_tokens"
        return [check]
    check.max_abs_diff = worst
    return [_fail(check, "tied", "missing from OUT, which ties the output to embed_tokens, but REF has its own "
                                 f"lm_head (max |Δ| {worst:.4g} from embed_tokens)")]


# ------------------------------------------------------------------------------------------------ whole checkpoint


def _pairs(ref_ck: Checkpoint, out_ck: Checkpoint) -> tuple[list[str], list[TensorCheck]]:
    """Names to compare, plus the checks decided by presence alone (missing, unexpected, not ternary)."""
    names, decided = [], []
    for name, r in ref_ck.tensors.items():
        o = out_ck.tensors.get(name)
        if o is None:
            if name != "lm_head.weight":
                decided.append(_fail(TensorCheck(name, "ternary" if r.is_ternary else "passthrough", True,
                                                 shape=list(r.shape)), "missing", "REF has it, OUT does not"))
        elif r.is_ternary and not o.is_ternary:
            decided.append(_fail(TensorCheck(name, "ternary", True, shape=list(r.shape)), "not-ternary",
                                 f"{o.dtype} {list(o.shape)}; REF's projection is ternarized"))
        elif o.is_ternary and not r.is_ternary:
            decided.append(_fail(TensorCheck(name, "passthrough", True, shape=list(r.shape)), "unexpected",
                                 "OUT stores it ternary; REF keeps it in full precision"))
        else:
            names.append(name)
    for name, o in out_ck.tensors.items():
        if name not in ref_ck.tensors and name != "lm_head.weight":
            decided.append(_fail(TensorCheck(name, "ternary" if o.is_ternary else "passthrough", True,
                                             shape=list(o.shape)), "unexpected", f"{o.dtype} {list(o.shape)}"))
    return names, decided


def roundtrip(out_ck: Checkpoint, ref_ck: Checkpoint,
              progress: Callable[[int, int, str], None] | None = None) -> RoundTripReport:
    """Compare every tensor of OUT with REF (see the module docstring). Never raises for a mismatch."""
    t0 = time.perf_counter()
    keep_freed_memory()  # streaming same-sized tensors: reuse freed pages instead of faulting new ones
    tracker = _ComputeTracker(out_ck.compute, ref_ck.kind in LATENT_KINDS)
    names, checks = _pairs(ref_ck, out_ck)

    def ahead(name: str) -> Decoded | None:  # on a worker thread: both tensors' codes, in the mode tried first
        r, o = ref_ck.tensors[name], out_ck.tensors[name]
        return decode_pair(r, o, tracker.candidates()[0]) if r.is_ternary else None

    def cost(name: str) -> int:
        r = ref_ck.tensors[name]
        return 0 if not r.is_ternary else ternary_bytes(r.numel, r.dtype, r.stored_bytes) + 2 * r.numel

    def size(name: str) -> int:
        return 2 * ref_ck.tensors[name].numel if ref_ck.tensors[name].is_ternary else 0

    with closing(ordered(ahead, names, cost=cost, size=size)) as decoded:
        for i, name in enumerate(names):  # not zip(): its reused result tuple would keep `pre` alive meanwhile
            pre = next(decoded)
            if progress:
                progress(i, len(names), name)
            r, o = ref_ck.tensors[name], out_ck.tensors[name]
            if r.is_ternary:
                checks.append(check_ternary(r, o, out_ck.layout, tracker, ref_ck.config, pre))
            else:
                checks.append(check_passthrough(ref_ck, out_ck, name))
            del pre
            release_freed_memory(r.numel * 2)
    _reconcile(checks, ref_ck, out_ck, tracker)
    checks += _tied(ref_ck, out_ck)
    storage = _storage_note(scale_storage(out_ck.layout, next(iter(out_ck.ternary_tensors()), None)))
    rep = RoundTripReport(out_ck.kind, out_ck.layout, ref_ck.kind, None, "", storage, checks)
    _summarize_compute(rep, tracker, out_ck.compute)
    rep.seconds = time.perf_counter() - t0
    return rep


def _storage_note(storage: tuple[str, bool]) -> str:
    dt, inverted = storage
    return f"{dt} {'1/scale' if inverted else 'scale'} (tolerance {ULP[dt]:.1e} relative)"


def _summarize_compute(rep: RoundTripReport, tracker: _ComputeTracker, declared: str | None) -> None:
    if not tracker.active:
        rep.compute_note = f"REF is a {rep.ref_kind} checkpoint: its stored codes were compared (no compute mode)"
        return
    m = tracker.matched
    if not m:
        rep.compute_note = "no ternary tensor matched either compute mode"
        return
    if len(m) > 1:
        rep.compute_note = "mixed: " + ", ".join(f"{n} tensors {k}" for k, n in m.items())
        rep.warnings.append(f"codes match different compute modes per tensor ({rep.compute_note}); one converter "
                            "run uses one mode")
        return
    (rep.compute,) = m
    rep.compute_note = f"codes made with compute={COMPUTE_NOTES[rep.compute]}"
    if declared in COMPUTE_MODES and declared != rep.compute:
        rep.warnings.append(f"OUT declares compute {declared!r} but its codes match {rep.compute!r}")
