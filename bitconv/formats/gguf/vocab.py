"""Tokenizer export for GGUF: a SentencePiece `tokenizer.model` or a BPE `tokenizer.json`, plus the special tokens.

| source                  | ggml model | tokens / scores / token_type                                              |
|-------------------------|------------|---------------------------------------------------------------------------|
| `tokenizer.model` (SPM) | `llama`    | every piece, its score and type (UNKNOWN 2, CONTROL 3, UNUSED 5, BYTE 6,  |
|                         |            | else NORMAL 1); `added_tokens.json` entries appended (score -1000,        |
|                         |            | USER_DEFINED 4); `[PADi]` (i = 1..) up to vocab_size (score -1000, UNUSED)|
| `tokenizer.json` (BPE)  | `gpt2`     | id order up to vocab_size; added tokens CONTROL (special) or USER_DEFINED;|
|                         |            | holes `[PAD<id>]`; merges "a b"; tokenizer.ggml.pre from the split regex  |

Special tokens follow gguf-py's `SpecialVocab`: ids named by tokenizer_config.json (`bos_token`, ...) looked up in
tokenizer.json's added tokens, then `<type>_token_id` from config.json; `add_bos/eos` from tokenizer_config.json or
the TemplateProcessing post-processor; the chat template from tokenizer_config.json (or chat_template.jinja/json).
The SentencePiece model is parsed here (a few protobuf fields), so no tokenizer library is needed.
# ref: microsoft/BitNet utils/convert-hf-to-gguf-bitnet.py _set_vocab_sentencepiece / get_vocab_base (37c247c);
#      gguf-py vocab.py SpecialVocab; sentencepiece_model.proto (ModelProto.pieces = 1: piece 1, score 2, type 3)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bitconv.core.errors import SourceError
from bitconv.core.jsonio import read_optional_json
from bitconv.formats.gguf.kv import KV, ValueType

# gguf TokenType
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_SPM_TYPES = {2: UNKNOWN, 3: CONTROL, 5: UNUSED, 6: BYTE}  # sentencepiece Type -> gguf type (USER_DEFINED -> NORMAL)
SPECIAL_TYPES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
# Special-token KV names differ from the type names for these. # ref: gguf-py constants Keys.Tokenizer
_ID_KEYS = {"sep": "seperator_token_id", "pad": "padding_token_id"}

# BPE pre-tokenizer regexes -> tokenizer.ggml.pre (llama.cpp's names). Unknown regex: the key is left out, so
# llama.cpp falls back to "default" (as in Microsoft's official 2B-4T GGUF).
PRE_TOKENIZERS = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+": "gpt-2",
}


@dataclass
class Vocab:
    model: str  # "llama" (SentencePiece) or "gpt2" (BPE)
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] = field(default_factory=list)
    pre: str | None = None
    special_ids: dict[str, int] = field(default_factory=dict)
    add_special: dict[str, bool] = field(default_factory=dict)
    chat_template: str | None = None


@dataclass(frozen=True)
class VocabStyle:
    """How one reference converter writes the vocab."""

    pre: bool  # write tokenizer.ggml.pre
    bpe_scores: bool  # write scores for BPE (0 for base tokens, -1000 for added)
    bpe_added_control: bool  # every added token is CONTROL (convert-ms BpeVocab) instead of special/user-defined
    hole_type: int  # type of the [PAD<id>] fillers in a BPE vocab


STYLES = {
    "bitnet.cpp": VocabStyle(pre=True, bpe_scores=False, bpe_added_control=False, hole_type=USER_DEFINED),
    "upstream": VocabStyle(pre=True, bpe_scores=False, bpe_added_control=False, hole_type=UNUSED),
    "convert-ms": VocabStyle(pre=False, bpe_scores=True, bpe_added_control=True, hole_type=USER_DEFINED),
}


def load_vocab(folder: Path, config: dict, style: str) -> Vocab:
    """The vocab of a checkpoint folder: SentencePiece when `tokenizer.model` exists, else BPE `tokenizer.json`."""
    vocab_size = config.get("vocab_size")
    st = STYLES[style]
    if (folder / "tokenizer.model").is_file():
        v = _spm_vocab(folder, vocab_size)
    elif (folder / "tokenizer.json").is_file():
        v = _bpe_vocab(folder, vocab_size, st)
    else:
        raise SourceError("no tokenizer: GGUF needs tokenizer.model (SentencePiece) or tokenizer.json (BPE)",
                          path=folder, hint="copy the tokenizer files next to config.json")
    _special_vocab(folder, v, load_merges=v.model == "gpt2", n_vocab=len(v.tokens))
    return v


def vocab_kvs(v: Vocab, style: str, skip: frozenset[str] = frozenset()) -> list[KV]:
    """The tokenizer.* KVs in the reference converter's order (keys in `skip` were already written)."""
    st = STYLES[style]
    out = [KV.string("tokenizer.ggml.model", v.model)]
    if st.pre and v.pre is not None:
        out.append(KV.string("tokenizer.ggml.pre", v.pre))
    out.append(KV.array("tokenizer.ggml.tokens", ValueType.STRING, v.tokens))
    if v.scores is not None:
        out.append(KV.array("tokenizer.ggml.scores", ValueType.FLOAT32, v.scores))
    out.append(KV.array("tokenizer.ggml.token_type", ValueType.INT32, v.types))
    if v.merges:
        out.append(KV.array("tokenizer.ggml.merges", ValueType.STRING, v.merges))
    out += [KV.u32(f"tokenizer.ggml.{_ID_KEYS.get(t, t + '_token_id')}", i) for t, i in v.special_ids.items()]
    out += [KV.boolean(f"tokenizer.ggml.add_{t}_token", b) for t, b in v.add_special.items()]
    if v.chat_template is not None:
        out.append(KV.string("tokenizer.chat_template", v.chat_template))
    return [kv for kv in out if kv.key not in skip]


# ------------------------------------------------------------------------------------------------ SentencePiece


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    val = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        val |= (b & 0x7F) << shift
        if not b & 0x80:
            return val, pos
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, Any]]:
    """Top-level protobuf fields (number, value): varints as int, fixed32 as bytes, length-delimited as bytes."""
    out, pos = [], 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, pos = _varint(buf, pos)
        elif wire == 1:
            val, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            val, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            val, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > len(buf):
            raise ValueError("truncated field")
        out.append((num, val))
    return out


def read_spm_pieces(path: Path) -> list[tuple[str, float, int]]:
    """(piece, score, sentencepiece type) for every piece of a `tokenizer.model`."""
    try:
        pieces = []
        for num, val in _fields(path.read_bytes()):
            if num != 1:
                continue
            piece, score, ptype = "", 0.0, 1
            for n, v in _fields(val):
                if n == 1:
                    piece = v.decode("utf-8")
                elif n == 2:
                    (score,) = struct.unpack("<f", v)
                elif n == 3:
                    ptype = v
            pieces.append((piece, score, ptype))
    except (OSError, ValueError, UnicodeDecodeError, struct.error) as e:
        raise SourceError(f"cannot read the SentencePiece model ({e})", path=path) from None
    if not pieces:
        raise SourceError("the SentencePiece model has no pieces", path=path)
    return pieces


def _spm_vocab(folder: Path, vocab_size: int | None) -> Vocab:
    pieces = read_spm_pieces(folder / "tokenizer.model")
    tokens = [p for p, _, _ in pieces]
    scores = [float(s) for _, s, _ in pieces]
    types = [_SPM_TYPES.get(t, NORMAL) for _, _, t in pieces]
    added = read_optional_json(folder / "added_tokens.json") or {}
    for key in added:
        if key not in tokens:
            tokens.append(key)
            scores.append(-1000.0)
            types.append(USER_DEFINED)
    size = vocab_size or len(tokens)
    if size < len(tokens):
        raise SourceError(f"tokenizer has {len(tokens)} tokens but config vocab_size is {size}", path=folder)
    for i in range(1, size - len(tokens) + 1):
        tokens.append(f"[PAD{i}]")
        scores.append(-1000.0)
        types.append(UNUSED)
    return Vocab("llama", tokens, types, scores, pre="default")


# ------------------------------------------------------------------------------------------------ BPE


def _bpe_vocab(folder: Path, vocab_size: int | None, st: VocabStyle) -> Vocab:
    tj = read_optional_json(folder / "tokenizer.json")
    model = (tj or {}).get("model") or {}
    base = model.get("vocab")
    if model.get("type") != "BPE" or not isinstance(base, dict):
        raise SourceError("tokenizer.json is not a BPE tokenizer (GGUF export supports BPE and SentencePiece)",
                          path=folder / "tokenizer.json")
    added = {a["id"]: a for a in tj.get("added_tokens", []) if isinstance(a, dict) and "id" in a}
    by_id = {i: t for t, i in base.items()}
    by_id.update({i: a["content"] for i, a in added.items()})
    size = vocab_size or (max(by_id) + 1)
    if max(by_id) >= size:
        raise SourceError(f"tokenizer.json has token id {max(by_id)} but config vocab_size is {size}", path=folder)
    tokens, types, scores = [], [], []
    for i in range(size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(st.hole_type)
        elif i in added:
            tokens.append(by_id[i])
            types.append(CONTROL if st.bpe_added_control or added[i].get("special") else USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(NORMAL)
        scores.append(-1000.0 if i in added or i not in by_id else 0.0)
    return Vocab("gpt2", tokens, types, scores if st.bpe_scores else None, pre=_pre_tokenizer(tj))


def _pre_tokenizer(tj: dict) -> str | None:
    pre = tj.get("pre_tokenizer") or {}
    for p in pre.get("pretokenizers", [pre]):
        regex = (p.get("pattern") or {}).get("Regex") if isinstance(p, dict) else None
        if regex in PRE_TOKENIZERS:
            return PRE_TOKENIZERS[regex]
    return None


def _merges(tj: dict) -> list[str]:
    merges = ((tj or {}).get("model") or {}).get("merges") or []
    if merges and isinstance(merges[0], list):  # transformers >= 4.45: pairs; spaces encoded as U+0120 + 256
        return [" ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part) for part in pair)
                for pair in merges]
    return list(merges)


def _merges_txt(path: Path) -> list[str]:
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    if lines and lines[0].startswith("#"):
        lines = lines[1:]
    return [" ".join(parts) for parts in (ln.split() for ln in lines) if len(parts) == 2]


# ------------------------------------------------------------------------------------------------ special tokens


def _set_special(v: Vocab, typ: str, tid: Any, n_vocab: int) -> None:
    if isinstance(tid, int) and not isinstance(tid, bool) and 0 <= tid < n_vocab and typ not in v.special_ids:
        v.special_ids[typ] = tid


def _special_vocab(folder: Path, v: Vocab, load_merges: bool, n_vocab: int) -> None:
    tj = read_optional_json(folder / "tokenizer.json")
    tc = read_optional_json(folder / "tokenizer_config.json")
    tc = tc if isinstance(tc, dict) else None
    if load_merges:
        v.merges = _merges(tj) or _merges_txt(folder / "merges.txt")
    if isinstance(tj, dict):
        _post_processor_flags(v, tj, tc)
    if tc is not None:
        v.chat_template = _chat_template(folder, tc)
        added = tj.get("added_tokens", []) if isinstance(tj, dict) else []
        for typ in SPECIAL_TYPES:
            if isinstance(flag := tc.get(f"add_{typ}_token"), bool):
                v.add_special[typ] = flag
            entry = tc.get(f"{typ}_token")
            content = entry.get("content") if isinstance(entry, dict) else entry
            if isinstance(content, str):
                _set_special(v, typ, next((a.get("id") for a in added if a.get("content") == content), None),
                             n_vocab)
    cfg = read_optional_json(folder / "config.json") or {}
    for typ in SPECIAL_TYPES:
        _set_special(v, typ, cfg.get(f"{typ}_token_id"), n_vocab)


def _post_processor_flags(v: Vocab, tj: dict, tc: dict | None) -> None:
    """add_bos / add_eos from a simple TemplateProcessing (`<bos> $A` / `$A <eos>`)."""
    pp = tj.get("post_processor") or {}
    bos = _content((tc or {}).get("bos_token"))
    eos = _content((tc or {}).get("eos_token"))
    for proc in pp.get("processors", [pp]):
        single = proc.get("single", []) if proc.get("type") == "TemplateProcessing" else []
        if len(single) < 2:
            continue
        first = single[0].get("SpecialToken", {}).get("id")
        last = single[-1].get("SpecialToken", {}).get("id")
        if first:
            v.add_special["bos"] = tc is None or first == bos
        if last:
            v.add_special["eos"] = tc is None or last == eos


def _content(entry: Any) -> str | None:
    return entry.get("content") if isinstance(entry, dict) else entry


def _chat_template(folder: Path, tc: dict) -> str | None:
    alt = None
    if (folder / "chat_template.jinja").is_file():
        alt = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    elif (folder / "chat_template.json").is_file():
        alt = (read_optional_json(folder / "chat_template.json") or {}).get("chat_template")
    tmpl = tc.get("chat_template", alt)
    return tmpl if isinstance(tmpl, str) else None
