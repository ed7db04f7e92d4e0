"""Long Range Arena data: the ListOps generator, fixed vocabularies and readers for the data users have.

* :mod:`~sofa.data.lra.listops`: LRA's ListOps generator, seeded (``sofa data listops DIR``), and its evaluator;
* :mod:`~sofa.data.lra.vocab`: the fixed id tables (padding 0) and encoders;
* :mod:`~sofa.data.lra.readers`: :func:`open_lra_dataset` over the LRA release, IMDB, CIFAR-10, the LRA
  harness's pickles and the user's own tables;
* :mod:`~sofa.data.lra.safe_pickle`: the restricted unpickler those pickles are read with.
"""

from sofa.data.lra.listops import evaluate as evaluate_listops
from sofa.data.lra.listops import generate_listops, write_listops
from sofa.data.lra.readers import (
    PATHFINDER_DIFFICULTIES,
    TASKS,
    AANPairsTSV,
    CIFAR10Gray,
    HarnessPickle,
    IMDBFolder,
    ListOpsTSV,
    LRADataset,
    PathfinderFolder,
    TextTable,
    collate_lra,
    open_lra_dataset,
    rgb_to_lra_grayscale,
)
from sofa.data.lra.safe_pickle import RestrictedUnpickler, UnsafePickleError, load_data_pickle
from sofa.data.lra.vocab import (
    BYTE_VOCAB_SIZE,
    DEFAULT_MAX_LEN,
    LISTOPS_VOCAB,
    LISTOPS_VOCAB_SIZE,
    PAD_ID,
    PIXEL_VOCAB_SIZE,
    decode_listops,
    encode_bytes,
    encode_listops,
    pad_batch,
)

__all__ = [
    "evaluate_listops",
    "generate_listops",
    "write_listops",
    "PATHFINDER_DIFFICULTIES",
    "TASKS",
    "AANPairsTSV",
    "CIFAR10Gray",
    "HarnessPickle",
    "IMDBFolder",
    "ListOpsTSV",
    "LRADataset",
    "PathfinderFolder",
    "TextTable",
    "collate_lra",
    "open_lra_dataset",
    "rgb_to_lra_grayscale",
    "RestrictedUnpickler",
    "UnsafePickleError",
    "load_data_pickle",
    "BYTE_VOCAB_SIZE",
    "DEFAULT_MAX_LEN",
    "LISTOPS_VOCAB",
    "LISTOPS_VOCAB_SIZE",
    "PAD_ID",
    "PIXEL_VOCAB_SIZE",
    "decode_listops",
    "encode_bytes",
    "encode_listops",
    "pad_batch",
]
