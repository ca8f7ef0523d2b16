"""Logit parity: REF (the bf16 master with online ternarization: what the model is) against OUT (decoded and
applied as its runtime applies it) on a fixed token batch; the plain bf16 master (no quantization) for information.

The floor. Online and offline arithmetic are two roundings of one model; through the 8-bit activation quantizers
their difference grows with depth, and on a deep model with random weights (the synthetic 2B4T benchmark: top-1
agreement 71 % for an exact artifact) it exceeds any fixed threshold. So parity also runs the *floor model*: REF's
own codes and scales, stored as OUT's format stores them and applied in OUT's arithmetic, i.e. what a correct OUT
computes (`out_vs_floor` is exactly 0 for an exact artifact). Each limit is widened to the floor plus slack
(`FLOOR_SLACK`): a correct artifact passes on any model; a wrong one is judged against what its format can do.

Metrics per comparison (`ParityMetrics`): max |Δlogit| (absolute and relative to REF's logit range), mean KL
divergence KL(REF || OUT) per position, top-1 agreement, mean top-5 overlap.

Default thresholds (`Thresholds`), and why: a correct artifact differs from REF only by where the scale is rounded
(offline `bf16(x @ q) * bf16(scale)` or BitLinear's int8 division vs online `x @ bf16(q / s)`, about 2^-9 relative
per linear), which can flip an 8-bit activation code in the next layer. Measured on the tiny fixtures (random
weights: flat output distributions, the hardest case for top-k agreement) for every layout bitconv writes: max
|Δlogit| <= 1.8 % of REF's logit range, mean KL <= 3e-4, top-1 agreement >= 89.8 %, top-5 overlap >= 90.5 %. Gross
faults (inverted scale, shifted rows) give >= 23 % of the range and top-5 overlap <= 39 %. Subtle single-tensor
faults (one flipped row, a changed sub-norm) hardly move the logits of a random model; the round trip, not parity,
is what catches those.

| threshold        | default | flag               |
|------------------|---------|--------------------|
| max_rel_dlogit   | 0.05    | `--max-rel-dlogit` |
| max_dlogit       | off     | `--max-dlogit`     |
| max_kl           | 0.01    | `--max-kl`         |
| min_top1         | 0.85    | `--min-top1`       |
| min_top5         | 0.85    | `--min-top5`       |
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from bitconv._alloc import keep_freed_memory
from bitconv.errors import SourceError, UsageError
from bitconv.sources import Checkpoint
from bitconv.sources.safetensors import read_optional_json
from bitconv.verify.reference import RefConfig, TensorCache, Weights, forward, mode_for
from bitconv.verify.roundtrip import scale_storage, stored_scale

DEFAULT_BATCH, DEFAULT_LENGTH, DEFAULT_SEED = 2, 64, 20250101


@dataclass
class Thresholds:
    """Limits of OUT vs REF. `max_dlogit` is absolute and off by default (logit scales vary between models)."""

    max_rel_dlogit: float = 0.05
    max_dlogit: float | None = None
    max_kl: float = 0.01
    min_top1: float = 0.85
    min_top5: float = 0.85


@dataclass
class ParityMetrics:
    max_dlogit: float
    rel_dlogit: float  # max |Δ| / (max - min of the first side's logits)
    mean_kl: float
    top1: float
    top5: float

    @classmethod
    def between(cls, a: torch.Tensor, b: torch.Tensor) -> ParityMetrics:
        """Metrics of `b` against `a` (float32 logits [B, T, V])."""
        d = float((a - b).abs().max())
        span = float(a.max() - a.min()) or 1.0
        la, lb = torch.log_softmax(a.double(), -1), torch.log_softmax(b.double(), -1)
        kl = float((la.exp() * (la - lb)).sum(-1).mean())
        top1 = float((a.argmax(-1) == b.argmax(-1)).float().mean())
        k = min(5, a.shape[-1])
        ta, tb = a.topk(k, -1).indices, b.topk(k, -1).indices
        overlap = (ta[..., :, None] == tb[..., None, :]).any(-1).float().sum(-1) / k
        return cls(d, d / span, max(kl, 0.0), top1, float(overlap.mean()))

    def failures(self, th: Thresholds, floor: ParityMetrics | None = None) -> list[str]:
        """Limits broken. With `floor` (what a correct OUT gives against REF), each limit is widened to the floor
        plus slack (`FLOOR_SLACK`): a model whose arithmetic alone moves the logits more is not failed for it."""
        lim = _limits(th, floor)
        rules = [
            (self.rel_dlogit > lim.max_rel_dlogit, f"max |Δlogit| {self.max_dlogit:.4g} is {self.rel_dlogit:.2%} of "
                                                   f"REF's logit range (limit {lim.max_rel_dlogit:.2%})"),
            (lim.max_dlogit is not None and self.max_dlogit > lim.max_dlogit,
             f"max |Δlogit| {self.max_dlogit:.4g} > {lim.max_dlogit}"),
            (self.mean_kl > lim.max_kl, f"mean KL {self.mean_kl:.3g} > {lim.max_kl:.3g}"),
            (self.top1 < lim.min_top1, f"top-1 agreement {self.top1:.2%} < {lim.min_top1:.1%}"),
            (self.top5 < lim.min_top5, f"top-5 overlap {self.top5:.2%} < {lim.min_top5:.1%}"),
        ]
        return [msg for bad, msg in rules if bad]


# Slack over the floor: (factor, addend) for upper limits, addend only for lower limits.
FLOOR_SLACK = {"dlogit": (1.25, 0.005), "kl": (1.25, 1e-4), "top": 0.05}


def _limits(th: Thresholds, floor: ParityMetrics | None) -> Thresholds:
    if floor is None:
        return th
    (f, a), (fk, ak), top = FLOOR_SLACK["dlogit"], FLOOR_SLACK["kl"], FLOOR_SLACK["top"]
    return Thresholds(
        max_rel_dlogit=max(th.max_rel_dlogit, floor.rel_dlogit * f + a),
        max_dlogit=None if th.max_dlogit is None else max(th.max_dlogit, floor.max_dlogit * f),
        max_kl=max(th.max_kl, floor.mean_kl * fk + ak),
        min_top1=min(th.min_top1, floor.top1 - top), min_top5=min(th.min_top5, floor.top5 - top))


@dataclass
class ParityReport:
    tokens: list[list[int]]  # [batch][length]
    token_source: str
    ref_mode: str
    out_mode: str
    thresholds: Thresholds
    out_vs_ref: ParityMetrics
    floor_vs_ref: ParityMetrics | None = None  # REF's own codes in OUT's arithmetic: what a correct OUT gives
    out_vs_floor: ParityMetrics | None = None  # 0 when OUT computes exactly what REF's codes and scales give
    out_vs_plain: ParityMetrics | None = None  # information: against the dense bf16 master
    ref_vs_plain: ParityMetrics | None = None  # information: what ternarization itself costs
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        return d


# ------------------------------------------------------------------------------------------------ tokens


def default_tokens(vocab: int, batch: int = DEFAULT_BATCH, length: int = DEFAULT_LENGTH) -> torch.Tensor:
    """The built-in batch: `batch` x `length` ids drawn uniformly from [0, vocab) with a fixed seed."""
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(DEFAULT_SEED))


MAX_SEQ_LEN = 2048  # ids per sequence: parity runs full attention, memory grows with its square
MAX_SEQS = 64  # sequences per batch
MAX_TOKEN_FILE = 16 << 20


def tokens_from_file(path: str | Path) -> torch.Tensor:
    """Token ids from FILE: JSON (`[[ids], ...]`, `[ids]` or `{"input_ids": ...}`) or text, one sequence of
    whitespace-separated ids per line. All sequences must have the same length; at most MAX_SEQS sequences of at
    most MAX_SEQ_LEN ids, each a non-negative integer (a float or a boolean is not an id)."""
    from bitconv import safeio
    from bitconv.errors import SourceError

    p = Path(path)
    try:
        text = safeio.read_text(p, MAX_TOKEN_FILE, what="token file", user_named=True)
    except SourceError as e:
        raise UsageError(str(e)) from None
    try:
        data = json.loads(text)
        if isinstance(data, dict):
            data = data.get("input_ids")
        is_id = (lambda x: type(x) is int)  # noqa: E731
    except ValueError:
        data = [line.split() for line in text.splitlines() if line.strip()]
        is_id = (lambda x: isinstance(x, str) and x.isascii() and x.isdigit())  # noqa: E731
    except RecursionError:
        raise UsageError("token file: JSON nested too deeply", path=p) from None
    if isinstance(data, list) and data and not isinstance(data[0], list):
        data = [data]
    shape = "a JSON list (of lists) or whitespace-separated numbers, one sequence per line, all of one length"
    if not isinstance(data, list) or not data or not all(isinstance(r, list) and r for r in data):
        raise UsageError(f"token file must hold integer ids: {shape}", path=p)
    if len(data) > MAX_SEQS or any(len(r) > MAX_SEQ_LEN for r in data):
        raise UsageError(f"token file holds {len(data)} sequence(s) of up to {max(len(r) for r in data)} ids; "
                         f"parity takes at most {MAX_SEQS} sequences of at most {MAX_SEQ_LEN} ids", path=p)
    bad = next((x for r in data for x in r if not is_id(x) or int(x) < 0 or int(x) >= 1 << 31), None)
    if bad is not None or len({len(r) for r in data}) != 1:
        what = f"{bad!r} is not a token id (a non-negative integer)" if bad is not None \
            else "sequences differ in length"
        raise UsageError(f"token file must hold integer ids ({what}): {shape}", path=p)
    return torch.tensor([[int(x) for x in row] for row in data], dtype=torch.long)


def _sentencepiece(model: Path, text: str, folder: Path) -> list[int]:
    try:
        import sentencepiece as spm
    except ImportError:
        raise UsageError("--prompt with a tokenizer.model needs the sentencepiece package "
                         "(pip install sentencepiece), or pass --tokens FILE") from None
    sp = spm.SentencePieceProcessor(model_file=str(model))
    cfg = read_optional_json(folder / "tokenizer_config.json") or {}
    bos = [sp.bos_id()] if cfg.get("add_bos_token", True) and sp.bos_id() >= 0 else []
    return bos + list(sp.encode(text))


def _tokenizers(path: Path, text: str, folder: Path) -> list[int]:
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise UsageError("--prompt with a tokenizer.json needs the tokenizers package (pip install tokenizers), "
                         "or pass --tokens FILE") from None
    return list(Tokenizer.from_file(str(path)).encode(text).ids)


TOKENIZERS: dict[str, Callable[[Path, str, Path], list[int]]] = {
    "tokenizer.json": _tokenizers, "tokenizer.model": _sentencepiece,
}


def tokens_from_prompt(text: str, *checkpoints: Checkpoint) -> torch.Tensor:
    """Encode `text` with the first tokenizer found next to the checkpoints (tokenizer.json, tokenizer.model)."""
    for ck in checkpoints:
        folder = ck.path if ck.path.is_dir() else ck.path.parent
        for fname, encode in TOKENIZERS.items():
            if (folder / fname).is_file():
                ids = encode(folder / fname, text, folder)
                if not ids:
                    raise UsageError("--prompt encodes to no tokens")
                return torch.tensor([ids], dtype=torch.long)
    raise UsageError("--prompt needs a tokenizer (tokenizer.json or tokenizer.model) next to REF or OUT; "
                     "pass --tokens FILE instead")


# ------------------------------------------------------------------------------------------------ parity


def _check_compatible(out_cfg: RefConfig, ref_cfg: RefConfig, out_ck: Checkpoint) -> None:
    keys = ("hidden", "n_layers", "n_heads", "n_kv", "head_dim", "vocab")
    diff = [k for k in keys if getattr(out_cfg, k) != getattr(ref_cfg, k)]
    if diff:
        raise SourceError(f"OUT's config does not describe REF's model ({', '.join(diff)} differ)", path=out_ck.path)


def parity(out_ck: Checkpoint, ref_ck: Checkpoint, ids: torch.Tensor, thresholds: Thresholds | None = None, *,
           token_source: str = "default", out_mode: str | None = None, bitlinear: str = "compiled",
           ref_compute: str = "float32", progress: Callable[[int, int], None] | None = None) -> ParityReport:
    """Run REF (online), OUT, the floor model (REF's codes and scales applied in OUT's arithmetic) and the plain
    master (when REF is one) on `ids`, layer by layer in lockstep, and compare.

    `ref_compute` is the arithmetic REF is ternarized with: "float32" (transformers' WeightQuant), or "bfloat16"
    for an artifact whose codes the round trip found were made the onebitllms way (that model, not another one,
    is what OUT must reproduce)."""
    t0 = time.perf_counter()
    keep_freed_memory()  # streaming same-sized tensors: reuse freed pages instead of faulting new ones
    th = thresholds or Thresholds()
    cfg = RefConfig.from_hf(ref_ck.config)
    try:
        _check_compatible(RefConfig.from_hf(out_ck.config), cfg, out_ck)
    except UsageError:
        pass  # OUT's config (e.g. rebuilt from GGUF KVs) lacks a field: REF's architecture is used
    cache = TensorCache(ref_ck)
    eps = cfg.linear_norm_eps
    out_w = Weights(out_ck, out_mode, bitlinear=bitlinear, linear_norm_eps=eps)
    storage = scale_storage(out_ck.layout, next(iter(out_ck.ternary_tensors()), None))
    models = [Weights(ref_ck, mode_for(ref_ck), cache, linear_norm_eps=eps, compute=ref_compute), out_w,
              Weights(ref_ck, out_w.mode, cache, bitlinear=bitlinear, linear_norm_eps=eps, compute=ref_compute,
                      scale_fn=lambda x: stored_scale(x, storage))]
    if ref_ck.kind == "bf16-master":
        models.append(Weights(ref_ck, "plain", cache, linear_norm_eps=eps))
    logits = forward(cfg, models, ids, progress)
    ref, out, floor = logits[:3]
    ref_mode = models[0].mode + (f" ({ref_compute})" if models[0].mode == "online" else "")
    rep = ParityReport(ids.tolist(), token_source, ref_mode, out_w.mode, th, ParityMetrics.between(ref, out),
                       ParityMetrics.between(ref, floor), ParityMetrics.between(floor, out))
    if len(logits) == 4:
        rep.out_vs_plain = ParityMetrics.between(logits[3], out)
        rep.ref_vs_plain = ParityMetrics.between(logits[3], ref)
    rep.failures = rep.out_vs_ref.failures(th, rep.floor_vs_ref)
    rep.seconds = time.perf_counter() - t0
    return rep
