"""saf_ref.train: SGD with PyTorch's update rules, learning-rate schedules, the training loop,
checkpoints (.npz + JSON, never pickle), and training through the storage pipeline (RandBET)."""

from saf_ref.train.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from saf_ref.train.loop import EvalResult, ModelFns, evaluate, model_fns, train, train_step
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
    "load_checkpoint",
    "model_fns",
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
