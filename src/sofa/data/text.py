"""Text for the language models: tokenizers, masked-language-model masking, corpora packed into sequences.

Tokenizers (:func:`load_tokenizer`) share one small interface, :class:`TextTokenizer`:

* ``"bytes"``: the built-in byte-level tokenizer, nothing to install or train. Ids: ``[PAD]`` 0, ``[CLS]`` 1,
  ``[SEP]`` 2, ``[MASK]`` 3, ``[UNK]`` 4, then the 256 byte values (byte ``b`` is id ``5 + b``): 261 ids. It is
  saved as a standard Hugging Face ``tokenizer.json`` (a byte-level BPE with no merges) that the ``tokenizers``
  package reads and encodes to the same ids; sofa recognises that file and loads it without ``tokenizers``.
* a path to a ``tokenizer.json`` (Hugging Face ``tokenizers`` format: one trained by :func:`train_tokenizer` /
  ``sofa tokenizer train``, or BERT's own): read by the ``tokenizers`` package (``pip install sofa[text]``).
  Its special tokens are found by name (``[PAD]``/``<pad>``, ``[CLS]``/``<s>``, ``[SEP]``/``</s>``,
  ``[MASK]``/``<mask>``, ``[UNK]``/``<unk>``).

Masking (:func:`mask_tokens`) is BERT's: 15% of the real tokens are predicted; of those 80% become ``[MASK]``,
10% a random id, 10% stay. Corpora (:func:`read_corpus`) are text files (UTF-8, bad bytes replaced) or the
built-in ``python-docs``: the prose paragraphs of the Python documentation's topic texts that ship with the
standard library (``pydoc_data.topics``), English written by people, no download. :func:`pack_corpus` splits a
corpus into paragraphs, sends every ``k``-th paragraph to validation (deterministic, ``k = round(1 /
val_fraction)``), and packs each split's token stream into sequences ``[CLS] … [SEP]`` of a fixed length.
"""

from __future__ import annotations

import json
import re
import shutil
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import Dataset

from sofa.errors import UserError

__all__ = [
    "SPECIAL_TOKENS",
    "TextTokenizer",
    "ByteTokenizer",
    "HFTokenizer",
    "load_tokenizer",
    "train_tokenizer",
    "mask_tokens",
    "special_tokens_mask",
    "read_corpus",
    "corpus_paragraphs",
    "pack_corpus",
    "PackedCorpus",
    "MLMDataset",
    "BUILTIN_CORPORA",
]

#: the special tokens of sofa's tokenizers, in id order (the byte tokenizer and trained ones)
SPECIAL_TOKENS = ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]")
#: names tried, in order, for each special token of a tokenizer.json made elsewhere
_SPECIAL_ALIASES = {
    "pad": ("[PAD]", "<pad>"),
    "cls": ("[CLS]", "<s>", "<cls>"),
    "sep": ("[SEP]", "</s>", "<sep>"),
    "mask": ("[MASK]", "<mask>"),
    "unk": ("[UNK]", "<unk>"),
}
#: corpora known by name
BUILTIN_CORPORA = ("python-docs",)
TEXT_EXTRA = "pip install 'sofa[text]' (or pip install tokenizers)"


def _require_tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise UserError(f"reading or training a tokenizer.json needs the `tokenizers` package: {TEXT_EXTRA}") from None
    return tokenizers


class TextTokenizer:
    """What sofa needs of a tokenizer. Subclasses set the special ids and ``vocab_size`` and implement
    :meth:`encode`, :meth:`decode`, :meth:`save`."""

    name: str = ""
    vocab_size: int
    pad_id: int
    cls_id: int
    sep_id: int
    mask_id: int
    unk_id: Optional[int]

    def encode(self, text: str) -> List[int]:
        """The ids of ``text``, no special tokens."""
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str]) -> List[List[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids``, special tokens left out."""
        raise NotImplementedError

    def save(self, path: Union[str, Path]) -> Path:
        """Write the tokenizer as a ``tokenizer.json`` that :func:`load_tokenizer` reads back."""
        raise NotImplementedError

    @property
    def special_ids(self) -> Tuple[int, ...]:
        return tuple(i for i in (self.pad_id, self.cls_id, self.sep_id, self.mask_id, self.unk_id) if i is not None)

    def encode_pair(self, text_a: str, text_b: Optional[str] = None, max_len: int = 128) -> Tuple[List[int], List[int]]:
        """``[CLS] a [SEP]`` or ``[CLS] a [SEP] b [SEP]`` of at most ``max_len`` ids, and the token type ids
        (0 for the first segment with its ``[CLS]`` and ``[SEP]``, 1 for the second). Too long a pair loses
        tokens from the end of its longer side first (BERT's ``longest_first``)."""
        a = self.encode(text_a)
        b = self.encode(text_b) if text_b is not None else None
        room = max_len - (3 if b is not None else 2)
        if room < 0:
            raise ValueError(f"encode_pair: max_len {max_len} leaves no room for the special tokens")
        if b is None:
            a = a[:room]
        else:
            while len(a) + len(b) > room:
                if len(a) >= len(b):
                    a.pop()
                else:
                    b.pop()
        ids = [self.cls_id, *a, self.sep_id]
        types = [0] * len(ids)
        if b is not None:
            ids += [*b, self.sep_id]
            types += [1] * (len(b) + 1)
        return ids, types

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, vocab_size={self.vocab_size})"


# ------------------------------------------------------------------------------------------------ bytes
def _bytes_to_unicode() -> List[str]:
    """GPT-2's printable stand-in character of each byte value (the ``tokenizers`` ByteLevel alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs, strict=True))
    return [chr(table[b]) for b in range(256)]


class ByteTokenizer(TextTokenizer):
    """Byte-level tokenizer: the UTF-8 bytes of a text, byte ``b`` as id ``5 + b`` after the 5 specials."""

    name = "bytes"
    offset = len(SPECIAL_TOKENS)

    def __init__(self):
        self.vocab_size = self.offset + 256
        self.pad_id, self.cls_id, self.sep_id, self.mask_id, self.unk_id = range(len(SPECIAL_TOKENS))

    def encode(self, text: str) -> List[int]:
        return [self.offset + b for b in text.encode("utf-8")]

    def encode_batch(self, texts: Sequence[str]) -> List[List[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        data = bytes(int(i) - self.offset for i in ids if self.offset <= int(i) < self.vocab_size)
        return data.decode("utf-8", errors="replace")

    def to_json(self) -> dict:
        """The ``tokenizer.json`` document: a byte-level BPE without merges (each byte its own token)."""
        vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
        vocab.update({ch: self.offset + b for b, ch in enumerate(_bytes_to_unicode())})
        added = [
            dict(id=i, content=t, single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)
            for i, t in enumerate(SPECIAL_TOKENS)
        ]
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": added,
            "normalizer": None,
            "pre_tokenizer": {
                "type": "ByteLevel",
                "add_prefix_space": False,
                "trim_offsets": False,
                "use_regex": False,
            },
            "post_processor": _bert_post_processor(1, 2),
            "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
            "model": {
                "type": "BPE",
                "dropout": None,
                "unk_token": "[UNK]",
                "continuing_subword_prefix": None,
                "end_of_word_suffix": None,
                "fuse_unk": False,
                "byte_fallback": False,
                "vocab": vocab,
                "merges": [],
            },
        }

    def save(self, path: Union[str, Path]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        return path

    @classmethod
    def matches(cls, doc: dict) -> bool:
        """Whether a ``tokenizer.json`` document is this tokenizer (as :meth:`to_json` writes it)."""
        model = doc.get("model") or {}
        return (
            model.get("type") == "BPE"
            and not model.get("merges")
            and model.get("vocab") == cls().to_json()["model"]["vocab"]
        )


def _bert_post_processor(cls_id: int, sep_id: int) -> dict:
    """``[CLS] $A [SEP]`` / ``[CLS] $A [SEP] $B [SEP]`` with BERT's token types, as ``tokenizers`` writes it."""
    return {
        "type": "TemplateProcessing",
        "single": [
            {"SpecialToken": {"id": "[CLS]", "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
            {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
        ],
        "pair": [
            {"SpecialToken": {"id": "[CLS]", "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
            {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
            {"Sequence": {"id": "B", "type_id": 1}},
            {"SpecialToken": {"id": "[SEP]", "type_id": 1}},
        ],
        "special_tokens": {
            "[CLS]": {"id": "[CLS]", "ids": [cls_id], "tokens": ["[CLS]"]},
            "[SEP]": {"id": "[SEP]", "ids": [sep_id], "tokens": ["[SEP]"]},
        },
    }


# ------------------------------------------------------------------------------------------------ tokenizers
class HFTokenizer(TextTokenizer):
    """A Hugging Face ``tokenizers.Tokenizer`` (read from a ``tokenizer.json``) behind sofa's interface."""

    def __init__(self, tokenizer, name: str = ""):
        self.tok = tokenizer
        self.name = name
        self.vocab_size = int(tokenizer.get_vocab_size(with_added_tokens=True))
        ids = {}
        for role, names in _SPECIAL_ALIASES.items():
            ids[role] = next((tokenizer.token_to_id(n) for n in names if tokenizer.token_to_id(n) is not None), None)
        missing = [r for r in ("pad", "cls", "sep", "mask") if ids[r] is None]
        if missing:
            raise UserError(
                f"tokenizer {name or ''} lacks the special token(s) "
                + ", ".join(f"{r} ({' or '.join(_SPECIAL_ALIASES[r])})" for r in missing)
                + "; sofa tokenizer train adds [PAD] [CLS] [SEP] [MASK] [UNK]"
            )
        self.pad_id, self.cls_id, self.sep_id, self.mask_id, self.unk_id = (
            ids["pad"],
            ids["cls"],
            ids["sep"],
            ids["mask"],
            ids["unk"],
        )

    def encode(self, text: str) -> List[int]:
        return list(self.tok.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: Sequence[str]) -> List[List[int]]:
        return [list(e.ids) for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def save(self, path: Union[str, Path]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tok.save(str(path))
        return path


def load_tokenizer(path_or_name: Union[str, Path, TextTokenizer]) -> TextTokenizer:
    """``"bytes"`` (built in), a ``tokenizer.json`` file, or a directory holding one (a pretraining run)."""
    if isinstance(path_or_name, TextTokenizer):
        return path_or_name
    spec = str(path_or_name)
    if spec == "bytes":
        return ByteTokenizer()
    path = Path(spec)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise UserError(
            f"tokenizer {spec!r}: no such file; give 'bytes' (built in) or a tokenizer.json "
            "(`sofa tokenizer train FILES... --out tok.json` makes one)"
        )
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"tokenizer {path}: not a tokenizer.json ({err})") from None
    if isinstance(doc, dict) and ByteTokenizer.matches(doc):
        return ByteTokenizer()
    tokenizers = _require_tokenizers()
    try:
        tok = tokenizers.Tokenizer.from_file(str(path))
    except Exception as err:  # the Rust side raises plain Exceptions
        raise UserError(f"tokenizer {path}: cannot be read by tokenizers ({err})") from None
    return HFTokenizer(tok, str(path))


def train_tokenizer(
    files: Union[str, Sequence[str]],
    vocab_size: int,
    out: Union[str, Path, None] = None,
    kind: str = "wordpiece",
    min_frequency: int = 2,
) -> HFTokenizer:
    """Train a WordPiece (BERT's) or BPE tokenizer on ``files`` (text files or a built-in corpus name such as
    ``python-docs``) with BERT's normalisation (Unicode NFD, lower case, accents stripped) and pre-tokenisation
    (whitespace and punctuation), and sofa's special tokens ``[PAD] [CLS] [SEP] [MASK] [UNK]`` as ids 0-4.
    Written to ``out`` (a ``tokenizer.json``) when given."""
    tokenizers = _require_tokenizers()
    from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

    if kind not in ("wordpiece", "bpe"):
        raise UserError(f"tokenizer kind {kind!r}: choose wordpiece or bpe")
    if vocab_size <= len(SPECIAL_TOKENS):
        raise UserError(f"--vocab {vocab_size} leaves no room beside the {len(SPECIAL_TOKENS)} special tokens")
    specials = list(SPECIAL_TOKENS)
    if kind == "wordpiece":
        tok = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials, continuing_subword_prefix="##"
        )
        tok.decoder = decoders.WordPiece(prefix="##")
    else:
        tok = tokenizers.Tokenizer(models.BPE(unk_token="[UNK]", end_of_word_suffix="</w>"))
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials, end_of_word_suffix="</w>"
        )
        tok.decoder = decoders.BPEDecoder(suffix="</w>")
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(corpus_paragraphs(files), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    wrapped = HFTokenizer(tok, f"{kind} trained")
    if out is not None:
        wrapped.save(out)
        wrapped.name = str(out)
    return wrapped


def save_tokenizer_copy(tokenizer: TextTokenizer, src: str, dest: Union[str, Path]) -> Path:
    """``dest`` holding ``tokenizer``: a byte copy of its file ``src`` when there is one, else its JSON."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    source = Path(src) / "tokenizer.json" if Path(src).is_dir() else Path(src)
    if src != "bytes" and source.is_file():
        if source.resolve() != dest.resolve():
            shutil.copyfile(source, dest)
        return dest
    return tokenizer.save(dest)


# ------------------------------------------------------------------------------------------------ masking
def special_tokens_mask(ids: torch.Tensor, special_ids: Iterable[int]) -> torch.Tensor:
    """True where ``ids`` holds one of ``special_ids`` (same shape)."""
    out = torch.zeros_like(ids, dtype=torch.bool)
    for i in special_ids:
        out |= ids == int(i)
    return out


def mask_tokens(
    ids: torch.Tensor,
    special_mask: torch.Tensor,
    mask_id: int,
    vocab_size: int,
    generator: Optional[torch.Generator] = None,
    prob: float = 0.15,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """BERT's masked-language-model corruption of ``ids`` (any shape, int64).

    Each token where ``special_mask`` is False (special tokens and padding are True) is chosen with probability
    ``prob``; a chosen token becomes ``mask_id`` with probability 0.8, a uniformly random id in
    ``[0, vocab_size)`` with probability 0.1, and stays itself otherwise. Returns ``(inputs, labels)``:
    ``labels`` holds the original id where a token was chosen and -100 elsewhere (cross-entropy's
    ``ignore_index``). ``generator`` None draws from torch's global generator.
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"mask_tokens: prob must be in [0, 1], got {prob}")
    ids = ids.long()
    special_mask = special_mask.to(device=ids.device, dtype=torch.bool)
    draw = torch.rand(ids.shape, generator=generator, device=ids.device)
    chosen = (draw < prob) & ~special_mask
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    how = torch.rand(ids.shape, generator=generator, device=ids.device)
    random_ids = torch.randint(vocab_size, ids.shape, generator=generator, device=ids.device)
    inputs = torch.where(chosen & (how < 0.8), torch.full_like(ids, mask_id), ids)
    inputs = torch.where(chosen & (how >= 0.8) & (how < 0.9), random_ids, inputs)
    return inputs, labels


# ------------------------------------------------------------------------------------------------ corpora
_UNDERLINE = re.compile(r"^\s*([*=\-~^\"'`#+])\1{2,}\s*$")


def _python_docs_paragraphs() -> Iterator[str]:
    """The prose paragraphs of ``pydoc_data.topics.topics`` (sorted by topic): unindented paragraphs, without
    the heading underlines; indented code and grammar blocks are left out."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # pragma: no cover - some distributions strip pydoc_data
        raise UserError("the python-docs corpus needs the standard library's pydoc_data, absent here") from None
    for key in sorted(topics):
        yield from _prose(topics[key])


def _prose(text: str) -> Iterator[str]:
    for block in re.split(r"\n\s*\n", text):
        lines = [ln for ln in block.split("\n") if ln.strip() and not _UNDERLINE.match(ln)]
        if not lines or lines[0][:1].isspace() or lines[0].lstrip().startswith((">>>", "...")):
            continue
        para = " ".join(ln.strip() for ln in lines)
        if len(para) >= 2:
            yield para


def _file_paragraphs(path: Path) -> Iterator[str]:
    text = path.read_bytes().decode("utf-8", errors="replace")
    for block in re.split(r"\n\s*\n", text):
        block = block.strip()
        if block:
            yield block


def _corpus_specs(files: Union[str, Path, Sequence[Union[str, Path]]]) -> List[str]:
    specs = [str(files)] if isinstance(files, (str, Path)) else [str(f) for f in files]
    if not specs:
        raise UserError("no corpus: give text files or python-docs")
    for s in specs:
        if s not in BUILTIN_CORPORA and not Path(s).is_file():
            raise UserError(
                f"corpus {s!r}: no such file; give UTF-8 text files or a built-in corpus ({', '.join(BUILTIN_CORPORA)})"
            )
    return specs


def corpus_paragraphs(files: Union[str, Path, Sequence[Union[str, Path]]]) -> Iterator[str]:
    """The paragraphs (blank-line separated blocks) of a corpus: text files and/or built-in corpus names."""
    for spec in _corpus_specs(files):
        if spec == "python-docs":
            yield from _python_docs_paragraphs()
        else:
            yield from _file_paragraphs(Path(spec))


def read_corpus(files: Union[str, Path, Sequence[Union[str, Path]]]) -> str:
    """The whole text of a corpus, paragraphs separated by blank lines."""
    return "\n\n".join(corpus_paragraphs(files))


@dataclass
class PackedCorpus:
    """One split of a corpus packed into sequences: ``ids`` (S, L) int64 (``[CLS] … [SEP]`` then padding) and
    ``lengths`` (S,) of the real tokens."""

    ids: torch.Tensor
    lengths: torch.Tensor

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.arange(self.ids.shape[1]) < self.lengths[:, None]


def _pack(stream: "array", seq_len: int, tok: TextTokenizer) -> PackedCorpus:
    """Cut ``stream`` into pieces of ``seq_len - 2`` ids framed ``[CLS] … [SEP]``, the last one padded."""
    body = seq_len - 2
    n = len(stream)
    S = -(-n // body)
    ids = torch.full((S, seq_len), tok.pad_id, dtype=torch.long)
    lengths = torch.full((S,), seq_len, dtype=torch.long)
    if S == 0:
        return PackedCorpus(ids, lengths)
    flat = torch.full((S * body,), tok.pad_id, dtype=torch.long)
    flat[:n] = torch.frombuffer(stream, dtype=torch.int64) if n else flat[:0]
    ids[:, 0] = tok.cls_id
    ids[:, 1 : 1 + body] = flat.view(S, body)
    ids[:-1, -1] = tok.sep_id
    last = n - (S - 1) * body  # real tokens in the last piece
    ids[-1, 1 + last] = tok.sep_id
    lengths[-1] = last + 2
    return PackedCorpus(ids, lengths)


#: paragraphs tokenized per call of ``encode_batch`` while packing
ENCODE_CHUNK = 1024


def pack_corpus(
    files: Union[str, Path, Sequence[Union[str, Path]]],
    tokenizer: TextTokenizer,
    seq_len: int = 128,
    val_fraction: float = 0.05,
) -> Tuple[PackedCorpus, PackedCorpus]:
    """(train, validation) sequences of ``seq_len`` ids: paragraph ``i`` goes to validation when ``i % k == k
    - 1`` with ``k = round(1 / val_fraction)`` (none when ``val_fraction`` is 0); each split's paragraphs are
    tokenized, concatenated and cut into pieces of ``seq_len - 2`` tokens, each framed ``[CLS] … [SEP]`` (the
    last one padded). A corpus of fewer than ``k`` paragraphs is split by sequences instead, the same way.
    The corpus is read and tokenized as a stream (ids kept as 8-byte integers, nothing per paragraph)."""
    if seq_len < 3:
        raise UserError(f"--seq-len {seq_len}: a sequence needs room for [CLS], a token and [SEP]")
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    k = round(1 / val_fraction) if val_fraction > 0 else 0
    streams = {"train": array("q"), "val": array("q")}
    count = 0
    chunk: List[str] = []

    def flush():
        nonlocal count
        for ids in tokenizer.encode_batch(chunk):
            streams["val" if k and count % k == k - 1 else "train"].extend(ids)
            count += 1
        chunk.clear()

    for para in corpus_paragraphs(files):
        chunk.append(para)
        if len(chunk) >= ENCODE_CHUNK:
            flush()
    flush()
    if count == 0:
        raise UserError(f"corpus {files}: no text")
    train = _pack(streams["train"], seq_len, tokenizer)
    val = _pack(streams["val"], seq_len, tokenizer)
    if k and len(val) == 0 and len(train) > 1:  # too few paragraphs: every k-th sequence (at least one)
        pick = torch.zeros(len(train), dtype=torch.bool)
        pick[min(k, len(train)) - 1 :: k] = True
        val = PackedCorpus(train.ids[pick], train.lengths[pick])
        train = PackedCorpus(train.ids[~pick], train.lengths[~pick])
    if len(train) == 0:
        raise UserError(f"corpus {files}: no training text after the validation split")
    return train, val


class MLMDataset(Dataset):
    """Masked-language-model samples of packed sequences: item ``i`` is a dict of ``input_ids`` (masked),
    ``attention_mask``, ``token_type_ids`` (zeros) and ``labels`` (-100 where nothing is predicted), each (L,).

    ``seed`` None draws the masking from torch's global generator (the training loop seeds it per item, so
    a run is reproducible and resumable); an int fixes item ``i``'s masking to ``(seed, i)`` (validation)."""

    def __init__(self, packed: PackedCorpus, tokenizer: TextTokenizer, prob: float = 0.15, seed: Optional[int] = None):
        self.packed, self.prob, self.seed = packed, prob, seed
        self.mask_id, self.vocab_size = tokenizer.mask_id, tokenizer.vocab_size
        self.special_ids = tokenizer.special_ids

    def __len__(self) -> int:
        return len(self.packed)

    def __getitem__(self, index: int) -> dict:
        ids = self.packed.ids[index]
        real = torch.arange(ids.shape[0]) < self.packed.lengths[index]
        gen = None
        if self.seed is not None:
            gen = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + int(index))
        special = special_tokens_mask(ids, self.special_ids) | ~real
        inputs, labels = mask_tokens(ids, special, self.mask_id, self.vocab_size, gen, self.prob)
        return {
            "input_ids": inputs,
            "attention_mask": real,
            "token_type_ids": torch.zeros_like(ids),
            "labels": labels,
        }
