"""Evaluate a checkpoint: ``python src/eval.py ckpt_path=<file.ckpt> [data=...]``."""

import hydra
from omegaconf import DictConfig

from imgcls.tasks.evaluate import evaluate
from imgcls.tasks.run import run_task


@hydra.main(version_base="1.3", config_path="../configs", config_name="eval")
def main(cfg: DictConfig) -> float | list[float] | None:
    return run_task(evaluate, cfg)


if __name__ == "__main__":
    main()
