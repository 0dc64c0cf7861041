"""Text tokenizers with reserved control tokens shared by every text stream.

Ids 0..NUM_CONTROL-1 are control tokens (the same in every tokenizer); ordinary text ids
follow. The byte tokenizer maps UTF-8 bytes to NUM_CONTROL + byte. A SentencePiece model
(optional, `sentencepiece` must be installed) maps its pieces to NUM_CONTROL + piece id.
"""

from __future__ import annotations

import enum

import numpy as np


class Control(enum.IntEnum):
    """Reserved control tokens. `NOTHING` fills an empty slot: silence is data."""

    PAD = 0  # outside the episode (never attended as content, never a target)
    NOTHING = 1  # the slot exists but nothing happens in it
    SPEECH_START = 2  # the model starts an utterance
    SPEECH_END = 3  # the model ends (or breaks off) an utterance
    DELEGATE = 4  # hand a request to the background model
    BG_START = 5  # a background result begins
    BG_END = 6  # a background result ends
    BG_ERROR = 7  # the background job failed
    TEXT_END = 8  # ends one typed user message
    DELEGATE_END = 9  # ends the request text that follows DELEGATE
    RESERVED_10 = 10
    RESERVED_11 = 11
    RESERVED_12 = 12
    RESERVED_13 = 13
    RESERVED_14 = 14
    RESERVED_15 = 15


NUM_CONTROL = 16


class ByteTokenizer:
    """UTF-8 bytes offset by the control tokens. Vocabulary size 16 + 256 = 272."""

    vocab_size = NUM_CONTROL + 256

    def encode(self, text: str) -> list[int]:
        return [NUM_CONTROL + b for b in text.encode("utf-8")]

    def decode(self, ids, *, keep_control: bool = False) -> str:
        out: list[str] = []
        buf = bytearray()
        for i in np.asarray(ids).reshape(-1).tolist():
            if i >= NUM_CONTROL:
                buf.append(i - NUM_CONTROL)
                continue
            if keep_control and i not in (Control.PAD, Control.NOTHING):
                out.append(buf.decode("utf-8", errors="replace"))
                buf = bytearray()
                out.append(f"<{Control(i).name}>")
        out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)


class SentencePieceTokenizer:
    """A SentencePiece model with the control tokens placed in front of its pieces."""

    def __init__(self, model_path: str):
        try:
            import sentencepiece as spm
        except ImportError as e:  # pragma: no cover - optional dependency
            raise ImportError("text.tokenizer='sentencepiece' needs `pip install sentencepiece`") from e
        self._sp = spm.SentencePieceProcessor(model_file=model_path)
        self.vocab_size = NUM_CONTROL + self._sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return [NUM_CONTROL + i for i in self._sp.encode(text)]

    def decode(self, ids, *, keep_control: bool = False) -> str:
        ids = [i for i in np.asarray(ids).reshape(-1).tolist()]
        pieces = [i - NUM_CONTROL for i in ids if i >= NUM_CONTROL]
        return self._sp.decode(pieces)


def make_tokenizer(text_config=None):
    """Builds the tokenizer named by `config.text` (byte by default)."""
    kind = getattr(text_config, "tokenizer", "byte") if text_config is not None else "byte"
    if kind == "byte":
        return ByteTokenizer()
    if kind == "sentencepiece":
        path = text_config.sentencepiece_model
        if not path:
            raise ValueError("text.tokenizer='sentencepiece' needs text.sentencepiece_model=<path to .model>")
        return SentencePieceTokenizer(path)
    raise ValueError(f"unknown text.tokenizer {kind!r}; expected 'byte' or 'sentencepiece'")
