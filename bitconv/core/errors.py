"""Errors a user can trigger. Each carries one line that names the file, the tensor, the rule and the fix.

The CLI maps every `BitconvError` to its message and `exit_code`; nothing else is shown unless `BITCONV_DEBUG=1`.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_VERIFY_FAILED = 1
EXIT_BAD_INPUT = 2


class BitconvError(Exception):
    """Base class: a problem with the user's input or request, reported as one line."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, *, path: object | None = None, tensor: str | None = None,
                 shape: tuple[int, ...] | None = None, hint: str | None = None) -> None:
        self.path, self.tensor, self.shape, self.hint = path, tensor, shape, hint
        parts = []
        if path is not None:
            parts.append(str(path))
        if tensor is not None:
            parts.append(f"tensor {tensor!r}" + (f" shape {list(shape)}" if shape is not None else ""))
        head = ": ".join(parts)
        line = f"{head}: {message}" if head else message
        if hint:
            line = f"{line} ({hint})"
        super().__init__(line)


class SourceError(BitconvError):
    """An input checkpoint is missing, corrupt, truncated or inconsistent."""


class FormatError(SourceError):
    """A file's content breaks its format's rules: what the real loader refuses (safetensors, ggml's gguf.cpp), or
    values no ternary format holds (a code outside {-1, 0, 1}, a non-finite or non-positive scale).

    As the input of a conversion it is bad input (exit 2). As the OUT of `verify` / `check` it is what verification
    exists to find: a verification failure (exit 1) naming the file and tensor.
    """


class LayoutError(BitconvError):
    """A tensor's shape cannot be held by the requested layout, or the layout name is unknown."""


class OutputError(BitconvError):
    """The output path cannot be written (exists without --overwrite, no space, ...)."""


class UsageError(BitconvError):
    """Options that do not fit together."""
