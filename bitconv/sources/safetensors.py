"""HF-layout checkpoint folders: one `model.safetensors` or shards named by `model.safetensors.index.json`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from bitconv import quant
from bitconv.core import dtypes, naming, safeio
from bitconv.core.errors import BitconvError, SourceError
from bitconv.core.jsonio import read_json
from bitconv.core.lazytorch import torch
from bitconv.core.pickled import pickled_in, refuse_pickle
from bitconv.core.tensors import Ternary, checked_scale
from bitconv.formats.safetensors import TensorInfo, map_range, read_array, read_header, read_range
from bitconv.layouts import Layout, get_layout, hf_layouts
from bitconv.quant import Workspace, ternarize, ternarize_blocks
from bitconv.sources import validate
from bitconv.sources.checkpoint import Checkpoint, ModelTensor, load_torch

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
T = TypeVar("T")

_WS = Workspace()


def side_files(folder: Path) -> list[Path]:
    """The side files (tokenizer, licence, ...) beside the weights, each checked now: a link out of SRC, a FIFO or
    a device is refused before any work (they would be copied into OUT, and uploaded)."""
    out = []
    for name in naming.AUX_FILES:
        f = folder / name
        if safeio.exists_entry(f):
            safeio.check_input(f, cap=safeio.CAP_SIDE_FILE)
            out.append(f)
    return out


def _load_scratch(info: TensorInfo) -> torch.Tensor:
    """A tensor for data consumed at once (ternarization): a private map of the file range (no copy; unmapped when
    the tensor is dropped), or, where the file cannot be mapped, a read into a reused buffer valid until the next
    call."""
    mapped = _map(info)
    if mapped is not None:
        return dtypes.from_numpy_storage(mapped, info.dtype).reshape(info.shape)
    buf = _WS.get("raw", info.nbytes, torch.uint8).numpy()
    arr = read_array(info, out=buf)
    return dtypes.from_numpy_storage(arr, info.dtype).reshape(info.shape)


def storage_block_reader(info: TensorInfo) -> Callable[[int, int], np.ndarray]:
    """Reads elements [start, start + count) of a stored tensor as its numpy storage (BF16 as uint16 bits; valid
    until the next call), without torch: a private map of that block alone (read in place; unmapped when dropped, so
    a big tensor never grows the RSS by more than a block), or, where the file cannot be mapped, a copy into a
    buffer reused from call to call."""
    d = dtypes.DTYPES[info.dtype]
    scratch = np.empty(0, dtype=np.uint8)

    def buffer(n: int) -> np.ndarray:
        nonlocal scratch
        if scratch.size < n:
            scratch = np.empty(0, dtype=np.uint8)  # free the old one first
            scratch = np.empty(n, dtype=np.uint8)
        return scratch[:n]

    def read(start: int, count: int) -> np.ndarray:
        return read_range(info.path, info.offset + start * d.itemsize, count * d.itemsize, buffer,
                          info.name).view(d.np_storage)

    return read


def block_reader(info: TensorInfo) -> quant.BlockReader:
    """`storage_block_reader` of a stored float tensor, as torch tensors of its dtype."""
    read = storage_block_reader(info)
    return lambda start, count: dtypes.from_numpy_storage(read(start, count), info.dtype)


def ternarize_stored(info: TensorInfo, compute: str) -> Ternary:
    """Ternarize a stored float weight: big ones a block at a time (`quant.ternarize_blocks`), others whole; a bf16
    one in the float32 recipe straight from its bits where the C kernels run it (`quant.ternarize_bf16_bits`: no
    torch tensor, and no torch import where its reduction order is cached; big ones from one block at a time,
    `quant.ternarize_bf16_stream`)."""
    shape = tuple(info.shape)
    if compute == "float32" and info.dtype == "BF16" and quant.native_kernels():
        if info.numel > quant.STREAM_MIN_ELEMS:
            got = with_file(info.path, quant.ternarize_bf16_stream, storage_block_reader(info), shape, info.name)
        else:
            bits = _map(info)
            bits = read_array(info) if bits is None else bits  # a file that cannot be mapped: read whole
            got = with_file(info.path, quant.ternarize_bf16_bits, bits, shape, info.name)
        if got is not None:
            return got
    if info.numel > quant.STREAM_MIN_ELEMS:
        got = with_file(info.path, ternarize_blocks, block_reader(info), info.shape, name=info.name, compute=compute)
        if got is not None:
            return got
    return with_file(info.path, ternarize, _load_scratch(info), compute, name=info.name)


def _map(info: TensorInfo) -> np.ndarray | None:
    # The header reader has checked that the range lies inside the file; `map_range` checks it still does.
    raw = map_range(info.path, info.offset, info.nbytes, info.name)
    return None if raw is None else raw.view(dtypes.DTYPES[info.dtype].np_storage)


def collect_stored(folder: Path) -> tuple[dict[str, TensorInfo], list[Path]]:
    """Every stored tensor of the folder, cross-checked against the index when there is one."""
    index_path, single = folder / INDEX, folder / SINGLE
    if safeio.exists_entry(index_path):
        return _collect_indexed(folder, index_path)
    if safeio.exists_entry(single):
        infos, _ = read_header(single)
        return infos, [single]
    others = sorted(folder.glob("*.safetensors"))
    if len(others) == 1:
        infos, _ = read_header(others[0])
        return infos, others
    if others:
        raise SourceError(f"{len(others)} .safetensors files but no {INDEX} to say how they fit together",
                          path=folder)
    pickled = pickled_in(folder)
    if pickled:
        raise refuse_pickle(pickled[0])
    raise SourceError(f"no weights: neither {SINGLE} nor {INDEX}", path=folder)


def _collect_indexed(folder: Path, index_path: Path) -> tuple[dict[str, TensorInfo], list[Path]]:
    index = read_json(index_path, "index", safeio.CAP_INDEX)
    wmap = index.get("weight_map")
    if not isinstance(wmap, dict) or not wmap:
        raise SourceError("index has no weight_map", path=index_path)
    shards: dict[str, list[str]] = {}
    for tensor, shard in wmap.items():
        if not isinstance(shard, str) or Path(shard).name != shard or shard in ("", ".", ".."):
            raise SourceError(f"index maps {tensor!r} to {shard!r}, which is not a file name in this folder",
                              path=index_path)
        shards.setdefault(shard, []).append(tensor)
    infos: dict[str, TensorInfo] = {}
    files = []
    for shard, names in sorted(shards.items()):
        spath = folder / shard
        if not safeio.exists_entry(spath):
            raise SourceError(f"index names shard {shard!r} ({len(names)} tensors) but the file is missing",
                              path=index_path, hint="download the missing shard")
        got, _ = read_header(spath)
        extra = sorted(set(got) - set(names))
        twice = [n for n in extra if n in wmap]
        if twice:
            raise SourceError(f"duplicate tensor {twice[0]!r}: stored in this shard and in {wmap[twice[0]]!r}, "
                              "which the index names", path=spath, hint="the shards come from different "
                              "checkpoints or a partial re-save")
        if extra:
            raise SourceError(f"shard holds {len(extra)} tensor(s) the index does not list, e.g. {extra[0]!r}",
                              path=spath, hint="the index and the shards are from different checkpoints")
        missing = sorted(set(names) - set(got))
        if missing:
            raise SourceError(f"index lists {missing[0]!r} in this shard but the shard does not hold it "
                              f"({len(missing)} missing)", path=spath)
        infos.update(got)
        files.append(spath)
    return infos, files


def open_safetensors_dir(folder: Path, compute: str = "float32") -> Checkpoint:
    """`compute`: the arithmetic a master's weights are ternarized in (checked by `open_source`)."""
    ck = _open_dir(folder, compute)
    validate.check_config(ck.config, ck.tensors, folder / "config.json")
    return ck


def with_file(path: Path, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
    """`fn(*args, **kwargs)`; an error that names no file (NaN weights, a corrupt packed code) gets `path`."""
    try:
        return fn(*args, **kwargs)
    except BitconvError as e:
        if e.path is not None:
            raise
        raise type(e)(str(e), path=path) from None  # keeps the class: a content fault stays a FormatError


def _open_dir(folder: Path, compute: str) -> Checkpoint:
    config = read_json(folder / "config.json", "config.json")
    stored, files = collect_stored(folder)
    aux = side_files(folder)
    bitconv_meta = config.get("bitconv") if isinstance(config.get("bitconv"), dict) else None
    if bitconv_meta and bitconv_meta.get("format") == "ternary":
        tensors = _logical_ternary(folder, stored)
        return Checkpoint(folder, "bitconv-ternary", config, tensors, aux, files, layout="bitconv-ternary",
                          compute=bitconv_meta.get("compute"))
    proj = [t for n, t in stored.items() if naming.is_ternary(n, len(t.shape))]
    if not proj:
        raise SourceError("no ternary projection weights found (expected names ending in "
                          "q_proj.weight ... down_proj.weight)", path=folder)
    if any(t.dtype == "U8" for t in proj):
        qc = config.get("quantization_config") or {}
        linear_class = qc.get("linear_class", "bitlinear") if isinstance(qc, dict) else "bitlinear"
        if linear_class not in hf_layouts():
            raise SourceError(f"quantization_config.linear_class {linear_class!r} is not one of "
                              f"{sorted(hf_layouts())}", path=folder / "config.json")
        tensors = _logical_packed(folder, stored, get_layout(hf_layouts()[linear_class]))
        return Checkpoint(folder, "hf-packed", config, tensors, aux, files, layout=hf_layouts()[linear_class])
    return Checkpoint(folder, "bf16-master", config, _logical_master(folder, stored, compute), aux, files,
                      quant_compute=compute)


def _check_dtype(info: TensorInfo, allowed: tuple[str, ...], what: str) -> None:
    if info.dtype not in allowed:
        raise SourceError(f"{what} must be {'/'.join(allowed)}, found {info.dtype}", path=info.path,
                          tensor=info.name, shape=info.shape)


def _logical_master(folder: Path, stored: dict[str, TensorInfo], compute: str) -> dict[str, ModelTensor]:
    out = {}
    for name, info in sorted(stored.items()):
        if name.endswith(".weight_scale") and naming.is_ternary(name.removesuffix("_scale"), 2):
            raise SourceError("a bf16 master stores a weight_scale for this projection: the checkpoint mixes master "
                              "and quantized tensors", path=info.path, tensor=name,
                              hint="a master holds only float projection weights; remove the scale or use the "
                              "packed checkpoint it came from")
        if naming.is_ternary(name, len(info.shape)):
            _check_dtype(info, ("BF16", "F16", "F32"), "a master projection weight")

            def load(compute: str, info: TensorInfo = info) -> Ternary:
                return ternarize_stored(info, compute)

            out[name] = ModelTensor(name, info.shape, info.dtype, [info], load, compute=compute)
        else:
            out[name] = ModelTensor(name, info.shape, info.dtype, [info])
    return out


def _scale_info(stored: dict[str, TensorInfo], name: str, folder: Path) -> TensorInfo:
    key = naming.module_of(name) + ".weight_scale"
    info = stored.get(key)
    if info is None:
        raise SourceError(f"ternary weight {name!r} has no {key!r}", path=stored[name].path)
    if info.numel != 1:
        raise SourceError("weight_scale must hold one value (per-tensor scale)", path=info.path, tensor=key,
                          shape=info.shape)
    _check_dtype(info, ("BF16", "F16", "F32"), "weight_scale")
    return info


def _scalar(info: TensorInfo) -> np.float32:
    """The one value of a stored weight_scale; NaN, ±Inf, 0 or negative is refused naming the tensor."""
    return checked_scale(load_torch(info).float().reshape(-1)[0].item(), tensor=info.name, path=info.path)


def _unpack(layout: Layout, info: TensorInfo, weight: np.ndarray, sinfo: TensorInfo,
            shape: tuple[int, ...]) -> Ternary:
    """Decode one stored weight through its layout's `unpack` (the format's one decoder; it owns the 1/scale of
    `bitlinear` and refuses codes the format cannot hold). The scale is checked first (`checked_scale`)."""
    fields = {"weight": weight, "weight_scale": np.array([_scalar(sinfo)], dtype=np.float32)}
    return with_file(info.path, layout.unpack, fields, shape, tensor=info.name)


def _logical_packed(folder: Path, stored: dict[str, TensorInfo], layout: Layout) -> dict[str, ModelTensor]:
    out, scales = {}, set()
    for name, info in sorted(stored.items()):
        if naming.is_ternary(name, len(info.shape)):
            _check_dtype(info, ("U8",), "a packed projection weight")
            sinfo = _scale_info(stored, name, folder)
            scales.add(sinfo.name)
            shape = (info.shape[0] * 4, info.shape[1])

            def load(info: TensorInfo = info, sinfo: TensorInfo = sinfo, shape: tuple[int, int] = shape) -> Ternary:
                return _unpack(layout, info, _load_scratch(info).numpy(), sinfo, shape)

            out[name] = ModelTensor(name, shape, "U8", [info, sinfo], load)
    for name, info in sorted(stored.items()):
        if name not in out and name not in scales:
            out[name] = ModelTensor(name, info.shape, info.dtype, [info])
    return out


def _logical_ternary(folder: Path, stored: dict[str, TensorInfo]) -> dict[str, ModelTensor]:
    out, scales, layout = {}, set(), get_layout("bitconv-ternary")
    for name, info in sorted(stored.items()):
        if naming.is_ternary(name, len(info.shape)):
            _check_dtype(info, ("I8",), "a bitconv ternary weight")
            sinfo = _scale_info(stored, name, folder)
            scales.add(sinfo.name)

            def load(info: TensorInfo = info, sinfo: TensorInfo = sinfo) -> Ternary:
                return _unpack(layout, info, read_array(info), sinfo, info.shape)

            out[name] = ModelTensor(name, info.shape, "I8", [info, sinfo], load)
    for name, info in sorted(stored.items()):
        if name not in out and name not in scales:
            out[name] = ModelTensor(name, info.shape, info.dtype, [info])
    return out
