"""saf_ref.train: SGD with PyTorch's update rules, learning-rate schedules, the training loop,
checkpoints (.npz + JSON, never pickle), and training through the storage pipeline (RandBET)."""

from saf_ref.train.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from saf_ref.train.loop import (
    MODEL_NAMES,
    EvalResult,
    ModelFns,
    ModelName,
    evaluate,
    format_model_name,
    model_fns,
    parse_model_name,
    train,
    train_step,
)
from saf_ref.train.optim import SGD, sgd_init, sgd_step, sgd_update
from saf_ref.train.randbet import (
    RandBETConfig,
    RandBETGradients,
    StepInfo,
    clip_weights,
    protected_train_step,
    randbet_gradients,
    train_protected,
)
from saf_ref.train.schedules import Constant, Cosine, MultiStep, Schedule, Warmup

__all__ = [
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
    "evaluate",
    "format_model_name",
    "load_checkpoint",
    "model_fns",
    "parse_model_name",
    "protected_train_step",
    "randbet_gradients",
    "save_checkpoint",
    "sgd_init",
    "sgd_step",
    "sgd_update",
    "train",
    "train_protected",
    "train_step",
]
