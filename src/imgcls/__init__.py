"""imgcls: an image-classification research template (PyTorch Lightning + Hydra)."""

import importlib.util
import sys
import warnings

from imgcls.utils.config import register_resolvers

# configs/hydra/launcher/submitit_*.yaml merge onto the submitit schema of the same name on
# purpose (typed fields); Hydra 1.3 warns that is deprecated. They are complete configs anyway.
warnings.filterwarnings(
    "ignore", message=r"(?s).*validated against ConfigStore schema with the same name"
)

register_resolvers()


class _TorchmetricsWithoutPyplot:
    """torchmetrics imports ``matplotlib.pyplot`` when it loads, if matplotlib is installed
    (0.2-0.5 s of every start-up), only for ``Metric.plot``, which this package does not call; its
    check says "not installed" while torchmetrics loads. Our figures import matplotlib when they
    draw (``imgcls.runs.figures``)."""

    def find_spec(self, name: str, path=None, target=None):
        if name != "torchmetrics":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            from lightning_utilities.core.imports import RequirementCache

            check = RequirementCache.__bool__
            RequirementCache.__bool__ = lambda r: r.requirement != "matplotlib" and check(r)
            try:
                run(module)
            finally:
                RequirementCache.__bool__ = check

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if "torchmetrics" not in sys.modules:
    sys.meta_path.insert(0, _TorchmetricsWithoutPyplot())

__version__ = "0.1.0"
