"""The Python API: one function per CLI command, with the CLI's options as keyword arguments.

    >>> import bitconv
    >>> bitconv.pack("bitnet-bf16", "out/", to="gguf", type="i2_s")      # -> out/bitnet-bf16-i2_s.gguf
    >>> bitconv.pack("bitnet-bf16", "bitnet-packed", to="hf")
    >>> bitconv.verify("out/bitnet-bf16-i2_s.gguf", ref="bitnet-bf16").ok
    >>> bitconv.inspect("bitnet-packed").layout
    >>> bitconv.convert("checkpoints/10000", "bitnet-bf16", to="hf-bf16")
    >>> bitconv.upload("bitnet-packed", "me/bitnet-packed", dry_run=True).plan.card

The `bitconv` command calls exactly these functions and only renders what they return. Choices are
case-insensitive (`to="GGUF"`, `type="Bf16"`, `linear_class="BitLinear"`). A SRC is a local path or a Hub repo id
(`owner/name[@revision]`, or a `https://huggingface.co/owner/name` URL); see `sources.hub.looks_local` for the rule
that tells them apart. torch, transformers, gguf and huggingface_hub are imported inside the functions that need
them, so importing this module (and `bitconv --help`) stays fast.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bitconv.core.errors import OutputError, UsageError

if TYPE_CHECKING:
    from bitconv.describe import Description
    from bitconv.sources.hub import UploadResult
    from bitconv.verify import VerifyReport
    from bitconv.verify.check import CheckReport

Progress = Callable[[int, int, str], None]

PACK_TARGETS = ("hf", "gguf")
CONVERT_TARGETS = ("hf-bf16", "nanotron")
DEFAULT_SHARD = "5GB"
_UNITS = {"": 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3}
OTHER_JOBS = ("`pack` converts into deployable layouts (HF packed, GGUF), `unpack` back to trainable bf16, "
              "`convert` handles Nanotron <-> HF")


def parse_size(text: str | int) -> int:
    """`5GB`, `500MB`, `2GiB` or a byte count -> bytes."""
    if isinstance(text, int) and text > 0:
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)?\s*", str(text).upper())
    if not m or float(m.group(1)) <= 0:
        raise UsageError(f"--max-shard-size {text!r} is not a size like 5GB, 500MB or 1048576")
    return int(float(m.group(1)) * _UNITS[m.group(2) or ""])


def choice(value: str | None, allowed: tuple[str, ...], option: str) -> str | None:
    """`value` case-folded and checked against `allowed` (the registry's spelling)."""
    if value is None:
        return None
    key = str(value).strip().lower()
    if key not in allowed:
        raise UsageError(f"{option} must be one of {', '.join(allowed)}, got {value!r}")
    return key


@contextmanager
def hub_options(token: str | None, revision: str | None) -> Iterator[None]:
    """Token and default revision for the downloads of a repo-id SRC made inside the block."""
    if token is None and revision is None:
        yield
        return
    from bitconv.sources import hub

    hub.use_token(token)
    hub.use_revision(revision)
    try:
        yield
    finally:
        hub.use_token(None)
        hub.use_revision(None)


@contextmanager
def report_downloads(progress: Callable[[int, int, str], None] | None) -> Iterator[None]:
    """Hub downloads made inside the block (a repo-id SRC or REF) report (done bytes, total bytes, repo) to
    `progress` instead of drawing huggingface_hub's own bars. None: huggingface_hub's bars, as without the block."""
    from bitconv.core import hooks

    reset = hooks.download_progress.set(progress)
    try:
        yield
    finally:
        hooks.download_progress.reset(reset)


# ------------------------------------------------------------------------------------------------ output paths


def gguf_out_path(out: str | Path, model_name: str, gguf_type: str) -> Path:
    """Where `pack --to gguf -o OUT` writes: OUT/<model-name>-<type>.gguf for an existing folder (or OUT ending in
    a slash), OUT with `.gguf` appended when it has no suffix, else OUT (which must end in .gguf)."""
    text = str(out)
    p = Path(out).expanduser()
    if p.is_dir() or text.endswith(("/", "\\")):
        if not p.is_dir():
            raise OutputError("no such folder; create it first or name the output file", path=p)
        return p / f"{model_name}-{gguf_type}.gguf"
    if p.suffix.lower() == ".gguf":
        return p
    if p.suffix and p.suffix.lower() in (".bin", ".safetensors", ".json", ".pt", ".pth"):
        raise UsageError(f"--to gguf writes one .gguf file, not {p.suffix}", path=p,
                         hint="name the output NAME.gguf or an existing folder")
    return p.with_name(p.name + ".gguf")


def _hf_out(out: str | Path, what: str) -> Path:
    p = Path(out).expanduser()
    if p.suffix.lower() == ".gguf":
        raise UsageError(f"{what} writes a folder, not a .gguf file", path=p,
                         hint="use --to gguf --type TYPE for a GGUF, or name a folder")
    return p


# ------------------------------------------------------------------------------------------------ commands


def quantize(src: str | Path, out: str | Path, *, compute: str = "float32", overwrite: bool = False,
             max_shard_size: str | int = DEFAULT_SHARD, token: str | None = None, revision: str | None = None,
             progress: Progress | None = None, dry_run: bool = False) -> Any:
    """bf16 master -> bitconv ternary checkpoint (int8 codes + float32 absmean scales) in folder OUT.

    `dry_run`: return the plan (`pipeline.Plan`: tensors, output bytes, planned peak memory), write nothing.

    Example:
        >>> bitconv.quantize("bitnet-bf16", "bitnet-ternary", compute="bfloat16").files
    """
    from bitconv import pipeline

    with hub_options(token, revision):
        return pipeline.quantize(src, _hf_out(out, "quantize"), compute=compute, overwrite=overwrite,
                                 max_shard_bytes=parse_size(max_shard_size), progress=progress, dry_run=dry_run)


def pack(src: str | Path, out: str | Path | None = None, *, to: str = "hf", linear_class: str = "autobitlinear",
         type: str | None = None, arch: str | None = None, embd_type: str | None = None,
         kernel_config: str | Path | None = None, tl2_type_id: int | None = None, compute: str = "float32",
         model_name: str | None = None, force: bool = False, overwrite: bool = False,
         max_shard_size: str | int = DEFAULT_SHARD,
         dry_run: bool = False, token: str | None = None, revision: str | None = None,
         progress: Progress | None = None) -> Any:
    """Pack SRC into a deployable layout: `to="hf"` (a transformers folder) or `to="gguf"` (one .gguf file of
    `type`: a GGUF layout without its `gguf-` prefix, e.g. i2_s (`bitconv layouts`), or f32, f16, bf16). Ternary
    sources are packed from their own codes.

    Args:
        out: HF: the output folder. GGUF: a .gguf path, NAME (".gguf" is appended), or an existing folder, which
            gets `<model-name>-<type>.gguf`.
        linear_class: HF only: autobitlinear (weight_scale = scale) or bitlinear (1/scale).
        arch, embd_type, kernel_config, tl2_type_id, model_name: GGUF only (model_name sets general.name).
        dry_run: return the plan (`pipeline.Plan` / `sinks.gguf.GGUFPlan`), write nothing.
    Returns a `pipeline.Report` (out, files, bytes_written, seconds, extra["warnings"]).
    Example:
        >>> bitconv.pack("bitnet-bf16", "models/", to="GGUF", type="i2_s").out
        PosixPath('models/bitnet-bf16-i2_s.gguf')
    """
    to = str(to).strip().lower()
    if to in CONVERT_TARGETS:
        raise UsageError(f"pack does not write {to}: use `bitconv convert SRC --to {to} -o OUT` ({OTHER_JOBS})")
    if to == "bf16":
        raise UsageError(f"pack writes deployable layouts; for a trainable bf16 checkpoint use `bitconv unpack` "
                         f"({OTHER_JOBS})")
    to = choice(to, PACK_TARGETS, "--to")
    if out is None and not dry_run:
        raise UsageError("pack needs -o OUT")
    with hub_options(token, revision):
        if to == "gguf":
            return _pack_gguf(src, out, type, dict(arch=arch, embd_type=embd_type, kernel_config=kernel_config,
                                                   tl2_type_id=tl2_type_id, compute=compute,
                                                   model_name=model_name, force=force), overwrite, dry_run,
                              progress)
        given = [n for n, v in (("--type", type), ("--arch", arch), ("--embd-type", embd_type),
                                ("--kernel-config", kernel_config), ("--model-name", model_name)) if v is not None]
        given += (["--tl2-type-id"] if tl2_type_id is not None else []) + (["--force"] if force else [])
        if given:
            raise UsageError(f"{', '.join(given)}: only for --to gguf")
        return _pack_hf(src, out, linear_class, compute, overwrite, max_shard_size, dry_run, progress)


def _pack_hf(src: str | Path, out: str | Path | None, linear_class: str, compute: str, overwrite: bool,
             max_shard_size: str | int, dry_run: bool, progress: Progress | None) -> Any:
    from bitconv import pipeline
    from bitconv.layouts import hf_layouts

    linear_class = choice(linear_class, tuple(hf_layouts()), "--linear-class")
    dest = _hf_out(out, "--to hf") if out is not None else None
    if dry_run:
        plan = pipeline.plan_pack_hf(pipeline.open_source(src, compute), linear_class)
        plan.out = dest
        return plan
    t0 = time.perf_counter()
    from bitconv.output import precheck

    precheck(dest, overwrite)  # before SRC is read
    ck = pipeline.open_source(src, compute)
    plan = pipeline.plan_pack_hf(ck, linear_class)
    written = {f.name for f in ck.aux_files} | set(plan.side_files)
    if ck.kind == "gguf" and not written & {"tokenizer.json", "tokenizer.model"}:
        plan.extra["warnings"] = [f"{ck.path.name}: no tokenizer written: the file holds no vocabulary bitconv can "
                                  "rebuild (tokenizer.ggml.model gpt2 or llama); copy tokenizer.json / "
                                  f"tokenizer_config.json from the original model into {dest}"]
    return pipeline.execute(plan, dest, overwrite=overwrite, max_shard_bytes=parse_size(max_shard_size),
                            progress=progress, started=t0)


def _pack_gguf(src: str | Path, out: str | Path | None, gguf_type: str | None, opts: dict, overwrite: bool,
               dry_run: bool, progress: Progress | None) -> Any:
    from bitconv import pipeline
    from bitconv.sinks import gguf as gguf_sink

    if gguf_type is None:
        raise UsageError(f"--to gguf needs --type: {', '.join(gguf_sink.GGUF_TARGETS)}")
    gguf_type = choice(gguf_type, tuple(gguf_sink.GGUF_TARGETS), "--type")
    compute = opts.pop("compute")
    opts = {**opts, "embd_type": opts["embd_type"].lower() if opts["embd_type"] else None,
            "arch": opts["arch"].lower() if opts["arch"] else None}
    if out is not None and not dry_run:
        from bitconv.output import precheck

        if not (Path(out).expanduser().is_dir() or str(out).endswith(("/", "\\"))):
            precheck(gguf_out_path(out, "model", gguf_type), overwrite)  # before SRC is read
    ck = pipeline.open_source(src, compute)
    dest = gguf_out_path(out, gguf_sink.model_name_of(ck, opts["model_name"]), gguf_type) \
        if out is not None else None
    plan = gguf_sink.plan_pack_gguf(ck, gguf_type, file=dest.name if dest is not None else "MODEL.gguf", **opts)
    if dry_run:
        plan.out = dest
        return plan
    if dest is not None:
        from bitconv.output import precheck

        precheck(dest, overwrite)
    return pipeline.execute(plan, dest, overwrite=overwrite, progress=progress)


def unpack(src: str | Path, out: str | Path, *, values: str = "online", overwrite: bool = False,
           max_shard_size: str | int = DEFAULT_SHARD, token: str | None = None, revision: str | None = None,
           progress: Progress | None = None, dry_run: bool = False) -> Any:
    """HF packed / bitconv ternary / GGUF / Nanotron -> trainable bf16 folder OUT (online autobitlinear config).

    `values="online"` (default) stores bf16(codes * scale / p), which transformers' online quantizer maps back to the
    same codes and scale; `values="dequantized"` stores plain bf16(codes * scale). `dry_run`: return the plan.
    Example:
        >>> bitconv.unpack("bitnet-i2_s.gguf", "bitnet-bf16-trainable").out
    """
    from bitconv import pipeline

    values = choice(values, pipeline.UNPACK_VALUES, "--values")
    with hub_options(token, revision):
        return pipeline.unpack_hf(src, _hf_out(out, "unpack"), values=values, overwrite=overwrite,
                                  max_shard_bytes=parse_size(max_shard_size), progress=progress, dry_run=dry_run)


def inspect(src: str | Path, *, stats: bool = True, token: str | None = None,
            revision: str | None = None) -> Description:
    """What a checkpoint is: kind, layout, architecture, parameters, bits per weight, scale statistics and a
    per-tensor table (`describe.Description`). `stats=False` reads headers only.

    Example:
        >>> d = bitconv.inspect("bitnet-i2_s.gguf"); d.kind, d.layout, d.bits_per_weight
    """
    from bitconv.describe import describe

    with hub_options(token, revision):
        return describe(src, stats=stats)


def verify(out: str | Path, ref: str | Path, *, parity: bool = True, thresholds: Any = None,
           prompt: str | None = None, tokens: str | Path | None = None, bitlinear: str = "compiled",
           token: str | None = None, revision: str | None = None, runtime: str | None = None, strict: bool = False,
           progress: Callable[[str, int, int], None] | None = None, **limits: float | None) -> VerifyReport:
    """Prove OUT right against its bf16 master REF: config, tensor round trip (exact codes, scale within its storage
    precision), compute mode, and logit parity. Returns a `verify.VerifyReport` (`.ok`, `.exit_code`,
    `.findings`, `.to_dict()`).

    Args:
        thresholds: a `verify.Thresholds`, or give single limits as keywords: max_rel_dlogit, max_dlogit, max_kl,
            min_top1, min_top5 (None keeps the default).
        tokens: a token-id file (JSON or one sequence per line) for the parity batch; `prompt`: text instead.
        runtime: also run OUT (a GGUF) in this runtime ("llama.cpp") and judge its logits.
        strict: apply the parity limits as given, never widened to the floor model.
    Example:
        >>> bitconv.verify("bitnet-i2_s.gguf", ref="bitnet-bf16", min_top1=0.95).ok
    """
    from bitconv.verify import Thresholds
    from bitconv.verify import verify as _verify

    th = _thresholds(thresholds, limits, Thresholds)
    bitlinear = choice(bitlinear, ("compiled", "eager"), "--bitlinear")
    runtime = runtime.strip().lower() if runtime else None  # --runtime LLAMA.CPP is llama.cpp
    with hub_options(token, revision):
        return _verify(out, ref, run_parity=parity, thresholds=th, prompt=prompt, tokens_file=tokens,
                       bitlinear=bitlinear, runtime=runtime, strict=strict, progress=progress)


def _thresholds(given: Any, limits: dict, cls: type) -> Any:
    unknown = set(limits) - {"max_rel_dlogit", "max_dlogit", "max_kl", "min_top1", "min_top5"}
    if unknown:
        raise TypeError(f"unknown limit(s): {', '.join(sorted(unknown))}")
    for name in ("min_top1", "min_top5"):
        v = limits.get(name)
        if v is not None and not 0.0 <= v <= 1.0:
            raise UsageError(f"--{name.replace('_', '-')} must lie in [0, 1], got {v}")
    base = given if given is not None else cls()
    kw = {k: v for k, v in limits.items() if v is not None}
    if not kw:
        return base
    fields = {**base.__dict__, **kw}
    fields["given"] = frozenset(base.given) | frozenset(kw)  # reports say which limits the user set
    return cls(**fields)


def check(path: str | Path, *, ref: str | Path | None = None, config_only: bool = False, parity: bool = True,
          thresholds: Any = None, strict: bool = False, runtime: str | None = None, token: str | None = None,
          revision: str | None = None, on_item: Callable[[str], None] | None = None,
          **limits: float | None) -> CheckReport:
    """CI for a model repository: every checkpoint under PATH, its config, and every artifact verified against the
    master named by `ref` (a folder, file or Hub repo id) or the one master found under PATH. An artifact that could
    not be verified fails unless `config_only`. Returns a `verify.check.CheckReport` (`.ok`, `.exit_code`,
    `.artifacts`, `.counts`). `runtime` ("llama.cpp"): every GGUF artifact must also run correctly in it (a GGUF it
    cannot load fails); needs llama-cpp-python (pip install 'bitconv[llamacpp]'). `token` / `revision`: for a Hub
    repo-id `ref`.

    Example:
        >>> bitconv.check(".", parity=False).ok
    """
    from bitconv.verify import Thresholds
    from bitconv.verify.check import check as _check

    with hub_options(token, revision):
        return _check(path, ref=ref, config_only=config_only, run_parity=parity,
                      thresholds=_thresholds(thresholds, limits, Thresholds), strict=strict, runtime=runtime,
                      on_item=on_item)


def convert(src: str | Path, out: str | Path, *, to: str, purpose: str | None = None,
            scale_granularity: str | None = None, vocab_size: int | None = None, tp: int | None = None,
            pp: int | None = None, make_vocab_size_divisible_by: int = 1, nanotron_model: str | None = None,
            compute: str = "float32", overwrite: bool = False, max_shard_size: str | int = DEFAULT_SHARD,
            token: str | None = None, revision: str | None = None, progress: Progress | None = None,
            dry_run: bool = False) -> Any:
    """Nanotron <-> HF: `to="hf-bf16"` (a Nanotron checkpoint, any TP/PP -> HF bf16 master) or `to="nanotron"`
    (HF bf16 master, bitconv ternary, HF packed or Nanotron -> Nanotron at `tp` x `pp`). `dry_run`: return the
    plan, write nothing.

    Example:
        >>> bitconv.convert("checkpoints/10000", "bitnet-bf16", to="hf-bf16").out
    """
    from bitconv.sinks import nanotron as nc

    to = str(to).strip().lower()
    if to in PACK_TARGETS:
        raise UsageError(f"convert does not write {to}: use `bitconv pack SRC --to {to} -o OUT` ({OTHER_JOBS})")
    to = choice(to, CONVERT_TARGETS, "--to")
    purpose = choice(purpose, ("release", "training"), "--for")
    scale_granularity = choice(scale_granularity, ("fused", "per-projection"), "--scale-granularity")
    nanotron_model = choice(nanotron_model, ("bitnet", "llama", "llama-pr180"), "--nanotron-model")
    _check_convert_options(to, scale_granularity, tp, make_vocab_size_divisible_by, nanotron_model, pp, purpose)
    out = _hf_out(out, "convert")
    if to == "nanotron" and not dry_run:
        from bitconv.output import precheck

        precheck(out, overwrite)  # before SRC is read
    with hub_options(token, revision):
        if to == "hf-bf16":
            return nc.to_hf(src, out, purpose=purpose, scale_granularity=scale_granularity, vocab_size=vocab_size,
                            compute=compute, overwrite=overwrite, max_shard_bytes=parse_size(max_shard_size),
                            progress=progress, dry_run=dry_run)
        return nc.to_nanotron(_nanotron_source(src, vocab_size, compute), out, tp=tp, pp=pp,
                              make_vocab_size_divisible_by=make_vocab_size_divisible_by, model=nanotron_model,
                              compute=compute, overwrite=overwrite, progress=progress, dry_run=dry_run)


def _check_convert_options(to: str, scale_granularity: str | None, tp: int | None, multiple: int,
                           model: str | None, pp: int | None = None, purpose: str | None = None) -> None:
    """Refuse options that do not apply to the chosen target."""
    if to == "hf-bf16":
        given = [n for n, on in (("--tp", tp is not None), ("--pp", pp is not None),
                                 ("--make-vocab-size-divisible-by", multiple != 1),
                                 ("--nanotron-model", model is not None)) if on]
        if given:
            raise UsageError(f"{', '.join(given)} apply to --to nanotron only")
    elif scale_granularity is not None or purpose is not None:
        raise UsageError(f"{'--for' if purpose is not None else '--scale-granularity'} applies to --to hf-bf16 only")


def _nanotron_source(src: str | Path, vocab_size: int | None, compute: str) -> Any:
    from bitconv.sources.checkpoint import is_nanotron_dir
    from bitconv.sources.nanotron import open_nanotron

    if is_nanotron_dir(Path(src)):
        return open_nanotron(src, vocab_size=vocab_size, compute=compute)
    if vocab_size is not None:
        raise UsageError("--vocab-size applies to a Nanotron SRC (an HF source's vocabulary is its embedding)")
    return src


def upload(artifact: str | Path, repo_id: str, *, revision: str | None = None, create_pr: bool = False,
           private: bool = False, commit_message: str | None = None, base_model: str | None = None,
           dry_run: bool = False, force: bool = False, token: str | None = None, card: bool = True) -> UploadResult:
    """Publish an output folder or a .gguf file to the Hub repo `repo_id` (created when missing), merging bitconv's
    section into the repo's model card. `revision`: the branch to commit to; `create_pr`: open a pull request
    instead; `dry_run`: the plan only, no network call; `card=False`: leave README.md alone. Returns a
    `publish.card.UploadResult`: `.committed` is False when the repo already held every file (then `.url` is None),
    else `.url` (the PR or the commit), `.commit_url`, `.pr_url`; `.plan`. (The CLI's positional order is `hf
    upload`'s: `bitconv upload REPO_ID [LOCAL_PATH]`.)

    Example:
        >>> bitconv.upload("bitnet-packed", "me/bitnet-packed", create_pr=True).url
    """
    from bitconv.publish.upload import upload as publish
    from bitconv.sources import hub

    return publish(artifact, hub.from_url(repo_id), revision=revision, create_pr=create_pr, private=private,
                   commit_message=commit_message, dry_run=dry_run, force=force, token=token,
                   base_model=base_model, card=card)


def layouts() -> list[dict]:
    """The registered packed layouts: name (the one spelling used everywhere), container, bits per weight of a
    256 x 256 weight, description."""
    from bitconv.layouts import get_layout, list_layouts

    return [{"name": n, "container": get_layout(n).container,
             "bits_per_weight_256x256": round(get_layout(n).bits_per_weight((256, 256)), 4),
             "description": get_layout(n).description} for n in list_layouts()]


def demo(keep: str | Path | None = None, on_step: Callable[[str], None] | None = None) -> list:
    """Build a tiny model and run quantize, pack (HF and every GGUF type), re-pack, unpack, inspect and verify on
    it; returns one `demo.DemoRow` per step (`.ok`)."""
    from bitconv.demo import run_demo

    if keep is not None and Path(keep).exists() and any(Path(keep).iterdir()):
        raise UsageError("--keep folder must be empty or new", path=keep)
    return run_demo(keep, on_step=on_step)


__all__ = ["quantize", "pack", "unpack", "inspect", "verify", "check", "convert", "upload", "layouts", "demo",
           "parse_size", "gguf_out_path", "PACK_TARGETS", "CONVERT_TARGETS"]
