"""Reference forward pass of BitNet b1.58 models in plain torch: what transformers computes, without transformers.

Three architectures (`ARCHS`), one decoder loop:

| architectures[0]    | family       | FFN act | attention sub-norm (before o_proj) | FFN sub-norm (before down) |
|---------------------|--------------|---------|------------------------------------|----------------------------|
| `BitNetForCausalLM` | bitnet-2b4t  | relu2   | `self_attn.attn_sub_norm`          | `mlp.ffn_sub_norm`         |
| `LlamaForCausalLM`  | llama-bitnet | silu    | -                                  | -                          |
| `BitnetForCausalLM` | 1bitllm      | silu    | `self_attn.inner_attn_ln`          | `mlp.ffn_layernorm`        |

Every op is the op transformers 5.23 runs, in the same order and dtype (bf16 model, eager attention), so the
logits are bit-identical where the arithmetic is (# ref: spec hf-packed.md §4-5): RMSNorm in float32 cast back then
times the bf16 weight; RoPE with rotate_half and bf16 cos/sin; GQA by repeating each kv head; causal softmax in
float32; `logits = h @ lm_head^T` (lm_head = embed_tokens when tied).

The seven projections are applied as the weights' runtime applies them (`LINEARS`):

| mode            | weights               | y =                                                                    |
|-----------------|-----------------------|------------------------------------------------------------------------|
| `plain`         | bf16 master           | x @ W^T (no quantization: the dense bf16 model)                        |
| `online`        | bf16 master           | ActQuant(x) @ bf16(codes / s)^T, s = 1/mean|W| (AutoBitLinear online)  |
|                 |                       | (`compute="bfloat16"`: onebitllms' codes and scale, bf16(codes*scale)) |
| `autobitlinear` | codes + bf16 scale    | (ActQuant(x) @ codes^T) * bf16(scale) (AutoBitLinear offline)          |
| `bitlinear`     | codes + bf16 1/scale  | int8 absmax x, (x_q @ codes^T) / (ws * x_scale) (BitLinear, §4.1)      |
| `decoded`       | codes + float32 scale | bf16(float32(ActQuant(x) @ codes^T) * scale) (any other layout)        |

ActQuant is the 8-bit per-token absmax fake quantization, computed in float32. BitLinear's result depends on
torch.compile (spec §4.1): `bitlinear="compiled"` (default, what transformers runs) keeps `x * scale` and the
divisor in float32; `"eager"` (TORCHDYNAMO_DISABLE=1) rounds them to bf16.

1bitLLM's remote code writes the quantizers as straight-through sums `x + (q(x) - x).detach()`, which add a bf16
rounding the `online` mode does not reproduce; transformers cannot run that architecture, so there is nothing to
be bit-exact with.

Weights are read layer by layer from the lazy source (`TensorCache`): one layer's tensors resident at a time,
embedding rows read only for the tokens given, lm_head applied in row chunks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from bitconv.core import dtypes, native
from bitconv.core.errors import SourceError, UsageError
from bitconv.core.tensors import Ternary
from bitconv.formats.safetensors import TensorInfo, pread_exact
from bitconv.layouts import decode_scale, encode_scale, hf_layouts, layout_class, layout_classes
from bitconv.quant import compute_mode, ternarize
from bitconv.sources import Checkpoint

DTYPE = torch.bfloat16
Q_EPS = 1e-5  # clamp of both quantizers' absmax / absmean
LM_HEAD_CHUNK = 32768  # rows of lm_head resident at a time (one chunk, bit-exact, for every vocab up to this)

Linear = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Arch:
    family: str
    act: str  # default hidden_act
    attn_sub_norm: str | None  # module inside a layer, applied to the attention output before o_proj
    ffn_sub_norm: str | None  # applied to act(gate) * up before down_proj
    rope_theta: float  # the config class default


ARCHS = {
    "BitNetForCausalLM": Arch("bitnet-2b4t", "relu2", "self_attn.attn_sub_norm", "mlp.ffn_sub_norm", 500000.0),
    "LlamaForCausalLM": Arch("llama-bitnet", "silu", None, None, 10000.0),
    "BitnetForCausalLM": Arch("1bitllm", "silu", "self_attn.inner_attn_ln", "mlp.ffn_layernorm", 10000.0),
}

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu2": lambda x: torch.square(torch.relu(x)),  # transformers ReLUSquaredActivation
    "silu": F.silu,
    "swish": F.silu,
}


@dataclass(frozen=True)
class RefConfig:
    """The architecture facts the forward needs, read from an HF config.json."""

    architecture: str
    arch: Arch
    hidden: int
    n_layers: int
    n_heads: int
    n_kv: int
    head_dim: int
    vocab: int
    eps: float
    theta: float
    act: str
    tied: bool
    linear_norm_eps: float | None  # quantization_config.use_rms_norm: an RMSNorm inside every converted linear

    @classmethod
    def from_hf(cls, config: dict) -> RefConfig:
        archs = config.get("architectures") or ["?"]
        arch = ARCHS.get(archs[0])
        if arch is None:
            raise UsageError(f"the reference forward knows {', '.join(ARCHS)}, not {archs[0]!r}")
        _check_rope(config)
        act = config.get("hidden_act") or arch.act
        if act not in ACTIVATIONS:
            raise UsageError(f"hidden_act {act!r} is not one of {', '.join(ACTIVATIONS)}")
        try:
            hidden, n_heads = int(config["hidden_size"]), int(config["num_attention_heads"])
            qc = config.get("quantization_config") if isinstance(config.get("quantization_config"), dict) else {}
            return cls(
                architecture=archs[0], arch=arch, hidden=hidden, n_layers=int(config["num_hidden_layers"]),
                n_heads=n_heads, n_kv=int(config.get("num_key_value_heads") or n_heads),
                head_dim=int(config.get("head_dim") or hidden // n_heads), vocab=int(config["vocab_size"]),
                eps=float(config.get("rms_norm_eps", 1e-6)), theta=_rope_theta(config, arch), act=act,
                tied=bool(config.get("tie_word_embeddings", False)),
                linear_norm_eps=float(qc.get("rms_norm_eps", 1e-6)) if qc.get("use_rms_norm") else None)
        except (KeyError, TypeError, ValueError) as e:
            raise UsageError(f"config.json lacks a usable {e} for the reference forward") from None


def _check_rope(config: dict) -> None:
    for key in ("rope_scaling", "rope_parameters"):
        rp = config.get(key)
        kind = (rp.get("rope_type") or rp.get("type") or "default") if isinstance(rp, dict) else "default"
        if kind != "default":
            raise UsageError(f"{key}.rope_type {kind!r} is not supported by the reference forward (default only)")


def _rope_theta(config: dict, arch: Arch) -> float:
    rp = config.get("rope_parameters")
    if isinstance(rp, dict) and "rope_theta" in rp:
        return float(rp["rope_theta"])
    return float(config.get("rope_theta") or arch.rope_theta)


# ------------------------------------------------------------------------------------------------ quantizers


def act_quant(x: torch.Tensor) -> torch.Tensor:
    """transformers ActQuant: 8-bit per-token absmax fake quantization, in float32, cast back."""
    a = x.float()
    s = 127 / a.abs().max(dim=-1, keepdim=True).values.clamp_(min=Q_EPS)
    return ((a * s).round().clamp(-128, 127) / s).to(x.dtype)


def weight_quant(w: torch.Tensor) -> torch.Tensor:
    """transformers WeightQuant (online): bf16(clamp(round(w * s), -1, 1) / s), s = 1 / mean|w| in float32."""
    f = w.float()
    s = 1.0 / f.abs().mean().clamp_(min=Q_EPS)
    return ((f * s).round().clamp(-1, 1) / s).to(w.dtype)


def weight_quant_bf16(w: torch.Tensor) -> torch.Tensor:
    """onebitllms' ternarization (all in bf16; `quant.ternarize(w, "bfloat16")`), applied as bf16(codes * scale)."""
    t = ternarize(w, "bfloat16")
    return (torch.from_numpy(np.asarray(t.codes, dtype=np.int8)).float() * float(t.scale)).to(w.dtype)


WEIGHT_QUANT = {"float32": weight_quant, "bfloat16": weight_quant_bf16}


def _bitlinear_compiled(x: torch.Tensor, q: torch.Tensor, ws: torch.Tensor) -> torch.Tensor:
    a = x.float()
    scale = (127 / a.abs().max(dim=-1, keepdim=True).values.clamp(min=Q_EPS)).to(x.dtype)
    xq = (a * scale.float()).round().clamp(-128, 127).to(torch.int8)
    y = F.linear(xq.to(x.dtype), q)
    return (y.float() / (ws.float() * scale.float())).to(x.dtype)


def _bitlinear_eager(x: torch.Tensor, q: torch.Tensor, ws: torch.Tensor) -> torch.Tensor:
    scale = 127 / x.abs().max(dim=-1, keepdim=True).values.clamp(min=Q_EPS)
    xq = (x * scale).round().clamp(-128, 127).to(torch.int8)
    y = F.linear(xq.to(x.dtype), q)
    return y / (ws * scale)


BITLINEAR = {"compiled": _bitlinear_compiled, "eager": _bitlinear_eager}


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


# ------------------------------------------------------------------------------------------------ ggml (llama.cpp CPU)
# The arithmetic of llama.cpp's CPU backend, for `verify --runtime`: activations stay float32 between ops, and each
# matmul first converts its input to the weight type's `vec_dot_type` (ggml-cpu.c `type_traits_cpu`, # ref: spec
# gguf-upstream.md §3.2): each ternary layout declares its `vec_dot_type` (Q8_K: int8, one float32 scale per 256
# inputs), Q8_0 -> Q8_0 (int8, one fp16 scale per 32), F16 -> fp16, BF16 -> bf16, F32 -> itself. Weights are what
# the file stores: codes and the stored scale (`Weights.scale_fn`), float types the rounded values.

GGML_BLOCK = {"Q8_K": 256, "Q8_0": 32}


def q8k(x: torch.Tensor) -> torch.Tensor:
    """`x` (float32, last dim a multiple of 256) through ggml's Q8_K and back: per 256-block, `max` is the first
    element of largest |x|, iscale = -127/max, q = min(127, round_half_even(iscale * x)), value = q * (1/iscale)
    (ggml-quants.c quantize_row_q8_K_ref, which the x86 build calls too)."""
    b = x.reshape(*x.shape[:-1], -1, GGML_BLOCK["Q8_K"])
    idx = b.abs().argmax(-1, keepdim=True)  # first maximal |x| (the C loop keeps the first on ties)
    mx = torch.gather(b, -1, idx)
    zero = mx == 0
    # true divisions (a Python scalar / tensor is reciprocal-then-multiply in torch: another rounding)
    iscale = torch.where(zero, 0.0, torch.div(torch.full_like(mx, -127.0), torch.where(zero, 1.0, mx)))
    q = torch.round(iscale * b).clamp(max=127)
    d = torch.where(zero, 0.0, torch.div(torch.ones_like(mx), torch.where(zero, 1.0, iscale)))
    return (q * d).reshape(x.shape)


def q8_0(x: torch.Tensor) -> torch.Tensor:
    """`x` (float32, last dim a multiple of 32) through ggml's Q8_0 and back: per 32-block d = fp16(amax / 127),
    q = round(x / d) (the x86 quantize_row_q8_0: id = 127 / amax, round half even), value = q * d."""
    b = x.reshape(*x.shape[:-1], -1, GGML_BLOCK["Q8_0"])
    amax = b.abs().amax(-1, keepdim=True)
    zero = amax == 0
    q = torch.round(b * torch.where(zero, 0.0, torch.div(torch.full_like(amax, 127.0), torch.where(zero, 1.0, amax))))
    d = torch.div(amax, 127.0).half().float()
    return (q * d).reshape(x.shape)


def _as(dtype: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: x.to(dtype).float()


# a matmul's input, converted as the weight type's vec_dot_type converts it
GGML_ACT: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "F32": lambda x: x, "F16": _as(torch.float16), "BF16": _as(torch.bfloat16), "Q8_0": q8_0,
    # a packed layout's entry comes from the `vec_dot_type` it declares
    **{c.ggml_type: {"Q8_K": q8k}[c.vec_dot_type] for c in layout_classes() if c.ggml_type and c.vec_dot_type},
}
# a float tensor's values as the file stores them (REF's passthrough tensors emulated in OUT's storage)
GGML_STORE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "F32": lambda x: x.float(), "F16": _as(torch.float16), "BF16": _as(torch.bfloat16), "Q8_0": q8_0,
}


def ggml_supported(types: dict[str, str]) -> list[str]:
    """The GGML types in `types` (tensor -> type) the emulation does not know (empty when it can run them all)."""
    return sorted({t for t in types.values() if t not in GGML_ACT})


# ------------------------------------------------------------------------------------------------ weights


class TensorCache:
    """One checkpoint's tensors for the current layer, kept until `clear()`: passthrough tensors as bf16, and
    ternary ones per compute mode (shared by every model variant reading this checkpoint)."""

    def __init__(self, ck: Checkpoint) -> None:
        self.ck = ck
        self._raw: dict[str, torch.Tensor] = {}
        self._t: dict[tuple[str, torch.dtype], torch.Tensor] = {}
        self._tern: dict[tuple[str, str], Ternary] = {}

    def get(self, name: str, dtype: torch.dtype = DTYPE) -> torch.Tensor:
        """A passthrough tensor cast to `dtype` (bf16, as transformers holds it; float32 for a runtime emulation)."""
        key = (name, dtype)
        if key not in self._t:
            if name not in self._raw:
                if name not in self.ck.tensors:
                    raise SourceError("tensor needed by the forward pass is missing", path=self.ck.path,
                                      tensor=name)
                self._raw[name] = self.ck.load_passthrough(name)
            self._t[key] = self._raw[name].to(dtype)
        return self._t[key]

    def ternary(self, name: str, compute: str) -> Ternary:
        """Decoded (ternary checkpoint) or ternarized (master, as transformers sees it: cast to bf16 first)
        codes and magnitude scale."""
        key = (name, compute)
        if key not in self._tern:
            master = self.ck.kind == "bf16-master"  # one read of the weight serves every variant of this layer
            self._tern[key] = ternarize(self.get(name), compute, name=name) if master else \
                self.ck.tensors[name].ternary(compute)
        return self._tern[key]

    def clear(self) -> None:
        self._raw.clear()
        self._t.clear()
        self._tern.clear()


def plain_info(ck: Checkpoint, name: str) -> TensorInfo | None:
    """The stored tensor behind a passthrough name when its rows can be read directly (float, no loader)."""
    t = ck.tensors.get(name)
    info = t.plain if t is not None else None
    return info if info is not None and info.dtype == t.dtype and dtypes.DTYPES[info.dtype].is_float else None


def read_rows(ck: Checkpoint, name: str, rows: Sequence[int] | range,
              dtype: torch.dtype | None = DTYPE) -> torch.Tensor:
    """Rows of a 2-D passthrough tensor (cast to `dtype`; None keeps the stored dtype), reading only those rows
    when the source allows it."""
    info = plain_info(ck, name)
    if info is None or len(info.shape) != 2:
        t = ck.load_passthrough(name)[torch.as_tensor(list(rows), dtype=torch.long)]
        return t if dtype is None else t.to(dtype)
    t = dtypes.from_numpy_storage(read_raw_rows(info, rows), info.dtype)
    return t if dtype is None else t.to(dtype)


def read_raw_rows(info: TensorInfo, rows: Sequence[int] | range) -> np.ndarray:
    """Rows of a stored 2-D tensor as its numpy storage dtype (BF16 as uint16 bits)."""
    row_bytes = info.nbytes // info.shape[0]
    out = np.empty((len(rows), info.shape[1]), dtype=dtypes.DTYPES[info.dtype].np_storage)
    if isinstance(rows, range) and rows.step == 1:
        pread_exact(info.path, info.offset + rows.start * row_bytes, memoryview(out.reshape(-1).view(np.uint8)),
                    info.name)
    else:
        for i, r in enumerate(rows):
            pread_exact(info.path, info.offset + int(r) * row_bytes, memoryview(out[i].view(np.uint8)), info.name)
    return out


def _codes(w: Weights, name: str) -> tuple[torch.Tensor, float]:
    """Codes (bf16) and magnitude scale: decoded from a ternary checkpoint, ternarized (in `w.compute`) from a
    master; `w.scale_fn` then gives the scale as a format would store it."""
    t = w.cache.ternary(name, w.compute)
    scale = w.scale_fn(float(t.scale)) if w.scale_fn else float(t.scale)
    return torch.from_numpy(np.asarray(t.codes, dtype=np.int8)).to(DTYPE), scale


def _scale_tensor(x: float, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor([x], dtype=torch.float32).to(dtype)


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bits (NaN equal to itself, -0 not equal to +0): what makes two projections give one
    result. `native.same_bytes` of the storage (a memcmp where the C kernels are built: 3 ms for a 6912 x 2560 bf16
    weight, against 14 ms for `torch.equal`); `torch.equal` of the bytes off the CPU."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    x, y = a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8)
    if x.device.type == "cpu" and y.device.type == "cpu":
        return native.same_bytes(x.numpy(), y.numpy())
    return torch.equal(x, y)


class Lin:
    """One projection as a model applies it: `fn`, and what fixes its result on a given input: the arithmetic
    (`key`: the linear mode and its variant) and the weight tensors `parts` it applies. Equal key, equal parts
    and an equal input give an equal result (`LinearMemo`)."""

    __slots__ = ("fn", "key", "parts")

    def __init__(self, fn: Linear, key: tuple, *parts: torch.Tensor) -> None:
        self.fn, self.key, self.parts = fn, key, parts

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def same_weights(self, other: Lin) -> bool:
        return self.key == other.key and len(self.parts) == len(other.parts) and all(
            bits_equal(a, b) for a, b in zip(self.parts, other.parts))


def _lin_plain(w: Weights, name: str) -> Lin:
    weight = w.cache.get(name)
    return Lin(lambda x: F.linear(x, weight), ("plain",), weight)


def online_weight(t: Ternary) -> torch.Tensor:
    """`weight_quant` (or `weight_quant_bf16`) from the ternarization: bf16(code / s) = code * bf16(float32(1 / s))
    and `ternarize` returns scale = float32(1 / s); the same bf16 values (tests check it), without the float32
    passes over the weight."""
    return torch.from_numpy(np.asarray(t.codes, dtype=np.int8)).to(DTYPE) * _scale_tensor(float(t.scale), DTYPE)


def _lin_online(w: Weights, name: str) -> Lin:
    weight = online_weight(w.cache.ternary(name, w.compute))
    return Lin(lambda x: F.linear(act_quant(x), weight), ("online",), weight)


def _lin_autobitlinear(w: Weights, name: str) -> Lin:
    q, scale = _codes(w, name)
    ws = _scale_tensor(scale, DTYPE)
    return Lin(lambda x: F.linear(act_quant(x), q) * ws, ("autobitlinear",), q, ws)


def _lin_bitlinear(w: Weights, name: str) -> Lin:
    q, scale = _codes(w, name)
    lay = layout_class(hf_layouts()["bitlinear"])  # the stored weight_scale (1/scale), by the layout's one rule
    ws = _scale_tensor(float(decode_scale(encode_scale(scale, lay.scale_dtype, lay.scale_inverted))), DTYPE)
    fn = BITLINEAR[w.bitlinear]
    return Lin(lambda x: fn(x, q, ws), ("bitlinear", w.bitlinear), q, ws)


def _lin_decoded(w: Weights, name: str) -> Lin:
    q, scale = _codes(w, name)
    s = _scale_tensor(scale, torch.float32)
    return Lin(lambda x: (F.linear(act_quant(x), q).float() * s).to(x.dtype), ("decoded",), q, s)


def _lin_ggml(w: Weights, name: str) -> Lin:
    gtype = w.ggml_type(name)
    q, scale = _codes(w, name)
    weight = q.float() * _scale_tensor(scale, torch.float32)  # codes * stored scale: exact in every float type
    act = GGML_ACT[gtype]
    return Lin(lambda x: F.linear(act(x.float()), weight), ("ggml", gtype), weight)


class LinearMemo:
    """The current layer's projection results, shared by the models of one lockstep forward. A model whose
    projection has the same arithmetic, bit-equal weights and a bit-equal input as one an earlier model ran this
    layer takes that result instead of recomputing it: the floor model of `parity` (REF's codes and stored scales in
    OUT's arithmetic) is OUT itself when OUT holds exactly what REF ternarizes to, and costs no matmul then. The
    earlier model's weights are rebuilt for the comparison (from the layer cache), never kept."""

    def __init__(self) -> None:
        self._done: dict[str, list[tuple[Weights, tuple, torch.Tensor, torch.Tensor]]] = {}
        self.hits = 0
        self.runs = 0

    def run(self, w: Weights, name: str, lin: Lin, x: torch.Tensor) -> torch.Tensor:
        for other, key, x0, out in self._done.get(name, ()):
            if key == lin.key and other is not w and bits_equal(x0, x) \
                    and LINEARS[other.mode](other, name).same_weights(lin):
                self.hits += 1
                return out
        out = lin(x)
        self.runs += 1
        self._done.setdefault(name, []).append((w, lin.key, x, out))
        return out

    def clear(self) -> None:
        self._done.clear()


MEMO = True  # share equal projection results between the models of one forward (tests switch it off to compare)

LINEARS: dict[str, Callable[[Weights, str], Lin]] = {
    "plain": _lin_plain, "online": _lin_online, "autobitlinear": _lin_autobitlinear, "bitlinear": _lin_bitlinear,
    "decoded": _lin_decoded, "ggml": _lin_ggml,
}

# Checkpoint kinds whose ternary tensors are ternarized from float latents when read (not stored as codes), and
# the linear modes that need such latents: plain needs the bf16 weights themselves.
LATENT_KINDS = ("bf16-master", "nanotron")
MODE_KINDS = {"plain": ("bf16-master",), "online": LATENT_KINDS}

# checkpoint layout -> how its runtime applies the ternary weights
MODE_OF_LAYOUT = {name: linear_class for linear_class, name in hf_layouts().items()}


def mode_for(ck: Checkpoint) -> str:
    """The linear mode that computes what `ck` is: online for a master, its runtime's arithmetic otherwise."""
    if ck.kind in LATENT_KINDS:
        return "online"
    return MODE_OF_LAYOUT.get(ck.layout or "", "decoded")


class Weights:
    """One model variant: a checkpoint, how its projections are applied, and the layer cache it reads through.

    `compute` is the ternarization arithmetic for a master (default: the checkpoint's declared one, else float32);
    `scale_fn` maps each magnitude scale to the value a format stores (to run a master as a packed format would).
    Mode `ggml` runs llama.cpp's CPU arithmetic in float32: `ggml` maps each HF tensor name to the GGML type a GGUF
    file stores it in (projections, embeddings, lm_head, norms), which fixes how the tensor is rounded and how its
    matmul's input is quantized (`GGML_ACT`, `GGML_STORE`)."""

    def __init__(self, ck: Checkpoint, mode: str | None = None, cache: TensorCache | None = None,
                 bitlinear: str = "compiled", linear_norm_eps: float | None = None, compute: str | None = None,
                 scale_fn: Callable[[float], float] | None = None, ggml: dict[str, str] | None = None) -> None:
        mode = mode or mode_for(ck)
        if mode not in LINEARS:
            raise UsageError(f"linear mode must be one of {', '.join(LINEARS)}, got {mode!r}")
        if bitlinear not in BITLINEAR:
            raise UsageError(f"bitlinear emulation must be one of {', '.join(BITLINEAR)}, got {bitlinear!r}")
        if ck.kind not in MODE_KINDS.get(mode, (ck.kind,)):
            raise UsageError(f"linear mode {mode!r} needs a {' or '.join(MODE_KINDS[mode])} checkpoint, got "
                             f"{ck.kind}")
        compute = compute_mode(compute or (ck.compute if ck.compute in WEIGHT_QUANT else "float32"))
        if (mode == "ggml") != (ggml is not None):
            raise UsageError("linear mode 'ggml' and a tensor -> GGML type map go together")
        self.ck, self.mode, self.bitlinear, self.compute, self.scale_fn = ck, mode, bitlinear, compute, scale_fn
        self.cache = cache or TensorCache(ck)
        self.linear_norm_eps = linear_norm_eps
        self.ggml = ggml
        self.memo: LinearMemo | None = None  # set by `forward` while it runs this model beside others
        self.dtype = torch.float32 if ggml is not None else DTYPE

    def ggml_type(self, name: str) -> str:
        assert self.ggml is not None
        gtype = self.ggml.get(name)
        if gtype not in GGML_ACT:
            raise UsageError(f"the llama.cpp emulation has no arithmetic for GGML type {gtype!r}", tensor=name)
        return gtype

    def _stored(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """A passthrough tensor in this model's dtype, rounded as the emulated file stores it."""
        if self.ggml is None:
            return t.to(DTYPE)
        return GGML_STORE.get(self.ggml.get(name, "F32"), GGML_STORE["F32"])(t.float())

    def norm(self, name: str) -> torch.Tensor:
        if self.ggml is None:
            return self.cache.get(name + ".weight")
        return self._stored(name + ".weight", self.cache.get(name + ".weight", torch.float32))

    def embed(self, ids: list[int]) -> torch.Tensor:
        """Embedding rows of `ids` (a row lookup: no matmul rounding)."""
        name = "model.embed_tokens.weight"
        return self._stored(name, read_rows(self.ck, name, ids, dtype=None))

    def head(self, h: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """float32 logits of the normed hidden state `h` against a chunk of lm_head `rows` (stored dtype)."""
        name = self.lm_head_name()
        w = self._stored(name, rows)
        if self.ggml is not None:
            h = GGML_ACT[self.ggml_type(name)](h.float())
        return F.linear(h, w).float()

    def linear(self, module: str) -> Linear:
        name = module + ".weight"
        lin = LINEARS[self.mode](self, name)
        memo = self.memo
        if self.linear_norm_eps is None:
            return lin if memo is None else lambda x: memo.run(self, name, lin, x)
        weight, eps = self.norm(module + ".rms_norm"), self.linear_norm_eps
        if memo is None:
            return lambda x: lin(rms_norm(x, weight, eps))
        return lambda x: memo.run(self, name, lin, rms_norm(x, weight, eps))

    def lm_head_name(self) -> str:
        return "lm_head.weight" if "lm_head.weight" in self.ck.tensors else "model.embed_tokens.weight"


# ------------------------------------------------------------------------------------------------ forward


def rope(cfg: RefConfig, n: int, dtype: torch.dtype = DTYPE) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [1, n, head_dim] in `dtype` (bf16), computed as transformers' default rotary embedding does."""
    inv_freq = 1.0 / (cfg.theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float) / cfg.head_dim))
    freqs = torch.arange(n).unsqueeze(0)[..., None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * 1.0).to(dtype), (emb.sin() * 1.0).to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    if n_rep == 1:
        return x
    b, kv, t, d = x.shape
    return x[:, :, None, :, :].expand(b, kv, n_rep, t, d).reshape(b, kv * n_rep, t, d)


def causal_mask(batch: int, n: int, dtype: torch.dtype = DTYPE) -> torch.Tensor:
    """transformers' eager mask: 0 where attended, finfo(dtype).min above the diagonal, [batch, 1, n, n]."""
    allowed = torch.ones(n, n, dtype=torch.bool).tril()
    mask = torch.where(allowed, torch.tensor(0.0, dtype=dtype), torch.finfo(dtype).min)
    return mask[None, None].expand(batch, 1, n, n)


def _attention(cfg: RefConfig, w: Weights, p: str, x: torch.Tensor, pos: tuple[torch.Tensor, ...]) -> torch.Tensor:
    cos, sin, mask = pos
    b, n, _ = x.shape
    shape = (b, n, -1, cfg.head_dim)
    q = w.linear(p + "self_attn.q_proj")(x).view(shape).transpose(1, 2)
    k = w.linear(p + "self_attn.k_proj")(x).view(shape).transpose(1, 2)
    v = w.linear(p + "self_attn.v_proj")(x).view(shape).transpose(1, 2)
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)
    q, k = (q * c) + (_rotate_half(q) * s), (k * c) + (_rotate_half(k) * s)
    k, v = _repeat_kv(k, cfg.n_heads // cfg.n_kv), _repeat_kv(v, cfg.n_heads // cfg.n_kv)
    a = torch.matmul(q, k.transpose(2, 3)) * cfg.head_dim**-0.5
    a = F.softmax(a + mask, dim=-1, dtype=torch.float32).to(q.dtype)
    o = torch.matmul(a, v).transpose(1, 2).contiguous().reshape(b, n, -1).contiguous()
    if cfg.arch.attn_sub_norm:
        o = rms_norm(o, w.norm(p + cfg.arch.attn_sub_norm), cfg.eps)
    return w.linear(p + "self_attn.o_proj")(o)


def _mlp(cfg: RefConfig, w: Weights, p: str, x: torch.Tensor) -> torch.Tensor:
    m = ACTIVATIONS[cfg.act](w.linear(p + "mlp.gate_proj")(x)) * w.linear(p + "mlp.up_proj")(x)
    if cfg.arch.ffn_sub_norm:
        m = rms_norm(m, w.norm(p + cfg.arch.ffn_sub_norm), cfg.eps)
    return w.linear(p + "mlp.down_proj")(m)


def decoder_layer(cfg: RefConfig, w: Weights, i: int, h: torch.Tensor, pos: tuple[torch.Tensor, ...]) \
        -> torch.Tensor:
    p = f"model.layers.{i}."
    h = h + _attention(cfg, w, p, rms_norm(h, w.norm(p + "input_layernorm"), cfg.eps), pos)
    return h + _mlp(cfg, w, p, rms_norm(h, w.norm(p + "post_attention_layernorm"), cfg.eps))


def _logits(cfg: RefConfig, models: Sequence[Weights], hs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Final norm and lm_head of every model; each lm_head chunk is read once for all models sharing it."""
    normed = [rms_norm(h, m.norm("model.norm"), cfg.eps) for m, h in zip(models, hs)]
    parts: list[list[torch.Tensor]] = [[] for _ in models]
    groups: dict[tuple[int, str], list[int]] = {}
    for j, m in enumerate(models):
        groups.setdefault((id(m.ck), m.lm_head_name()), []).append(j)
    for (_, name), idx in groups.items():
        ck = models[idx[0]].ck
        n = ck.tensors[name].shape[0]
        for a in range(0, n, LM_HEAD_CHUNK):
            w = read_rows(ck, name, range(a, min(a + LM_HEAD_CHUNK, n)), dtype=None)
            for j in idx:
                parts[j].append(models[j].head(normed[j], w))
    return [torch.cat(p, dim=-1) for p in parts]


def forward(cfg: RefConfig, models: Sequence[Weights], ids: torch.Tensor,
            progress: Callable[[int, int], None] | None = None) -> list[torch.Tensor]:
    """float32 logits [B, T, vocab] of every model on `ids` [B, T], run in lockstep one layer at a time."""
    if ids.dim() != 2 or ids.numel() == 0:
        raise UsageError(f"token ids must be a non-empty [batch, length] array, got shape {list(ids.shape)}")
    if int(ids.min()) < 0 or int(ids.max()) >= cfg.vocab:
        raise UsageError(f"token ids must lie in [0, {cfg.vocab}), got [{int(ids.min())}, {int(ids.max())}]")
    b, n = ids.shape
    pos = {dt: (*rope(cfg, n, dt), causal_mask(b, n, dt)) for dt in {m.dtype for m in models}}
    flat = ids.reshape(-1).tolist()
    memo = LinearMemo() if len(models) > 1 and MEMO else None
    for m in models:
        m.memo = memo
    try:
        with torch.no_grad():
            hs = [m.embed(flat).view(b, n, -1) for m in models]
            for i in range(cfg.n_layers):
                hs = [decoder_layer(cfg, m, i, h, pos[m.dtype]) for m, h in zip(models, hs)]
                for m in models:
                    m.cache.clear()
                if memo is not None:
                    memo.clear()
                if progress:
                    progress(i + 1, cfg.n_layers)
            out = _logits(cfg, models, hs)
    finally:
        for m in models:
            m.cache.clear()
            m.memo = None
    return out


def reference_logits(ck: Checkpoint, ids: torch.Tensor, mode: str | None = None, *, bitlinear: str = "compiled",
                     config: dict | None = None) -> torch.Tensor:
    """float32 logits of one checkpoint on `ids`, applied as `mode` (default: what the checkpoint is)."""
    cfg = RefConfig.from_hf(config or ck.config)
    return forward(cfg, [Weights(ck, mode, bitlinear=bitlinear, linear_norm_eps=cfg.linear_norm_eps)], ids)[0]
