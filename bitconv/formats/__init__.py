"""Container formats, bytes on disk only: safetensors (`safetensors`), GGUF (`gguf/`), Nanotron (`nanotron/`).

Formats know nothing of ternary layouts, sources or outputs; they import only `bitconv.core`.
"""
