"""Tiling parameters of bitnet.cpp's TL1 / TL2 lookup-table kernels (the `kernel_config.ini` the codegen writes).

bitnet.cpp compiles one LUT kernel per weight shape (M = out_features = ne1, K = in_features = ne0). Each kernel is
tiled by three numbers, and the converter packs the weight bytes in exactly that tile order:

| name | ini key | meaning                                                                 |
|------|---------|-------------------------------------------------------------------------|
| `BM` | `bm`    | rows per tile (the kernel produces BM outputs per call)                 |
| `BK` | `bk`    | columns per tile (the kernel sums BK inputs per call, in int16)         |
| `bm` | `bmm`   | rows per SIMD step: 32 or 64 for TL1 (then 256/bm columns), 32 for TL2  |

Worked example (the golden tiny model, TL1): `KernelEntry(M=512, K=256, BM=256, BK=128, bm=64)` is written as

    [Kernels_1]
    m = 512
    k = 256
    bm = 256
    bk = 128
    bmm = 64

(configparser lower-cases the codegen's `M`, `K`, `BM`, `BK` keys; every section ends with an empty line).

Rules a tiling must keep (`check_entry`), from the codegen asserts plus what the generated kernels index:

* TL1: bm in {32, 64}; M % BM == 0; BM % bm == 0; K % BK == 0; BK % (256 / bm) == 0; K % 16 == 0 (the LUT builder
  reads 16 activations per step); BK <= 256.
* TL2: bm == 32; M % BM == 0; BM % 32 == 0; BK % 24 == 0 (8 triplets per sign word); BK <= K;
  (K % BK) % 32 == 0 (the TL1-style remainder works on 32-column tiles); K >= 256 (the TL2 `ggml_nbytes` formula);
  BK <= 256.
* BK <= 256 for both: a tile is summed in int16 lanes, and |sum| <= BK/2 * 254 (TL1) or BK/3 * 381 (TL2) must stay
  below 32768 for the worst-case int8 activations.

`derive(kind, shapes)` picks a tiling for every (M, K) of a model:

1. A shape that is in one of bitnet.cpp's shipped presets (`setup_env.py` `gen_code()` codegen arguments for
   bitnet_b1_58-large, bitnet_b1_58-3B and Llama3-8B-1.58-100B-tokens) gets the preset's BM / BK / bm. When the
   model's shape set *is* a preset's shape set, the entries come in the preset's order, so `to_ini()` is the file the
   codegen writes for that preset.
2. Any other shape: bm = 32; BM = the largest multiple of 32 that divides M and is <= 256; BK = the first of
   (128, 64, 32, 16) dividing K for TL1, or the first of (96, 192, 240, 216, ..., 24) that keeps the TL2 rules and
   whose K % BK remainder fits bitnet.cpp's TL2 LUT work buffer (11 bytes per activation:
   `bitconv.layouts.runtimes.Tl2LutBuffer`, 15 * (K % BK) <= K - K % BK + 36). Where no BK fits (K = 256: every
   legal BK leaves 64 columns) the first legal one is kept and `pack` refuses the file before writing, naming the
   tensor, the tiling and the limit (the bytes would be right, the runtime aborts).
3. A shape no tiling can hold raises `LayoutError` naming the tensor, its shape and the rule.

The 2B-4T shapes (2560x2560, 640x2560, 6912x2560, 2560x6912) have no preset (setup_env reuses the 3B arguments,
which cannot hold them: BitNet#239, #324), so they get rule 2, and the runtime must be built with `codegen_params()`.

# ref: microsoft/BitNet utils/codegen_tl1.py l.371-440, utils/codegen_tl2.py l.683-747, setup_env.py gen_code();
#      spec gguf-bitnet-cpp.md §3.4-3.7
"""

from __future__ import annotations

import configparser
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from bitconv.core import safeio
from bitconv.core.errors import LayoutError
from bitconv.layouts.runtimes import best_tl2_bk  # layouts/__init__ imports this module

KINDS = ("tl1", "tl2")
INI_NAME = "kernel_config.ini"  # the file name a tiled GGUF's config has next to it
MAX_BK = 256  # int16 accumulation of one tile (see module docstring)
TL2_MIN_K = 256  # below this the TL2 ggml_nbytes formula goes negative


@dataclass(frozen=True)
class KernelEntry:
    """One kernel: weight shape (M, K) and its tiling (BM, BK, bm)."""

    M: int
    K: int
    BM: int
    BK: int
    bm: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.M, self.K)


# setup_env.py gen_code(): codegen --model, shapes (ModelShapeDict order), and the --BM/--BK/--bm it passes.
# ref: microsoft/BitNet setup_env.py l.162-206 (HEAD 16da220), codegen_tl1.py l.371-382
PRESET_SHAPES: dict[str, tuple[tuple[int, int], ...]] = {
    "bitnet_b1_58-large": ((1536, 4096), (1536, 1536), (4096, 1536)),
    "bitnet_b1_58-3B": ((3200, 8640), (3200, 3200), (8640, 3200)),
    "Llama3-8B-1.58-100B-tokens": ((14336, 4096), (4096, 14336), (1024, 4096), (4096, 4096)),
}
PRESET_ARGS: dict[str, dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]] = {
    "tl1": {
        "bitnet_b1_58-large": ((256, 128, 256), (128, 64, 128), (32, 64, 32)),
        "bitnet_b1_58-3B": ((160, 320, 320), (64, 128, 64), (32, 64, 32)),
        "Llama3-8B-1.58-100B-tokens": ((256, 128, 256, 128), (128, 64, 128, 64), (32, 64, 32, 64)),
    },
    "tl2": {
        "bitnet_b1_58-large": ((256, 128, 256), (96, 192, 96), (32, 32, 32)),
        "bitnet_b1_58-3B": ((160, 320, 320), (96, 96, 96), (32, 32, 32)),
        "Llama3-8B-1.58-100B-tokens": ((256, 128, 256, 128), (96, 96, 96, 96), (32, 32, 32, 32)),
    },
}
CODEGEN_SCRIPTS = {"tl1": "utils/codegen_tl1.py", "tl2": "utils/codegen_tl2.py"}

_TL1_BK_CHOICES = (128, 64, 32, 16)
_TL2_BK_CHOICES = (96, 192, *range(240, 0, -24))


def preset_entries(kind: str, model: str) -> tuple[KernelEntry, ...]:
    """The entries codegen writes for a shipped preset (`model` as spelled in codegen's ModelShapeDict)."""
    bms, bks, sms = PRESET_ARGS[_kind(kind)][model]
    return tuple(KernelEntry(m, k, bm_, bk, sm) for (m, k), bm_, bk, sm in zip(PRESET_SHAPES[model], bms, bks, sms))


def _kind(kind: str) -> str:
    k = kind.strip().lower().replace("gguf-", "")
    if k not in KINDS:
        raise LayoutError(f"unknown kernel kind {kind!r}; known: {', '.join(KINDS)}")
    return k


def check_entry(kind: str, e: KernelEntry, tensor: str | None = None) -> None:
    """Raise LayoutError (naming `tensor`, the shape and the broken rule) unless `e` is a tiling the kernels run."""
    kind = _kind(kind)
    M, K, BM, BK, bm = e.M, e.K, e.BM, e.BK, e.bm
    rules: list[tuple[bool, str]]
    if kind == "tl1":
        by = 256 // bm if bm in (32, 64) else 0
        rules = [
            (bm in (32, 64), f"TL1 needs bm in {{32, 64}} (got bm={bm})"),
            (BM > 0 and M % BM == 0, f"TL1 needs M % BM == 0 (M={M}, BM={BM})"),
            (BM % bm == 0 if bm else False, f"TL1 needs BM % bm == 0 (BM={BM}, bm={bm})"),
            (BK > 0 and K % BK == 0, f"TL1 needs K % BK == 0 (K={K}, BK={BK})"),
            (by > 0 and BK % by == 0, f"TL1 needs BK % (256 / bm) == 0 (BK={BK}, bm={bm})"),
            (K % 16 == 0, f"TL1 needs K % 16 == 0 (K={K})"),
            (BK <= MAX_BK, f"TL1 needs BK <= {MAX_BK} (int16 tile sums; BK={BK})"),
        ]
    else:
        rules = [
            (bm == 32, f"TL2 needs bm == 32 (got bm={bm})"),
            (BM > 0 and M % BM == 0, f"TL2 needs M % BM == 0 (M={M}, BM={BM})"),
            (BM % 32 == 0, f"TL2 needs BM % 32 == 0 (BM={BM})"),
            (BK > 0 and BK % 24 == 0, f"TL2 needs BK % 24 == 0 (BK={BK})"),
            (K >= TL2_MIN_K, f"TL2 needs K >= {TL2_MIN_K} (K={K}; the TL2 size formula goes negative below)"),
            (0 < BK <= K, f"TL2 needs BK <= K (K={K}, BK={BK})"),
            (BK > 0 and (K % BK) % 32 == 0, f"TL2 needs (K % BK) % 32 == 0 (K={K}, BK={BK})"),
            (BK <= MAX_BK, f"TL2 needs BK <= {MAX_BK} (int16 tile sums; BK={BK})"),
        ]
    for ok, why in rules:
        if not ok:
            raise LayoutError(f"kernel tiling (M={M}, K={K}, BM={BM}, BK={BK}, bm={bm}) is not valid: {why}",
                              tensor=tensor, shape=(M, K), hint="pick other --BM/--BK/--bm for this shape")


@dataclass(frozen=True)
class CodegenParams:
    """The arguments `utils/codegen_tl{1,2}.py` must run with so the runtime has a kernel for every shape.

    `preset` is True when codegen's ModelShapeDict already holds `model` with exactly `shapes` in this order.
    Otherwise add `"<model>": [[M, K], ...]` (= `shapes`) to ModelShapeDict in that script before running it.
    """

    script: str
    model: str
    shapes: tuple[tuple[int, int], ...]
    BM: tuple[int, ...]
    BK: tuple[int, ...]
    bm: tuple[int, ...]
    preset: bool

    def argv(self) -> list[str]:
        j = lambda xs: ",".join(str(x) for x in xs)  # noqa: E731
        return ["--model", self.model, "--BM", j(self.BM), "--BK", j(self.BK), "--bm", j(self.bm)]

    def instructions(self, ini: str = INI_NAME) -> list[str]:
        """Every step to build bitnet.cpp with kernels for these shapes, in order, runnable as printed (in the
        bitnet.cpp checkout). setup_env.py is not used: it reruns the codegen with its own presets."""
        kind = "tl1" if self.script.endswith("tl1.py") else "tl2"
        steps = []
        if not self.preset:
            shapes = ", ".join(f"[{m}, {k}]" for m, k in self.shapes)
            steps.append(f"add \"{self.model}\": [{shapes}], to ModelShapeDict in {self.script} (codegen looks "
                         f"the model up there: without it, KeyError: '{self.model}')")
        steps.append(f"python {self.script} {' '.join(self.argv())}  (writes include/bitnet-lut-kernels.h and "
                     f"include/kernel_config.ini, which must equal {ini})")
        flag = "-DBITNET_ARM_TL1=ON" if kind == "tl1" else "-DBITNET_X86_TL2=ON"
        steps.append(f"cmake -B build {flag} && cmake --build build --config Release")
        return steps


@dataclass(frozen=True)
class KernelConfig:
    """A table of kernels, one per (M, K), in codegen order. `kind` ("tl1"/"tl2") enables validation."""

    entries: tuple[KernelEntry, ...]
    kind: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "entries", tuple(self.entries))
        if self.kind is not None:
            object.__setattr__(self, "kind", _kind(self.kind))
        seen: set[tuple[int, int]] = set()
        for e in self.entries:
            if e.shape in seen:
                raise LayoutError(f"kernel config lists (M={e.M}, K={e.K}) twice")
            seen.add(e.shape)
            if self.kind is not None:
                check_entry(self.kind, e)

    @property
    def shapes(self) -> tuple[tuple[int, int], ...]:
        return tuple(e.shape for e in self.entries)

    def get(self, M: int, K: int) -> KernelEntry | None:
        for e in self.entries:
            if e.M == M and e.K == K:
                return e
        return None

    def lookup(self, shape: tuple[int, ...], tensor: str | None = None) -> KernelEntry:
        """The entry for an HF weight shape (out_features M, in_features K); LayoutError when there is none."""
        M, K = shape
        e = self.get(M, K)
        if e is None:
            known = ", ".join(f"{m}x{k}" for m, k in self.shapes) or "none"
            raise LayoutError(f"the kernel config has no entry for (M={M}, K={K}) (it has {known})", tensor=tensor,
                              shape=tuple(shape), hint="derive the config from this model's shapes and rebuild "
                              "bitnet.cpp with the matching codegen parameters")
        return e

    def with_kind(self, kind: str) -> KernelConfig:
        return KernelConfig(self.entries, kind)

    # --- the kernel_config.ini the codegen scripts write -------------------------------------------------------
    def to_ini(self) -> str:
        """configparser's output for the codegen's sections, byte for byte."""
        return "".join(f"[Kernels_{i}]\nm = {e.M}\nk = {e.K}\nbm = {e.BM}\nbk = {e.BK}\nbmm = {e.bm}\n\n"
                       for i, e in enumerate(self.entries))

    def write_ini(self, path: str | Path) -> None:
        Path(path).write_text(self.to_ini(), encoding="utf-8", newline="\n")

    @classmethod
    def from_ini(cls, path: str | Path, kind: str | None = None, *, user_named: bool = False) -> KernelConfig:
        """Read a kernel_config.ini (a regular file of at most 1 MiB, UTF-8; never written back)."""

        p = Path(path)
        text = safeio.read_text(p, safeio.CAP_SMALL, what="kernel config", user_named=user_named)
        return cls.from_ini_text(text, kind, path=p)

    @classmethod
    def from_ini_text(cls, text: str, kind: str | None = None, *, path: object | None = None) -> KernelConfig:
        cp = configparser.ConfigParser()
        try:
            cp.read_string(text)
        except configparser.Error as e:
            first = " ".join(str(e).split())  # configparser's messages span several lines
            raise LayoutError(f"not a kernel_config.ini: {first}", path=path) from None
        entries = []
        for sec in cp.sections():
            s = cp[sec]
            try:
                entries.append(KernelEntry(int(s["m"]), int(s["k"]), int(s["bm"]), int(s["bk"]), int(s["bmm"])))
            except (KeyError, ValueError) as e:
                raise LayoutError(f"section [{sec}] needs integer keys m, k, bm, bk, bmm ({e})", path=path) from None
        return cls(tuple(entries), kind)

    # --- the build side -----------------------------------------------------------------------------------------
    def codegen_params(self, model: str = "custom") -> CodegenParams:
        """The `--model/--BM/--BK/--bm` arguments for codegen_tl1.py / codegen_tl2.py (`kind` must be set)."""
        if self.kind is None:
            raise LayoutError("kernel config has no kind (tl1/tl2); use with_kind() first")
        preset = next((name for name, shapes in PRESET_SHAPES.items() if shapes == self.shapes), None)
        return CodegenParams(CODEGEN_SCRIPTS[self.kind], preset or model, self.shapes,
                             tuple(e.BM for e in self.entries), tuple(e.BK for e in self.entries),
                             tuple(e.bm for e in self.entries), preset is not None)


def codegen_params(config: KernelConfig, model: str = "custom") -> CodegenParams:
    """Module-level spelling of `KernelConfig.codegen_params`."""
    return config.codegen_params(model)


def derive_entry(kind: str, M: int, K: int, tensor: str | None = None) -> KernelEntry:
    """The tiling `derive` picks for one shape (preset first, then the fallback rule); LayoutError if none fits."""
    kind = _kind(kind)
    for model, shapes in PRESET_SHAPES.items():
        if (M, K) in shapes:
            return preset_entries(kind, model)[shapes.index((M, K))]
    shape = (M, K)
    if M <= 0 or K <= 0:
        raise LayoutError(f"{kind.upper()} needs a positive weight shape", tensor=tensor, shape=shape)
    if M % 32:
        raise LayoutError(f"{kind.upper()} needs out_features M % 32 == 0 (got M={M}); no kernel tiling holds it",
                          tensor=tensor, shape=shape, hint="leave this tensor unconverted or use gguf-i2-s / gguf-tq*")
    BM = max(b for b in range(32, min(M, 256) + 1, 32) if M % b == 0)
    if kind == "tl1":
        if K % 16:
            raise LayoutError(f"TL1 needs in_features K % 16 == 0 (got K={K}); no kernel tiling holds it",
                              tensor=tensor, shape=shape, hint="use gguf-i2-s or gguf-tq* for this model")
        BK = next(b for b in _TL1_BK_CHOICES if K % b == 0)
        entry = KernelEntry(M, K, BM, BK, 32)
    else:
        if K < TL2_MIN_K:
            raise LayoutError(f"TL2 needs in_features K >= {TL2_MIN_K} (got K={K}); the TL2 size formula goes "
                              "negative below", tensor=tensor, shape=shape, hint="use gguf-tl1 or gguf-i2-s")
        # prefer a BK whose K % BK remainder bitnet.cpp's TL2 LUT work buffer holds (K = 256 has none: every legal
        # tiling leaves 64 columns, and where_it_runs then names the tensor, the tiling and the buffer's limit)

        BK = best_tl2_bk(K, _TL2_BK_CHOICES) or next((b for b in _TL2_BK_CHOICES if b <= K and (K % b) % 32 == 0),
                                                     None)
        if BK is None:
            raise LayoutError(f"TL2 needs a BK (multiple of 24, <= 256) with (K % BK) % 32 == 0; none exists for "
                              f"K={K}", tensor=tensor, shape=shape, hint="use gguf-tl1 or gguf-i2-s")
        entry = KernelEntry(M, K, BM, BK, 32)
    check_entry(kind, entry, tensor)
    return entry


def derive(kind: str, shapes: Iterable[tuple[int, int]] | Mapping[str, tuple[int, int]]) -> KernelConfig:
    """A valid kernel config for every distinct (M, K) in `shapes` (HF [out, in] shapes, or name -> shape).

    Entries keep first-seen order, except that a model whose shape set equals a shipped preset's gets the preset's
    order (so `to_ini()` equals what `setup_env.py` would generate). Raises LayoutError for a shape no tiling holds.
    """
    kind = _kind(kind)
    named: list[tuple[str | None, tuple[int, int]]]
    if isinstance(shapes, Mapping):
        named = [(n, tuple(s)) for n, s in shapes.items()]
    else:
        named = [(None, tuple(s)) for s in shapes]
    first: dict[tuple[int, int], str | None] = {}
    for name, s in named:
        if len(s) != 2:
            raise LayoutError("TL kernels tile 2-D [out_features, in_features] weights", tensor=name, shape=s)
        first.setdefault((int(s[0]), int(s[1])), name)
    for model, pshapes in PRESET_SHAPES.items():
        if set(pshapes) == set(first):
            return KernelConfig(preset_entries(kind, model), kind)
    return KernelConfig(tuple(derive_entry(kind, M, K, name) for (M, K), name in first.items()), kind)
