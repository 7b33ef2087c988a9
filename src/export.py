"""Export a checkpoint: ``python src/export.py ckpt_path=<file.ckpt> format=onnx|torchscript|pt2``.

Writes the model and a sidecar JSON (class names, preprocessing) into the run dir and prints the
parity check against the Lightning module."""

import hydra
from omegaconf import DictConfig

from imgcls.tasks.export import export
from imgcls.tasks.run import run_task


@hydra.main(version_base="1.3", config_path="../configs", config_name="export")
def main(cfg: DictConfig) -> float | list[float] | None:
    return run_task(export, cfg)


if __name__ == "__main__":
    main()
