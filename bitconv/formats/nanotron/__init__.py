"""Nanotron checkpoints (spec `../shared/spec/nanotron.md`): static facts and config YAML.

    bitconv.formats.nanotron.format    names, shardings, slice strings, config field sets, RoPE permutation (pure)
    bitconv.formats.nanotron.yamlish   the block-YAML subset nanotron's config.yaml uses (writer and reader)

The reader is `bitconv.sources.nanotron.open_nanotron` (`bitconv.sources.open_source` dispatches to it); the
HF <-> Nanotron conversion (`to_hf`, `to_nanotron`) is `bitconv.sinks.nanotron`.
"""
