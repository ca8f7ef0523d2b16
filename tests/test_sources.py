"""The lazy safetensors source: single files, sharded checkpoints, and every broken input as a one-line error."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from bitconv import pipeline
from bitconv.errors import SourceError
from bitconv.safetensors_io import read_header
from bitconv.sources import open_source


def test_kinds_are_detected(models, tmp_path, golden_hf):
    assert open_source(models("bitnet-2b4t")).kind == "bf16-master"
    pipeline.quantize(models("bitnet-2b4t"), tmp_path / "t")
    t = open_source(tmp_path / "t")
    assert (t.kind, t.layout, t.compute) == ("bitconv-ternary", "bitconv-ternary", "float32")
    for d, layout in (("packed-bitlinear", "hf-bitlinear"), ("packed-autobitlinear-offline", "hf-autobitlinear")):
        ck = open_source(golden_hf / d)
        assert (ck.kind, ck.layout) == ("hf-packed", layout)
        assert ck.tensors["model.layers.0.mlp.gate_proj.weight"].shape == (384, 128)


def test_sharded_source_gives_identical_output(models, tmp_path):
    single = models("bitnet-2b4t", tied=False)
    sharded = models("bitnet-2b4t", tied=False, max_shard_bytes=400_000)
    assert (sharded / "model.safetensors.index.json").exists()
    pipeline.pack_hf(single, tmp_path / "a")
    pipeline.pack_hf(sharded, tmp_path / "b")
    assert (tmp_path / "a/model.safetensors").read_bytes() == (tmp_path / "b/model.safetensors").read_bytes()


def test_one_tensor_resident_reads_only_what_is_asked(models):
    ck = open_source(models("bitnet-2b4t"))
    # opening reads headers only: no tensor has been materialized, every one is a loader
    t = ck.tensors["model.layers.1.mlp.down_proj.weight"]
    assert t.is_ternary and t.shape == (256, 768)
    assert t.ternary().codes.shape == (256, 768)


# --------------------------------------------------------------------------------------------- broken inputs


@pytest.fixture
def sharded(models, copy_dir):
    return copy_dir(models("bitnet-2b4t", max_shard_bytes=400_000), "sharded")


def error_of(path: Path) -> str:
    with pytest.raises(SourceError) as e:
        open_source(path)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def shards_of(folder: Path) -> list[Path]:
    return sorted(folder.glob("model-*.safetensors"))


def test_index_names_missing_shard(sharded):
    victim = shards_of(sharded)[1]
    victim.unlink()
    msg = error_of(sharded)
    assert "model.safetensors.index.json" in msg and victim.name in msg and "missing" in msg


def test_shard_holds_tensor_index_does_not_list(sharded):
    index_path = sharded / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    dropped = sorted(index["weight_map"])[0]
    del index["weight_map"][dropped]
    index_path.write_text(json.dumps(index))
    msg = error_of(sharded)
    assert dropped in msg and "does not list" in msg


def test_index_lists_tensor_shard_lacks(sharded):
    index_path = sharded / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["model.layers.9.mlp.up_proj.weight"] = shards_of(sharded)[0].name
    index_path.write_text(json.dumps(index))
    assert "model.layers.9.mlp.up_proj.weight" in error_of(sharded)


@pytest.mark.parametrize("target", ["../outside.safetensors", "/etc/passwd", "sub/model.safetensors"])
def test_index_path_traversal_refused(sharded, target):
    index_path = sharded / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"][sorted(index["weight_map"])[0]] = target
    index_path.write_text(json.dumps(index))
    assert "not a file name in this folder" in error_of(sharded)


def test_corrupt_index_json(sharded):
    (sharded / "model.safetensors.index.json").write_text("{not json")
    assert "index is not valid JSON" in error_of(sharded)


def rewrite_header(path: Path, mutate) -> None:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    head = json.loads(raw[8:8 + n])
    mutate(head)
    new = json.dumps(head).encode()
    new += b" " * (-len(new) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])


@pytest.fixture
def single(models, copy_dir):
    return copy_dir(models("bitnet-2b4t"), "single")


CORRUPTIONS = {
    "truncated_to_4_bytes": (lambda p: p.write_bytes(p.read_bytes()[:4]), "header length is missing"),
    "header_longer_than_file": (lambda p: p.write_bytes(struct.pack("<Q", 10**6) + b"{}"), "declares 1000000"),
    "header_not_json": (lambda p: p.write_bytes(struct.pack("<Q", 8) + b"{oops!!}"), "not valid JSON"),
    "truncated_data": (lambda p: p.write_bytes(p.read_bytes()[:-1000]), "truncated file"),
    "unknown_dtype": (lambda p: rewrite_header(p, lambda h: h["model.norm.weight"].update(dtype="F4")),
                      "unknown dtype 'F4'"),
    "shape_size_mismatch": (lambda p: rewrite_header(p, lambda h: h["model.norm.weight"].update(shape=[999])),
                            "needs 1998"),
    "overlapping": (lambda p: rewrite_header(p, lambda h: h["model.norm.weight"].update(
        data_offsets=h["model.embed_tokens.weight"]["data_offsets"][:1] * 1 + [
            h["model.embed_tokens.weight"]["data_offsets"][0] + 512])), "overlaps"),
}


@pytest.mark.parametrize("case", CORRUPTIONS)
def test_corrupt_safetensors(single, case):
    mutate, expected = CORRUPTIONS[case]
    mutate(single / "model.safetensors")
    msg = error_of(single)
    assert "model.safetensors" in msg and expected in msg, msg


def test_missing_config(single):
    (single / "config.json").unlink()
    assert "config.json is missing" in error_of(single)


def test_missing_folder(tmp_path):
    assert "no such file or folder" in error_of(tmp_path / "nope")


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert "no weights" in error_of(tmp_path)


def test_no_projection_weights(tmp_path):
    from safetensors.numpy import save_file

    save_file({"model.norm.weight": np.ones(4, dtype=np.float32)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text("{}")
    assert "no ternary projection weights" in error_of(tmp_path)


def test_header_reader_limits_allocation(tmp_path):
    p = tmp_path / "huge.safetensors"
    head = json.dumps({"x": {"dtype": "F32", "shape": [10**12, 10**6], "data_offsets": [0, 4]}}).encode()
    p.write_bytes(struct.pack("<Q", len(head)) + head + b"\0" * 4)
    with pytest.raises(SourceError, match="needs 4000000000000000000$"):
        read_header(p)
