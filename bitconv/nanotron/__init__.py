"""Nanotron checkpoints (spec `../shared/spec/nanotron.md`): static facts, config YAML, HF <-> Nanotron conversion.

    bitconv.nanotron.format    names, shardings, slice strings, config field sets, RoPE permutation (pure)
    bitconv.nanotron.yamlish   the block-YAML subset nanotron's config.yaml uses (writer and reader)
    bitconv.nanotron.convert   `to_hf` (Nanotron -> HF bf16 master) and `to_nanotron` (any source -> Nanotron)

The reader is `bitconv.sources.nanotron.open_nanotron`; `bitconv.sources.open_source` dispatches to it.
"""
