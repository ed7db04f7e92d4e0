"""Training, evaluation and prediction: one task-generic loop (see ``sofa.train.task`` for the Task interface)."""

from sofa.errors import TrainingDiverged, UserError
from sofa.train.task import EvalContext, StepOutput, Task, get_task, list_tasks, register_task, to_device, unwrap

__all__ = [
    "Task",
    "StepOutput",
    "EvalContext",
    "register_task",
    "get_task",
    "list_tasks",
    "to_device",
    "unwrap",
    "UserError",
    "TrainingDiverged",
]
