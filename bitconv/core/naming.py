"""Which tensors are ternary, which files travel with a checkpoint, and the model families bitconv knows."""

from __future__ import annotations

# The seven projections BitNet b1.58 ternarizes; everything else (embeddings, lm_head, every norm) passes through.
# ref: llama.cpp conversion/bitnet.py; spec README convention 3
TERNARY_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_SUFFIXES = tuple(f".{p}.weight" for p in TERNARY_PROJECTIONS)

# [out_features, in_features] of each projection module of a layer, in config sizes: "q" = num_attention_heads x
# head_dim rows, "kv" = num_key_value_heads x head_dim rows. The one table of projection shapes (config checks use
# it when a source is opened, `bitconv check` when it audits a checkpoint).
PROJECTION_SHAPES: dict[str, tuple[str, str]] = {
    "self_attn.q_proj": ("q", "hidden_size"),
    "self_attn.k_proj": ("kv", "hidden_size"),
    "self_attn.v_proj": ("kv", "hidden_size"),
    "self_attn.o_proj": ("hidden_size", "q"),
    "mlp.gate_proj": ("intermediate_size", "hidden_size"),
    "mlp.up_proj": ("intermediate_size", "hidden_size"),
    "mlp.down_proj": ("hidden_size", "intermediate_size"),
}

# Files copied next to the weights of every HF-layout output (tokenizer, generation settings, licence).
AUX_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
             "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
             "generation_config.json", "LICENSE", "LICENSE.txt", "NOTICE")

# architectures[0] -> (family id, human description). # ref: spec hf-packed.md §3.3-3.4, golden gguf-i2s input
FAMILIES = {
    "BitNetForCausalLM": ("bitnet-2b4t", "BitNet b1.58 2B4T (transformers BitNetForCausalLM)"),
    "LlamaForCausalLM": ("llama-bitnet", "Llama-architecture ternary model (HF1BitLLM / Falcon-E)"),
    "BitnetForCausalLM": ("1bitllm", "1bitLLM BitnetForCausalLM (remote code)"),
}


def is_ternary(name: str, ndim: int = 2) -> bool:
    """True for the `.weight` of one of the seven projections (2-D)."""
    return ndim == 2 and name.endswith(_SUFFIXES)


def module_of(weight_name: str) -> str:
    """`model.layers.0.self_attn.q_proj.weight` -> `model.layers.0.self_attn.q_proj`."""
    return weight_name[: -len(".weight")]


def family(config: dict) -> tuple[str, str]:
    arch = (config.get("architectures") or ["?"])[0]
    return FAMILIES.get(arch, ("unknown", f"unknown architecture {arch!r}"))
