"""Predict images with a checkpoint: ``python src/predict.py ckpt_path=<file.ckpt> input=<images>``.

``input`` is an image file, a folder of images, or a CSV of image names; ``predictions.csv`` (and
``submission.csv`` for CSV input) goes into the run dir."""

import hydra
from omegaconf import DictConfig

from imgcls.tasks.predict import predict
from imgcls.tasks.run import run_task


@hydra.main(version_base="1.3", config_path="../configs", config_name="predict")
def main(cfg: DictConfig) -> float | list[float] | None:
    return run_task(predict, cfg)


if __name__ == "__main__":
    main()
