"""Tests for bitconv.tiny: the deterministic tiny bf16 master checkpoints used as fixtures."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from bitconv.tiny import ARCHS, VARIANTS, make_tiny

REPO_ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(os.environ.get("BITCONV_GOLDEN", REPO_ROOT / "fixtures" / "golden"))
TEXTS = ["Hello world! The converter writes 3 layouts: I2_S, TL1 & TQ2_0.", "the model reads a list of numbers",
         "tabs\tand\nnew lines, ünïcode ✓ and 12345"]

# Expected per-layer tensors at the default sizes (H 256, I 768, head_dim 64), written out independently of tiny.py.
H, I, V = 256, 768, 512  # noqa: E741 (the usual size names)
ATTN_MLP = {
    "self_attn.q_proj.weight": [H, H],
    "self_attn.o_proj.weight": [H, H],
    "mlp.gate_proj.weight": [I, H],
    "mlp.up_proj.weight": [I, H],
    "mlp.down_proj.weight": [H, I],
    "input_layernorm.weight": [H],
    "post_attention_layernorm.weight": [H],
}
LAYER = {
    "bitnet-2b4t": {**ATTN_MLP, "self_attn.k_proj.weight": [128, H], "self_attn.v_proj.weight": [128, H],
                    "self_attn.attn_sub_norm.weight": [H], "mlp.ffn_sub_norm.weight": [I]},
    "llama-bitnet": {**ATTN_MLP, "self_attn.k_proj.weight": [128, H], "self_attn.v_proj.weight": [128, H]},
    "1bitllm": {**ATTN_MLP, "self_attn.k_proj.weight": [H, H], "self_attn.v_proj.weight": [H, H],
                "self_attn.inner_attn_ln.weight": [H], "mlp.ffn_layernorm.weight": [I]},
}
DEFAULT_TIED = {"bitnet-2b4t": True, "llama-bitnet": False, "1bitllm": True}
TRANSFORMERS_VARIANTS = [v for v, kw in VARIANTS.items() if kw["arch"] != "1bitllm"]  # 1bitllm needs remote code

# Golden reference inputs that make_tiny reproduces: case -> (make_tiny kwargs, files that must be byte-identical).
GOLDEN_CASES = {
    "hf-packed": (dict(arch="bitnet-2b4t", seed=1001, hidden_size=128, intermediate_size=384, num_layers=2,
                       num_heads=4, num_kv_heads=2, vocab_size=512), ["model.safetensors"]),
    "gguf-i2s": (dict(arch="1bitllm", seed=1101, hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4,
                      num_kv_heads=4, vocab_size=320), ["model.safetensors", "config.json"]),
    "gguf-tl": (dict(arch="1bitllm", seed=1201, hidden_size=256, intermediate_size=512, num_layers=1, num_heads=4,
                     num_kv_heads=4, vocab_size=320), ["model.safetensors", "config.json"]),
    "gguf-tq": (dict(arch="1bitllm", seed=1301, hidden_size=256, intermediate_size=256, num_layers=2, num_heads=4,
                     num_kv_heads=4, vocab_size=320), ["model.safetensors", "config.json"]),
}


def expected_tensors(arch: str, tied: bool, n_layers: int = 2) -> dict[str, list[int]]:
    top = {"model.embed_tokens.weight": [V, H], "model.norm.weight": [H]}
    layers = {f"model.layers.{i}.{k}": s for i in range(n_layers) for k, s in LAYER[arch].items()}
    return {**top, **layers, **({} if tied else {"lm_head.weight": [V, H]})}


def read_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(path, "pt") as f:
            assert f.metadata() == {"format": "pt"}
            tensors.update({k: f.get_tensor(k) for k in f.keys()})
    return tensors


def digests(model_dir: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(model_dir.iterdir())}


def load_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def fixtures_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    for name, kwargs in VARIANTS.items():
        make_tiny(root / name, **kwargs)
    return root


@pytest.fixture
def no_dynamo():
    """transformers' BitNet quantizers are torch.compile'd; compiling them costs ~25 s on CPU, eager is enough here."""
    with torch._dynamo.config.patch(disable=True):
        yield


def test_same_arguments_give_identical_bytes(fixtures_dir, tmp_path):
    for name, kwargs in VARIANTS.items():
        assert digests(make_tiny(tmp_path / name, **kwargs)) == digests(fixtures_dir / name), name


def test_seed_changes_weights_only(fixtures_dir, tmp_path):
    other = make_tiny(tmp_path / "x", "bitnet-2b4t", seed=ARCHS["bitnet-2b4t"].seed + 1)
    a, b = digests(fixtures_dir / "bitnet-2b4t"), digests(other)
    assert [k for k in a if a[k] != b[k]] == ["model.safetensors"]


@pytest.mark.parametrize("variant", [v for v in VARIANTS if not v.endswith("sharded")])
def test_tensor_names_shapes_dtypes(fixtures_dir, variant):
    arch, tied = VARIANTS[variant]["arch"], VARIANTS[variant].get("tied", DEFAULT_TIED[VARIANTS[variant]["arch"]])
    tensors = read_tensors(fixtures_dir / variant)
    assert {k: list(t.shape) for k, t in tensors.items()} == expected_tensors(arch, tied)
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    assert I & (I - 1) != 0  # intermediate is deliberately not a power of two
    cfg = load_json(fixtures_dir / variant / "config.json")
    assert cfg["tie_word_embeddings"] is tied
    assert cfg["num_attention_heads"] // cfg["num_key_value_heads"] == (1 if arch == "1bitllm" else 2)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_untied_adds_lm_head_and_keeps_other_tensors(tmp_path, arch):
    tied = read_tensors(make_tiny(tmp_path / "tied", arch, tied=True))
    untied = read_tensors(make_tiny(tmp_path / "untied", arch, tied=False))
    assert set(untied) - set(tied) == {"lm_head.weight"}
    assert all(torch.equal(tied[k], untied[k]) for k in tied)


def test_init_statistics(fixtures_dir):
    tensors = {k: t.float() for k, t in read_tensors(fixtures_dir / "bitnet-2b4t").items()}
    assert tensors["model.embed_tokens.weight"].std().item() == pytest.approx(0.5, rel=0.05)
    assert tensors["model.layers.0.mlp.up_proj.weight"].std().item() == pytest.approx(0.02, rel=0.05)
    assert tensors["model.layers.0.mlp.ffn_sub_norm.weight"].mean().item() == pytest.approx(1.0, abs=0.05)


def test_configs(fixtures_dir):
    cfg = {a: load_json(fixtures_dir / a / "config.json") for a in ARCHS}
    assert (cfg["bitnet-2b4t"]["architectures"], cfg["bitnet-2b4t"]["model_type"]) == (["BitNetForCausalLM"], "bitnet")
    assert cfg["bitnet-2b4t"]["hidden_act"] == "relu2" and "quantization_config" not in cfg["bitnet-2b4t"]
    assert cfg["llama-bitnet"]["quantization_config"] == {
        "quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"}
    assert cfg["llama-bitnet"]["head_dim"] == 64
    assert (cfg["1bitllm"]["architectures"], cfg["1bitllm"]["model_type"]) == (["BitnetForCausalLM"], "llama")
    assert [c["rope_theta"] for c in cfg.values()] == [500000.0, 500000.0, 10000.0]
    for arch, c in cfg.items():
        assert (c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]) == (H, I, 2, V)
        gen = load_json(fixtures_dir / arch / "generation_config.json")
        assert gen["bos_token_id"] == c["bos_token_id"] and "transformers_version" not in gen


def test_sharded_index(fixtures_dir):
    model_dir = fixtures_dir / "bitnet-2b4t-sharded"
    index = load_json(model_dir / "model.safetensors.index.json")
    shards = sorted(p.name for p in model_dir.glob("*.safetensors"))
    assert "model.safetensors" not in shards and len(shards) > 1
    assert shards == [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    assert sorted(set(index["weight_map"].values())) == shards
    for shard in shards:
        with safe_open(model_dir / shard, "pt") as f:
            assert sorted(f.keys()) == sorted(k for k, v in index["weight_map"].items() if v == shard)
    tensors = read_tensors(model_dir)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    assert index["metadata"]["total_parameters"] == sum(t.numel() for t in tensors.values())
    whole = read_tensors(fixtures_dir / "bitnet-2b4t")
    assert set(whole) == set(tensors) and all(torch.equal(whole[k], tensors[k]) for k in whole)


def test_small_total_is_not_sharded(tmp_path):
    out = make_tiny(tmp_path / "m", "1bitllm", max_shard_bytes=1 << 30)
    assert (out / "model.safetensors").exists() and not (out / "model.safetensors.index.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("variant", TRANSFORMERS_VARIANTS)
def test_transformers_loads_and_runs(fixtures_dir, no_dynamo, variant):
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(
        fixtures_dir / variant, dtype=torch.bfloat16, attn_implementation="eager", output_loading_info=True)
    assert info["missing_keys"] == info["unexpected_keys"] == set() and not info["mismatched_keys"]
    assert not info["error_msgs"]
    cfg = load_json(fixtures_dir / variant / "config.json")
    with torch.no_grad():
        logits = model(torch.tensor([[cfg["bos_token_id"], 5, 9, 300]])).logits
    assert logits.shape == (1, 4, V) and torch.isfinite(logits).all()
    if cfg["tie_word_embeddings"]:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    linear = "AutoBitLinear" if "quantization_config" in cfg else "Linear"  # online ternarization for llama-bitnet
    assert type(model.model.layers[0].mlp.down_proj).__name__ == linear


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["bitnet-2b4t", "llama-bitnet"])
def test_byte_level_tokenizer(fixtures_dir, arch):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    model_dir = fixtures_dir / arch
    cfg = load_json(model_dir / "config.json")
    raw = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(model_dir)
    assert raw.get_vocab_size() <= cfg["vocab_size"] and len(auto) <= cfg["vocab_size"]
    assert raw.id_to_token(cfg["bos_token_id"]) == "<|begin_of_text|>"
    assert raw.id_to_token(cfg["eos_token_id"]) == "<|end_of_text|>"
    assert len(load_json(model_dir / "tokenizer.json")["model"]["merges"]) >= 200
    for text in TEXTS:
        ids = raw.encode(text).ids
        assert ids[0] == cfg["bos_token_id"] and len(ids) < len(text.encode())  # merges are used
        assert raw.decode(ids, skip_special_tokens=True) == text
        assert auto(text)["input_ids"] == ids
        assert auto.decode(ids, skip_special_tokens=True) == text
    chat = auto.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat.startswith("<|begin_of_text|><|start_header_id|>user")


@pytest.mark.slow
def test_sentencepiece_tokenizer(fixtures_dir):
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb
    from transformers import AutoTokenizer

    model_dir = fixtures_dir / "1bitllm"
    cfg = load_json(model_dir / "config.json")
    sp = spm.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model"))
    assert sp.vocab_size() <= cfg["vocab_size"]
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, cfg["bos_token_id"], cfg["eos_token_id"], -1)
    assert [sp.id_to_piece(i) for i in (0, 1, 2, 3, 258)] == ["<unk>", "<s>", "</s>", "<0x00>", "<0xFF>"]
    assert all(sp.is_byte(i) for i in range(3, 259)) and sp.is_control(1) and sp.is_unknown(0)
    proto = pb.ModelProto()
    proto.ParseFromString((model_dir / "tokenizer.model").read_bytes())
    assert proto.trainer_spec.model_type == pb.TrainerSpec.BPE and proto.trainer_spec.byte_fallback
    assert proto.normalizer_spec.add_dummy_prefix and not proto.normalizer_spec.remove_extra_whitespaces
    auto = AutoTokenizer.from_pretrained(model_dir)
    for text in TEXTS:
        ids = sp.encode(text)
        assert sp.decode(ids) == text and len(ids) < len(text.encode())
        assert auto(text)["input_ids"] == [sp.bos_id(), *ids]
        assert auto.decode(auto(text)["input_ids"], skip_special_tokens=True) == text


def test_rejects_bad_arguments(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(FileExistsError):
        make_tiny(tmp_path / "full")
    with pytest.raises(ValueError, match="unknown arch"):
        make_tiny(tmp_path / "a", "gpt2")
    with pytest.raises(ValueError, match="num_kv_heads"):
        make_tiny(tmp_path / "b", num_heads=4, num_kv_heads=3)
    for arch in ARCHS:
        with pytest.raises(ValueError, match="vocab_size"):
            make_tiny(tmp_path / arch, arch, vocab_size=200)
        assert not (tmp_path / arch).exists()  # nothing is written when the arguments are refused


@pytest.mark.parametrize("case", list(GOLDEN_CASES))
def test_reproduces_golden_inputs(tmp_path, case):
    golden = GOLDEN / case / "input"
    if not golden.is_dir():
        pytest.skip(f"golden case {golden} not available")
    kwargs, files = GOLDEN_CASES[case]
    out = make_tiny(tmp_path / "input", **kwargs)
    for name in files:
        assert (out / name).read_bytes() == (golden / name).read_bytes(), name


@pytest.mark.slow
def test_cli_writes_variants(tmp_path):
    subprocess.run([sys.executable, "fixtures/generate.py", str(tmp_path), "--arch", "1bitllm"], cwd=REPO_ROOT,
                   check=True, capture_output=True)
    expected = sorted(n for n, kw in VARIANTS.items() if kw["arch"] == "1bitllm")
    assert sorted(p.name for p in tmp_path.iterdir()) == expected
