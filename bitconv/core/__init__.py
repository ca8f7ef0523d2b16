"""The bottom layer: errors, dtypes, tensors, naming, JSON side files, pickle refusal, allocator tuning.

Nothing here imports another bitconv package (see tests/test_architecture.py for the layer table).
"""
