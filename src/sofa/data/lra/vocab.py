"""Fixed vocabularies of the Long Range Arena tasks; padding id 0 everywhere.

* ListOps: one id per token of the generator's language (the four operators, the closing bracket ``]`` and the
  digits), ``LISTOPS_VOCAB_SIZE`` ids with padding. The parentheses of the written form are dropped: the
  generator writes each operator's argument list as nested pairs, ``( ( [MAX 2 ) 9 ) ] )``, and the pairs add no
  information once ``]`` closes every operator (S4 drops them the same way; LRA's own tokenizer drops ``]`` too,
  which loses where an argument list ends).
* Bytes (text classification, document retrieval): id = byte value + 1, ``BYTE_VOCAB_SIZE`` = 257, as LRA's
  byte encoder (one reserved id, padding).
* Pixels (CIFAR-10 grayscale, Pathfinder): id = 8-bit pixel value, ``PIXEL_VOCAB_SIZE`` = 256, as LRA. Images
  are never padded, so 0 is black there and not padding.
"""

from __future__ import annotations

import numpy as np
import torch

PAD_ID = 0

LISTOPS_OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
LISTOPS_END = "]"
LISTOPS_DIGITS = tuple(str(d) for d in range(10))
#: token → id; the order is fixed forever (a trained model depends on it)
LISTOPS_VOCAB: dict[str, int] = {
    tok: i for i, tok in enumerate(("<pad>", *LISTOPS_DIGITS, *LISTOPS_OPERATORS, LISTOPS_END))
}
LISTOPS_VOCAB_SIZE = len(LISTOPS_VOCAB)
#: tokens of the written form that carry no information and are dropped when encoding
LISTOPS_IGNORED = frozenset({"(", ")"})
LISTOPS_CLASSES = 10

BYTE_VOCAB_SIZE = 257
PIXEL_VOCAB_SIZE = 256

#: LRA's sequence lengths: ListOps at most 2,000 tokens; text and each retrieval document cut to 4,000 bytes
#: (images are read whole: one id per pixel)
DEFAULT_MAX_LEN = {"listops": 2000, "text": 4000, "retrieval": 4000}


def encode_listops(source: str, max_len: int | None = None) -> torch.Tensor:
    """A ListOps expression (written form, tokens separated by spaces) → LongTensor of ids, parentheses dropped.

    Raises ``KeyError`` naming the first token outside the vocabulary.
    """
    vocab = LISTOPS_VOCAB
    ids = [vocab[tok] for tok in source.split() if tok not in LISTOPS_IGNORED]
    if max_len is not None:
        ids = ids[:max_len]
    return torch.tensor(ids, dtype=torch.long)


def decode_listops(ids) -> str:
    """Ids → tokens separated by spaces (no parentheses; padding left out)."""
    names = list(LISTOPS_VOCAB)
    return " ".join(names[i] for i in (int(i) for i in ids) if i != PAD_ID)


def encode_bytes(data: bytes | str, max_len: int | None = None) -> torch.Tensor:
    """Text → byte ids (byte + 1, UTF-8 for ``str``), cut to ``max_len`` bytes. (L,) LongTensor."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if max_len is not None:
        data = data[:max_len]
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8).astype(np.int64) + 1)


def pad_batch(sequences: list[torch.Tensor], length: int | None = None) -> torch.Tensor:
    """Right-pad 1-D id tensors with ``PAD_ID`` to ``length`` (default: the longest) → (B, length) LongTensor."""
    length = max((len(s) for s in sequences), default=0) if length is None else length
    out = torch.full((len(sequences), length), PAD_ID, dtype=torch.long)
    for row, seq in zip(out, sequences, strict=False):
        row[: len(seq)] = seq[:length]
    return out
