"""A restricted unpickler for data pickles: numpy arrays, numbers, strings, bytes, lists, tuples and dicts only.

Loading a pickle runs whatever its ``GLOBAL`` / ``REDUCE`` opcodes name, so a pickle from elsewhere can execute
any code. The data pickles LRA users have — CIFAR-10's ``cifar-10-batches-py`` batches, the
Nyströmformer / Skyformer / xformers harness's ``{task}.{split}.pickle`` lists of dicts — need only numpy's
array and scalar constructors beyond the built-in containers. :func:`load_data_pickle` resolves exactly those
names (from a fixed table, importing nothing a pickle names) and refuses every other one with
:class:`UnsafePickleError` before anything it names is looked up, let alone called.
"""

from __future__ import annotations

import codecs
import io
import pickle
from pathlib import Path

import numpy as np

from sofa.errors import UserError


class UnsafePickleError(UserError, pickle.UnpicklingError):
    """The pickle names something other than numpy arrays / scalars and plain containers."""


def _numpy_core(module: str):
    """numpy's private module ``numpy._core.<module>`` (``numpy.core.<module>`` before numpy 2)."""
    import importlib

    try:
        return importlib.import_module(f"numpy._core.{module}")
    except ModuleNotFoundError:
        return importlib.import_module(f"numpy.core.{module}")


def _latin1_encode(text, encoding="latin1", errors="strict"):
    """``_codecs.encode`` as protocol-2 pickles use it for ``bytes`` (latin-1 only; nothing else is allowed)."""
    if codecs.lookup(encoding).name != "iso8859-1" or not isinstance(text, str):
        raise UnsafePickleError(
            f"the pickle calls _codecs.encode with encoding {encoding!r}; only latin-1 "
            f"(how protocol 2 stores bytes) is allowed"
        )
    return text.encode("latin1", errors)


def _allowed() -> dict[tuple[str, str], object]:
    multiarray, numeric = _numpy_core("multiarray"), _numpy_core("numeric")
    table = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): _latin1_encode}
    for package in ("numpy.core", "numpy._core"):  # pickles written by numpy 1.x and 2.x name different modules
        table[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        table[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        table[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return table


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` serves only numpy's array/scalar constructors.

    Anything else (``os.system``, ``builtins.eval``, a class of some package, ...) raises
    :class:`UnsafePickleError`. ``persistent_load`` is refused as well.
    """

    _table: dict | None = None

    def __init__(self, file, *, source: str = "pickle", **kwargs):
        super().__init__(file, **kwargs)
        self._source = source
        if RestrictedUnpickler._table is None:
            RestrictedUnpickler._table = _allowed()

    def find_class(self, module: str, name: str):
        # protocol-2 pickles from Python 2 name ``copy_reg`` etc.; fix_imports has already mapped those
        found = self._table.get((module, name))
        if found is None:
            raise UnsafePickleError(
                f"{self._source}: refusing to load it: the pickle asks for {module}.{name}, and only numpy arrays, "
                f"numbers, strings, lists and dicts are allowed (loading a pickle can run any code it names)"
            )
        return found

    def persistent_load(self, pid):
        raise UnsafePickleError(
            f"{self._source}: refusing to load it: it uses persistent ids, which plain data pickles do not"
        )


def load_data_pickle(path_or_bytes, *, encoding: str = "ASCII"):
    """Load a data pickle (a path, or the pickle's bytes) with :class:`RestrictedUnpickler`.

    ``encoding``: how Python 2 ``str`` objects are read; ``"bytes"`` for CIFAR-10's batches (their keys become
    ``b"data"``, ``b"labels"``). A truncated or corrupt file raises ``UserError`` naming it.
    """
    if isinstance(path_or_bytes, (bytes, bytearray)):
        source, data = "pickle", bytes(path_or_bytes)
    else:
        source = str(path_or_bytes)
        data = Path(path_or_bytes).read_bytes()
    try:
        return RestrictedUnpickler(io.BytesIO(data), source=source, encoding=encoding).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise UserError(f"{source}: not a readable pickle ({type(err).__name__}: {err})") from None
