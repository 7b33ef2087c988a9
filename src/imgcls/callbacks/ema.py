"""EMA of the weights: Lightning's ``EMAWeightAveraging``, with the test of a checkpoint fixed.

Lightning's callback validates on the EMA weights and saves them as the checkpoint's
``state_dict`` (the raw ones under ``current_model_state``, so a resumed fit continues both).
Two things it does not do on its own, done here:

* ``trainer.test(ckpt_path=...)`` right after ``fit`` (train.py testing the best checkpoint):
  the averaged model still exists, so the parent reloads ``current_model_state`` and the test
  would score the *raw* weights. Outside fit the checkpoint's ``state_dict`` (EMA) stays loaded.
* Metric states in the ``state_dict`` (``val_acc_best``) are not parameters or buffers, so the
  averaged copy holds them as they were at setup; they are taken from the current model.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn


class EMA(EMAWeightAveraging):
    """``EMAWeightAveraging`` whose checkpoints test as EMA models (see module doc)."""

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        current = checkpoint.get("current_model_state")
        if current is None:
            return
        averaged = {n for n, _ in pl_module.named_parameters()}
        averaged |= {n for n, _ in pl_module.named_buffers()}
        for name in checkpoint["state_dict"]:
            if name not in averaged and name in current:
                checkpoint["state_dict"][name] = current[name]

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            return  # test/validate/predict: the state_dict (the EMA weights) is the model
        super().on_load_checkpoint(trainer, pl_module, checkpoint)
