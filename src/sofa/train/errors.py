"""The errors of :mod:`sofa.errors` under the name ``sofa.train.errors``, for code that imports them from here."""
from sofa.errors import TrainingDiverged, UserError, WriteFailed, free_space, writing

__all__ = ["UserError", "TrainingDiverged", "WriteFailed", "writing", "free_space"]
