"""Where a GGUF file runs correctly: the runtimes bitconv knows, as data, and one pure function over them.

A GGUF "runs correctly" on a runtime when that runtime (1) knows the file's `general.architecture`, (2) computes the
GGML type of its seven projections, (3) builds the FFN with the model's hidden activation, and (4) none of its known
constraints fails for the file's shapes and tiling. Loading is not enough: upstream's `bitnet` graph loads a relu2
(2B4T-style) model and silently runs SiLU (about 15 % of the logit range off).

| field        | meaning                                                                                         |
|--------------|-------------------------------------------------------------------------------------------------|
| `key`        | stable id (`llama.cpp@0c1e570`, `bitnet.cpp@37c247c`, ...)                                      |
| `graphs`     | arch string -> the activation its graph computes (`silu`, `relu2`); archs absent are unknown     |
| `types`      | float GGML types it computes; each ternary type's layout declares where it runs (`computes`)    |
| `wrong`      | float type -> why it fails there; a ternary type's layout declares its own (`why_not`)          |
| `checked`    | how the facts were established (run on tiny models, or read from source only)                  |
| `constraints`| shape/tiling rules (`MinInFeatures`, `Tl2LutBuffer`) and run notes (`RunNote`: `-ub 1`, ARM only) |

Worked example: a 2B4T-style model (hidden_act relu2) as TQ2_0.
* arch `bitnet` -> llama.cpp@0c1e570: graph `bitnet` computes silu != relu2 -> wrong; bitnet.cpp@37c247c: same
  (silu); bitnet.cpp 2026-01: `bitnet` is silu too; ik_llama.cpp: no TQ type. Runs nowhere -> `pack` refuses.
* arch `bitnet-b1.58` -> llama.cpp: unknown arch; bitnet.cpp 2026-01 (fork 1f86f058): relu2 graph, TQ2_0 computed
  -> runs (`python run_inference.py -m FILE ...`).

The table is static facts; which runtimes compute a ternary GGML type is declared by that type's layout
(`Layout.runtime_support`, keyed by the runtime keys below), so a new layout file brings its own rows. Each fact
carries the source line it was read from (file:line at the named commit), or the measurement it came from.
# ref: spec gguf-upstream.md §1.1, §2.6-2.8; gguf-bitnet-cpp.md §1, §3.4-3.7, §4.1; gguf-ik-llama.md §1, §7-8;
#      spec README "Conventions" 7 (measured 2026-12-01 with real builds)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from bitconv.layouts.registry import layout_classes

ACTIVATIONS = ("silu", "relu2")
# runtime keys (the layouts' `runtime_support` names them)
LLAMA_CPP = "llama.cpp@0c1e570"
BITNET_2024 = "bitnet.cpp@37c247c"
BITNET_2026_01 = "bitnet.cpp@1876a3e"
BITNET_2026_07 = "bitnet.cpp@425fbbc"
IK_LLAMA = "ik_llama.cpp@8337e4cd"
FLOAT_TYPES = ("F32", "F16", "BF16")
HIDDEN_ACTIVATION_KEY = "{arch}.hidden_activation"  # key name of llama.cpp PR #26751 (closed, unmerged)
PROMPT = "The capital of France is"
BITNET_CPP_GIT = "https://github.com/microsoft/BitNet"  # bitnet.cpp's repository (spec gguf-bitnet-cpp.md §1)


# ------------------------------------------------------------------------------------------------ constraints


@dataclass(frozen=True)
class MinInFeatures:
    """Every projection of `types` needs in_features >= `minimum`, or the runtime aborts."""

    types: frozenset[str]
    minimum: int
    why: str
    source: str


@dataclass(frozen=True)
class Tl2LutBuffer:
    """bitnet.cpp's TL2 matmul: the per-token LUT must fit a work buffer of `bytes_per_activation` * K + 16 bytes.

    The LUT takes K3/3*32 bytes for the K3 = K - K % BK three-weight columns, 4 bytes of scale, and 16 bytes per
    column of the K2 = K % BK remainder (two-weight LUT), so `15 * K2 <= K3 + 36` must hold. K = 256 leaves a
    64-column remainder on every legal tiling (256 is not a multiple of 3): 3076 > 2832 bytes, "double free or
    corruption" at the first decode.
    """

    types: frozenset[str]
    bytes_per_activation: int
    source: str

    def need(self, K: int, BK: int) -> int:
        k3 = K // BK * BK
        return k3 // 3 * 32 + 4 + 16 * (K - k3)

    def have(self, K: int) -> int:
        return self.bytes_per_activation * K + 16

    def fits(self, K: int, BK: int) -> bool:
        return self.need(K, BK) <= self.have(K)


@dataclass(frozen=True)
class RunNote:
    """How a file of `types` must be run (or built) to compute correctly; not a refusal."""

    types: frozenset[str]
    note: str
    flags: str = ""  # extra command-line flags the run command needs
    source: str = ""


Constraint = MinInFeatures | Tl2LutBuffer | RunNote


# ------------------------------------------------------------------------------------------------ runtimes


@dataclass(frozen=True)
class Runtime:
    key: str
    name: str
    family: str  # "llama.cpp", "bitnet.cpp", "ik_llama.cpp"
    versions: str
    graphs: Mapping[str, str]
    types: frozenset[str]
    wrong: Mapping[str, str]
    checked: str
    command: str  # with {file}, {prompt} and {flags}
    constraints: tuple[Constraint, ...] = ()
    sources: Mapping[str, str] = field(default_factory=dict)  # fact -> file:line
    flags_command: str = ""  # used instead of `command` when a RunNote adds flags (run_inference.py passes none)

    def computes(self, gguf_type: str) -> bool:
        """Whether this runtime computes `gguf_type` correctly (a float type from the table, a ternary type from its
        layout's `runtime_support`)."""
        return gguf_type in self.types or type_support(gguf_type).get(self.key) == ""

    def why_not(self, gguf_type: str, default: str | None = None) -> str:
        """Why a file of `gguf_type` fails here (the table's or the layout's reason, else `default`)."""
        return (self.wrong.get(gguf_type) or type_support(gguf_type).get(self.key) or default
                or f"does not compute {gguf_type}")

    def all_types(self) -> frozenset[str]:
        """Every GGML type it computes correctly: the float types, and each ternary type whose layout says so."""
        return frozenset(self.types) | frozenset(r.name for c in layout_classes() for r in c.ggml_rows()
                                                 if self.computes(r.name))

    def run_command(self, file: str, gguf_type: str) -> str:
        flags = "".join(f" {c.flags}" for c in self.constraints
                        if isinstance(c, RunNote) and gguf_type in c.types and c.flags)
        cmd = self.flags_command if (flags and self.flags_command) else self.command
        return cmd.format(file=file, prompt=PROMPT, flags=flags)


_TL_BATCH = RunNote(
    frozenset({"TL2", "TL2_42"}),
    "TL2: run one token per decode (`-ub 1`): the generated TL2 kernels give NaN for batches of 8 or more tokens",
    "-ub 1", "measured with bitnet.cpp 37c247c and the 2026-01 tree (spec README, Conventions 7)")
_TL2_LUT = Tl2LutBuffer(
    frozenset({"TL2", "TL2_42"}), 11,
    "microsoft/BitNet src/ggml-bitnet-lut.cpp:148 (37c247c, 1876a3e) wsize = ne10*ne11*11 + 2*ne11*2*4; LUT layout "
    "Eddie-Wang1120/llama.cpp ggml/src/ggml.c:12740-12748 (406a5036): three_qlut K3/3*32, lut_scales, two_qlut "
    "K2/2*32 per token")
_TL1_ARM = RunNote(frozenset({"TL1"}), "TL1: ARM builds only (cmake -DBITNET_ARM_TL1=ON)", "",
                   "microsoft/BitNet setup_env.py:31 (37c247c)")
_TL2_X86 = RunNote(frozenset({"TL2", "TL2_42"}), "TL2: x86 builds only (cmake -DBITNET_X86_TL2=ON)", "",
                   "microsoft/BitNet setup_env.py:32 (37c247c)")
_I2S_X86_2026 = RunNote(
    frozenset({"I2_S"}), "I2_S: x86 builds (ARM builds since BitNet 112f853 expect 64-weight blocks and misread "
    "the canonical layout)", "",
    "microsoft/BitNet src/ggml-bitnet-mad.cpp:11-15 (16da220); spec gguf-bitnet-cpp.md §2.3")
_BITNET_CPP_RUN = "python run_inference.py -m {file} -p \"{prompt}\" -n 32"
_BITNET_CPP_CLI = "build/bin/llama-cli -m {file} -p \"{prompt}\" -n 32{flags}"


def type_support(gguf_type: str) -> Mapping[str, str]:
    """runtime key -> "" (computes it) or why a file of `gguf_type` fails there, as its layout declares."""
    for cls in layout_classes():
        if gguf_type in cls.runtime_support:
            return cls.runtime_support[gguf_type]
    return {}


RUNTIMES: tuple[Runtime, ...] = (
    Runtime(
        LLAMA_CPP, "llama.cpp 0c1e570", "llama.cpp",
        "ggml-org/llama.cpp 0c1e57098bba (2026-10-01; vendored in llama-cpp-python 0.3.36); arch `bitnet` since "
        "PR #7931, TQ1_0/TQ2_0 since PR #8151",
        {"bitnet": "silu", "llama": "silu"},
        frozenset(FLOAT_TYPES),
        {},
        "run: TQ1_0/TQ2_0/F16/BF16/F32 of 1bitLLM-style models, and a relu2 model as arch bitnet (runs SiLU)",
        "llama-cli -m {file} -p \"{prompt}\" -n 32{flags}",
        (),
        {"bitnet graph: build_ffn(..., LLM_FFN_SILU, LLM_FFN_PAR)": "src/models/bitnet.cpp:132",
         "archs": "src/llama-arch.cpp: only {LLM_ARCH_BITNET, \"bitnet\"} (no bitnet-b1.58 / bitnet-25)",
         "hidden_activation ignored": "PR #25885 and PR #26751 closed unmerged",
         "types": "ggml/include/ggml.h TQ1_0 = 34, TQ2_0 = 35, 36-38 removed, MXFP4 = 39, Q2_0 = 42"},
    ),
    Runtime(
        BITNET_2024, "bitnet.cpp 2024 (37c247c)", "bitnet.cpp",
        "microsoft/BitNet 37c247c (2024-11-07) with its llama.cpp fork Eddie-Wang1120/llama.cpp 406a5036",
        {"bitnet": "silu", "llama": "silu"},
        frozenset(FLOAT_TYPES),
        {},
        "run: I2_S (1bitLLM shapes), TL2; the rest read from source",
        _BITNET_CPP_RUN,
        (_TL2_LUT, _TL_BATCH, _TL1_ARM, _TL2_X86),
        {"archs": "src/llama.cpp:259 {LLM_ARCH_BITNET, \"bitnet\"} only (406a5036)",
         "bitnet graph: build_bitnet() LLM_FFN_SILU": "src/llama.cpp:15078, :15192 (406a5036)",
         "types": "ggml/src/ggml.c:736 TL1, :745 TL2, :1088 BF16, :1148 TQ1_0, :1160 TQ2_0, :1172 I2_S (406a5036)"},
        _BITNET_CPP_CLI,
    ),
    Runtime(
        BITNET_2026_01, "bitnet.cpp 2026-01 (1876a3e)", "bitnet.cpp",
        "microsoft/BitNet 1876a3e (2026-01-27) with fork 1f86f058 (corroborated by the vendored copy in "
        "ygqdan/BitNet-linux)",
        {"bitnet": "silu", "bitnet-25": "relu2", "bitnet-b1.58": "relu2", "llama": "silu"},
        frozenset(FLOAT_TYPES),
        {},
        "run: I2_S (1bitLLM and 2B4T shapes), TL2 at 2B4T shapes; TQ read from source",
        _BITNET_CPP_RUN,
        (_TL2_LUT, _TL_BATCH, _TL1_ARM, _TL2_X86, _I2S_X86_2026),
        {"archs": "3rdparty/llama.cpp/src/llama.cpp:261-263 bitnet, bitnet-25, bitnet-b1.58",
         "bitnet-25/bitnet-b1.58 graph: build_bitnet_158() LLM_FFN_RELU_SQR": "src/llama.cpp:15389, :15501",
         "bitnet graph: build_bitnet() LLM_FFN_SILU": "src/llama.cpp:15239",
         "types": "ggml/src/ggml.c:736 TL1, :745 TL2, :1148 TQ1_0, :1160 TQ2_0, :1172 I2_S"},
        _BITNET_CPP_CLI,
    ),
    Runtime(
        BITNET_2026_07, "bitnet.cpp 2026-07 (425fbbc)", "bitnet.cpp",
        "microsoft/BitNet 425fbbc (2026-07-15) with isHuangXin/llama.cpp 390c3077 (not fetchable: facts second-hand)",
        {"bitnet": "silu", "bitnet-25": "silu", "bitnet-b1.58": "silu", "llama": "silu"},
        frozenset(FLOAT_TYPES),
        {},
        "not run: facts from issues microsoft/BitNet#588, #602 and isHuangXin/bitnet_llama.cpp ggml.h",
        _BITNET_CPP_RUN,
        (_TL2_LUT, _TL_BATCH, _TL1_ARM, _TL2_X86, _I2S_X86_2026),
        {"one bitnet graph for all archs: build_ffn(..., LLM_FFN_SILU)": "src/models/bitnet.cpp:133 (microsoft/BitNet"
         "#588, #602; fixes #603-#605 unmerged)",
         "types": "ggml/include/ggml.h TL2 = 42, MXFP4 = 39 (isHuangXin/bitnet_llama.cpp 0fc6abed)"},
        _BITNET_CPP_CLI,
    ),
    Runtime(
        IK_LLAMA, "ik_llama.cpp 8337e4cd", "ik_llama.cpp",
        "ikawrakow/ik_llama.cpp 8337e4cd (2026-08-15)",
        {"bitnet": "silu", "bitnet-25": "relu2", "bitnet-b1.58": "relu2", "llama": "silu"},
        frozenset(FLOAT_TYPES),
        {},
        "run: IQ1_BN/IQ2_BN (1bitLLM and relu2 models), F32, I2_S (wrong); F16/BF16 read from source",
        "llama-cli -m {file} -p \"{prompt}\" -n 32{flags}",
        (MinInFeatures(frozenset({"IQ1_BN"}), 512,
                       "quantize_row_q8_K64_ref asserts k >= 8*QK_IQ1BN: the first matmul aborts",
                       "ggml/src/iqk/iqk_quantize.cpp:586-588"),
         # IQ2_BN has the same limit, but `-rtr` repacks it to IQ2_BN_R4 at load (Q8_K16 activations, no limit)
         RunNote(frozenset({"IQ2_BN"}), "IQ2_BN: run with -rtr (repacks the rows to IQ2_BN_R4 at load: faster, and "
                 "without it a projection with in_features < 512 aborts the first matmul)", "-rtr",
                 "ggml/src/iqk/iqk_quantize.cpp:586-588, repack_iq2_bn l.5931-5989; spec gguf-ik-llama.md §6.4")),
        {"archs": "src/llama-arch.cpp:60-62 bitnet, bitnet-25, bitnet-b1.58",
         "bitnet graph SiLU": "src/graphs/build_bitnet.cpp:119", "bitnet-25/b1.58 graph relu2": "build_bitnet.cpp:234",
         "types": "ggml/include/ggml.h:426 I2_S 36, :435 IQ1_BN 134, :436 IQ2_BN 135, :427 MXFP4 39; no 34/35/38/42"},
    ),
)
BY_KEY = {r.key: r for r in RUNTIMES}


# ------------------------------------------------------------------------------------------------ verdicts


@dataclass(frozen=True)
class Verdict:
    runtime: Runtime
    runs: bool
    why: str  # the reason it does not run correctly ("" when it does)
    command: str | None  # how to run it there (None when it does not run correctly)
    notes: tuple[str, ...] = ()  # run/build notes that apply (-ub 1, ARM only)
    shape_limited: bool = False  # it would run but for a CPU-kernel size limit (MinInFeatures): pack warns

    def to_dict(self) -> dict:
        return {"runtime": self.runtime.key, "name": self.runtime.name, "runs": self.runs, "why": self.why,
                "command": self.command, "notes": list(self.notes), "checked": self.runtime.checked,
                "shape_limited": self.shape_limited}


def default_activation(arch: str) -> str:
    """The activation an arch's graph uses where nothing else is said (what a file without the key means)."""
    return "relu2" if arch in ("bitnet-b1.58", "bitnet-25") else "silu"


def _check_runtime(rt: Runtime, arch: str, gguf_type: str, activation: str,
                   shapes: Mapping[str, tuple[int, int]], tiling: Mapping[tuple[int, int], tuple[int, int, int]],
                   file: str) -> Verdict:
    if arch not in rt.graphs:
        return Verdict(rt, False, f"unknown architecture {arch!r}", None)
    if not rt.computes(gguf_type):
        return Verdict(rt, False, rt.why_not(gguf_type), None)
    if rt.graphs[arch] != activation:
        return Verdict(rt, False, f"its {arch!r} graph computes {rt.graphs[arch]}, the model needs {activation}",
                       None)
    for c in rt.constraints:
        if gguf_type not in c.types:
            continue
        if isinstance(c, MinInFeatures):
            bad = next(((n, s) for n, s in shapes.items() if s[1] < c.minimum), None)
            if bad:
                return Verdict(rt, False, f"tensor {bad[0]!r} has in_features {bad[1][1]} < {c.minimum}: {c.why} "
                                          f"({c.source})", None, shape_limited=True)
        if isinstance(c, Tl2LutBuffer):
            for n, (M, K) in shapes.items():
                BM, BK, bm = tiling.get((M, K), (0, 0, 0))
                if BK and not c.fits(K, BK):
                    return Verdict(rt, False, tl2_overflow_message(n, M, K, BM, BK, bm, c), None)
    notes = tuple(c.note for c in rt.constraints if isinstance(c, RunNote) and gguf_type in c.types)
    return Verdict(rt, True, "", rt.run_command(file, gguf_type), notes)


def tl2_overflow_message(tensor: str, M: int, K: int, BM: int, BK: int, bm: int,
                         c: Tl2LutBuffer = _TL2_LUT) -> str:
    return (f"tensor {tensor!r} (M={M}, K={K}) with TL2 tiling BM={BM} BK={BK} bm={bm} leaves a {K % BK}-column "
            f"remainder: its LUT needs {c.need(K, BK)} bytes per token but bitnet.cpp's TL2 work buffer holds "
            f"{c.bytes_per_activation} bytes per activation ({c.have(K)}); the first decode aborts")


def where_it_runs(arch: str, gguf_type: str, activation: str,
                  shapes: Mapping[str, tuple[int, int]] | None = None,
                  tiling: Mapping[tuple[int, int], tuple[int, int, int]] | None = None,
                  file: str = "FILE.gguf") -> list[Verdict]:
    """One verdict per known runtime for a GGUF of `arch` whose projections are `gguf_type` (GGML type name).

    Args:
        activation: the model's hidden activation ("silu" or "relu2").
        shapes: projection name -> HF shape (out_features M, in_features K), for the shape constraints.
        tiling: TL1/TL2 (M, K) -> (BM, BK, bm) of the kernel config the file is packed with.
        file: the file name put into each run command.
    """
    return [_check_runtime(rt, arch, gguf_type, activation, shapes or {}, tiling or {}, file) for rt in RUNTIMES]


def runs_somewhere(verdicts: list[Verdict]) -> bool:
    return any(v.runs for v in verdicts)


def summary(verdicts: list[Verdict]) -> tuple[str, str]:
    """("runs on: A, B", "does not run correctly on: C (why); D (why)") lines."""
    ok = [v.runtime.name for v in verdicts if v.runs]
    bad = [f"{v.runtime.name} ({v.why})" for v in verdicts if not v.runs]
    return ("runs on: " + (", ".join(ok) or "no known runtime"),
            "does not run correctly on: " + ("; ".join(bad) or "-"))


def best_tl2_bk(K: int, choices: tuple[int, ...]) -> int | None:
    """The first BK of `choices` whose remainder bitnet.cpp's TL2 LUT buffer holds (None when none does)."""
    return next((b for b in choices if b <= K and (K % b) % 32 == 0 and _TL2_LUT.fits(K, b)), None)


def tl2_lut() -> Tl2LutBuffer:
    return _TL2_LUT


# ------------------------------------------------------------------------------------------------ markdown

# model families bitconv converts: (label, activation, archs it may be written as)
MODELS = (("2B4T-style (relu2)", "relu2", ("bitnet-b1.58", "bitnet-25", "bitnet")),
          ("1bitLLM-style (silu)", "silu", ("bitnet", "bitnet-b1.58", "bitnet-25")),
          ("Llama-style (silu)", "silu", ("llama",)))


def table_types() -> tuple[tuple[str, ...], dict[str, str]]:
    """The rows of the tables (every GGUF layout's types: the fork's, upstream's, the floats, then the other
    dialects') and their labels (a type written under several ids is labelled with its id)."""
    rows = [(c, r) for c in layout_classes() for r in c.ggml_rows()]
    by = {d: [r.name for _, r in rows if r.dialect == d] for d in ("bitnet.cpp", "upstream")}
    rest = [r.name for _, r in rows if r.dialect not in by]
    labels = {r.name: f"{c.ggml_type} (id {r.id})" for c, r in rows if len(c.ggml_rows()) > 1}
    return (*by["bitnet.cpp"], *by["upstream"], *FLOAT_TYPES, *rest), labels


def render_markdown() -> str:
    """The "Where each file runs" tables of docs/runtimes.md, generated from RUNTIMES (tests compare the file)."""
    short = {r.key: r.name for r in RUNTIMES}
    TYPES, TYPE_LABELS = table_types()  # noqa: N806
    cols = [(label, act, arch) for label, act, archs in MODELS for arch in archs]
    lines = ["| type | " + " | ".join(f"{label}, arch `{arch}`" for label, _, arch in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for t in TYPES:
        cells = []
        for _, act, arch in cols:
            ok = [short[v.runtime.key] for v in where_it_runs(arch, t, act) if v.runs]
            cells.append(", ".join(ok) if ok else "**nowhere** (refused)")
        lines.append(f"| {TYPE_LABELS.get(t, t)} | " + " | ".join(cells) + " |")
    lines += ["", "| runtime | versions | archs (activation its graph computes) | types it computes | constraints and "
              "run notes | established by |", "|---|---|---|---|---|---|"]
    for r in RUNTIMES:
        graphs = ", ".join(f"`{a}` ({act})" for a, act in r.graphs.items())
        types = ", ".join(TYPE_LABELS.get(t, t) for t in TYPES if r.computes(t))
        cons = []
        for c in r.constraints:
            if isinstance(c, RunNote):
                cons.append(c.note)
            elif isinstance(c, MinInFeatures):
                cons.append(f"{'/'.join(sorted(c.types))}: in_features >= {c.minimum} ({c.source})")
            else:
                cons.append(f"TL2: the K % BK remainder must fit the LUT buffer of {c.bytes_per_activation} bytes "
                            "per activation (15 * K2 <= K3 + 36); K = 256 never does")
        lines.append(f"| {r.name} | {r.versions} | {graphs} | {types} | {'; '.join(cons) or '-'} | {r.checked} |")
    return "\n".join(lines) + "\n"


def render_readme_table() -> str:
    """The short README table: per type, where it runs for each model family at its default arch."""
    defaults = (("2B4T-style (relu2)", "relu2", "bitnet-b1.58"), ("1bitLLM-style (silu)", "silu", "bitnet"),
                ("Llama-style (silu)", "silu", "llama"))
    lines = ["| `--type` | " + " | ".join(f"{label}, `--arch {arch}`" for label, _, arch in defaults) + " |",
             "|---|" + "---|" * len(defaults)]
    for t in ("I2_S", "TL1", "TL2", "TQ1_0", "TQ2_0", "F16"):
        cells = []
        for _, act, arch in defaults:
            ok = [v.runtime.name for v in where_it_runs(arch, t, act) if v.runs]
            cells.append(", ".join(ok) if ok else "refused")
        lines.append(f"| `{t.lower()}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
