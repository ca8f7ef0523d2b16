"""A GGUF's vocabulary back as transformers tokenizer files (`pack model.gguf --to hf`, `unpack model.gguf`).

The inverse of `vocab.py`:

| tokenizer.ggml.model | written                                                                                 |
|----------------------|-----------------------------------------------------------------------------------------|
| `gpt2` (BPE)         | `tokenizer.json`: byte-level BPE with the file's tokens (ids kept) and merges; CONTROL  |
|                      | tokens are special added tokens, USER_DEFINED ones plain added tokens; the split regex  |
|                      | from `tokenizer.ggml.pre` (`llama-bpe`: Llama 3's, else GPT-2's); BOS/EOS added as the  |
|                      | `add_bos/eos_token` flags say                                                           |
| `llama` (SPM)        | `tokenizer.model`: a SentencePiece BPE model with the file's pieces, scores and types   |
|                      | (byte fallback when it has `<0xNN>` pieces)                                             |

plus `tokenizer_config.json` (special tokens, `add_bos_token`, the chat template, `model_max_length`). Any other
tokenizer model (or none) gives no files: the caller warns. Nothing here imports a tokenizer library.
# ref: sentencepiece_model.proto (ModelProto 1 pieces / 2 trainer_spec / 3 normalizer_spec); tokenizers' JSON format
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable
from typing import Any

from bitconv.formats.gguf.vocab import (
    _ID_KEYS,
    BYTE,
    CONTROL,
    NORMAL,
    PRE_TOKENIZERS,
    SPECIAL_TYPES,
    UNKNOWN,
    UNUSED,
    USER_DEFINED,
)

SUPPORTED = ("gpt2", "llama")
_SPLIT = {name: regex for regex, name in PRE_TOKENIZERS.items()}


def hf_tokenizer_files(get: Callable[[str], Any], context_length: int | None = None) -> dict[str, bytes]:
    """{file name: bytes} rebuilding the tokenizer from a GGUF's `tokenizer.*` KVs (`get(key)` -> value or None);
    {} when the file holds no vocabulary of a model in `SUPPORTED`."""
    model, tokens = get("tokenizer.ggml.model"), get("tokenizer.ggml.tokens")
    if model not in SUPPORTED or not tokens:
        return {}
    tokens = [str(t) for t in tokens]
    types = [int(t) for t in (get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens))]
    special = {t: get(f"tokenizer.ggml.{_ID_KEYS.get(t, t + '_token_id')}") for t in SPECIAL_TYPES}
    special = {t: int(i) for t, i in special.items() if i is not None and 0 <= int(i) < len(tokens)}
    add_bos = get("tokenizer.ggml.add_bos_token")
    add_eos = get("tokenizer.ggml.add_eos_token")
    if model == "gpt2":
        add_bos = bool(add_bos) if add_bos is not None else False
        files = {"tokenizer.json": _json(_bpe_json(tokens, types, [str(m) for m in get("tokenizer.ggml.merges")
                                                                   or []], get("tokenizer.ggml.pre"), special,
                                                   add_bos, bool(add_eos)))}
        cls = "PreTrainedTokenizerFast"
    else:
        add_bos = bool(add_bos) if add_bos is not None else True
        scores = [float(s) for s in (get("tokenizer.ggml.scores") or [0.0] * len(tokens))]
        files = {"tokenizer.model": _spm_model(tokens, scores, types, special, get("tokenizer.ggml.add_space_prefix"))}
        cls = "LlamaTokenizer"
    config: dict[str, Any] = {
        "added_tokens_decoder": {str(i): _added(tokens[i], types[i] in (CONTROL, UNKNOWN))
                                 for i in range(len(tokens)) if types[i] in (CONTROL, USER_DEFINED, UNKNOWN)},
        "add_bos_token": add_bos, "add_eos_token": bool(add_eos),
        **{f"{t}_token": tokens[i] for t, i in special.items()},
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(context_length) if context_length else None,
        "tokenizer_class": cls,
    }
    if model == "llama":
        config |= {"legacy": False, "sp_model_kwargs": {}}
    template = get("tokenizer.chat_template")
    if template:
        config["chat_template"] = str(template)
    files["tokenizer_config.json"] = _json({k: v for k, v in config.items() if v is not None})
    return files


def _json(data: object) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _added(content: str, special: bool) -> dict:
    return {"content": content, "lstrip": False, "normalized": not special, "rstrip": False, "single_word": False,
            "special": special}


# ------------------------------------------------------------------------------------------------ BPE


def _bpe_json(tokens: list[str], types: list[int], merges: list[str], pre: Any, special: dict[str, int],
              add_bos: bool, add_eos: bool) -> dict:
    added = [{"id": i, **_added(t, types[i] == CONTROL)} for i, t in enumerate(tokens)
             if types[i] in (CONTROL, USER_DEFINED)]
    vocab = {t: i for i, t in enumerate(tokens) if types[i] not in (CONTROL, USER_DEFINED)}
    split = _SPLIT.get(str(pre)) if pre is not None else None
    pre_tok: dict = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    if split is not None and pre != "gpt-2":
        pre_tok = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": split}, "behavior": "Isolated", "invert": False},
            {**pre_tok, "use_regex": False}]}
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": pre_tok, "post_processor": _template(tokens, special, add_bos, add_eos),
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": pre == "llama-bpe",  # llama.cpp's llama-bpe: a word in the vocab is one token
                  "vocab": vocab, "merges": [m.split(" ", 1) for m in merges]},
    }


def _template(tokens: list[str], special: dict[str, int], add_bos: bool, add_eos: bool) -> dict:
    """TemplateProcessing adding BOS / EOS around each sequence as the GGUF's add_*_token flags say."""
    marks = [(t, special[t]) for t, on in (("bos", add_bos), ("eos", add_eos)) if on and t in special]

    def seq(which: str, type_id: int) -> list:
        out = [{"SpecialToken": {"id": tokens[special["bos"]], "type_id": type_id}}] if add_bos and "bos" in special \
            else []
        out.append({"Sequence": {"id": which, "type_id": type_id}})
        if add_eos and "eos" in special:
            out.append({"SpecialToken": {"id": tokens[special["eos"]], "type_id": type_id}})
        return out

    return {"type": "TemplateProcessing", "single": seq("A", 0), "pair": seq("A", 0) + seq("B", 1),
            "special_tokens": {tokens[i]: {"id": tokens[i], "ids": [i], "tokens": [tokens[i]]} for _, i in marks}}


# ------------------------------------------------------------------------------------------------ SentencePiece

_GGUF_TO_SPM = {NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6}
# Field numbers and enum values from sentencepiece_model.proto (a tiny protobuf writer: no tokenizer library).
SPM_PIECE_TYPE = {"normal": 1, "unknown": 2, "control": 3, "user_defined": 4, "unused": 5, "byte": 6}
_SPM_PIECE = {"piece": 1, "score": 2, "type": 3}
_SPM_MODEL = {"pieces": 1, "trainer_spec": 2, "normalizer_spec": 3}
_SPM_TRAINER = {"model_type": 3, "vocab_size": 4, "byte_fallback": 35, "unk_id": 40, "bos_id": 41, "eos_id": 42,
                "pad_id": 43}
_SPM_NORMALIZER = {"name": 1, "add_dummy_prefix": 3, "remove_extra_whitespaces": 4, "escape_whitespaces": 5}
_SPM_BPE = 2


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # a negative int32 is ten bytes of two's complement, as protobuf writes it
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, value: bytes | str | float | int | bool) -> bytes:
    """One protobuf field: bytes/str -> length-delimited, float -> fixed32, bool/int -> varint."""
    if isinstance(value, str):
        value = value.encode("utf-8")
    if isinstance(value, bytes):
        return _varint(number << 3 | 2) + _varint(len(value)) + value
    if isinstance(value, float):
        return _varint(number << 3 | 5) + struct.pack("<f", value)
    return _varint(number << 3) + _varint(int(value))


def _message(fields: dict[str, int], values: dict[str, object]) -> bytes:
    return b"".join(_field(fields[k], v) for k, v in values.items())


def spm_model_bytes(pieces: Iterable[tuple[str, float, int]], *, byte_fallback: bool, unk_id: int, bos_id: int,
                    eos_id: int, pad_id: int, add_dummy_prefix: bool) -> bytes:
    """A SentencePiece BPE `tokenizer.model`: `pieces` as (piece, score, SPM_PIECE_TYPE value), an identity
    normalizer that escapes whitespace."""
    pieces = list(pieces)
    body = b"".join(_field(_SPM_MODEL["pieces"], _message(_SPM_PIECE, {"piece": p, "score": float(sc), "type": ty}))
                    for p, sc, ty in pieces)
    trainer = {"model_type": _SPM_BPE, "vocab_size": len(pieces), "byte_fallback": byte_fallback, "unk_id": unk_id,
               "bos_id": bos_id, "eos_id": eos_id, "pad_id": pad_id}
    normalizer = {"name": "identity", "add_dummy_prefix": add_dummy_prefix, "remove_extra_whitespaces": False,
                  "escape_whitespaces": True}
    return (body + _field(_SPM_MODEL["trainer_spec"], _message(_SPM_TRAINER, trainer))
            + _field(_SPM_MODEL["normalizer_spec"], _message(_SPM_NORMALIZER, normalizer)))


def _spm_model(tokens: list[str], scores: list[float], types: list[int], special: dict[str, int],
               add_space_prefix: Any) -> bytes:
    return spm_model_bytes(zip(tokens, scores, (_GGUF_TO_SPM.get(ty, 1) for ty in types)),
                           byte_fallback=BYTE in types, unk_id=special.get("unk", 0),
                           bos_id=special.get("bos", -1), eos_id=special.get("eos", -1),
                           pad_id=special.get("pad", -1),
                           add_dummy_prefix=True if add_space_prefix is None else bool(add_space_prefix))
