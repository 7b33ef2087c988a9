"""EMA of the weights: Lightning's ``EMAWeightAveraging``, with the test of a checkpoint fixed.

Lightning saves the EMA weights as ``state_dict`` (raw ones as ``current_model_state``); its
``trainer.test(ckpt_path=)`` right after ``fit`` would reload the raw ones, here the EMA ones stay.
Metric states (``val_acc_best``) are not averaged: the saved ones come from the current model."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn


class EMA(EMAWeightAveraging):
    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        current = checkpoint.get("current_model_state")
        if current is None:
            return
        averaged = {n for n, _ in [*pl_module.named_parameters(), *pl_module.named_buffers()]}
        for name in checkpoint["state_dict"]:
            if name not in averaged and name in current:
                checkpoint["state_dict"][name] = current[name]

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            return  # test/validate/predict: the state_dict (the EMA weights) is the model
        super().on_load_checkpoint(trainer, pl_module, checkpoint)
