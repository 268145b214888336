"""saf_ref.train: SGD with PyTorch's update rules, learning-rate schedules, the training loop,
checkpoints (.npz + JSON, never pickle), and the RandBET algorithms the loop runs through the storage
pipeline. (The model registry lives in :mod:`saf_ref.nn.registry`; its names are re-exported here.)"""

from saf_ref.nn.registry import (
    MODEL_NAMES,
    ModelFns,
    ModelName,
    format_model_name,
    model_fns,
    parse_model_name,
)
from saf_ref.train.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from saf_ref.train.loop import EvalResult, evaluate, train, train_step
from saf_ref.train.optim import SGD, sgd_init, sgd_step, sgd_update
from saf_ref.train.randbet import (
    AdversarialErrors,
    RandBETConfig,
    RandBETGradients,
    StepInfo,
    clip_weights,
    curriculum_errors_on,
    errors_on_after,
    randbet_gradients,
)
from saf_ref.train.schedules import Constant, Cosine, MultiStep, Schedule, Warmup

__all__ = [
    "AdversarialErrors",
    "Checkpoint",
    "CheckpointError",
    "Constant",
    "Cosine",
    "EvalResult",
    "MODEL_NAMES",
    "ModelName",
    "ModelFns",
    "MultiStep",
    "RandBETConfig",
    "RandBETGradients",
    "SGD",
    "Schedule",
    "StepInfo",
    "Warmup",
    "clip_weights",
    "curriculum_errors_on",
    "errors_on_after",
    "evaluate",
    "format_model_name",
    "load_checkpoint",
    "model_fns",
    "parse_model_name",
    "randbet_gradients",
    "save_checkpoint",
    "sgd_init",
    "sgd_step",
    "sgd_update",
    "train",
    "train_step",
]
