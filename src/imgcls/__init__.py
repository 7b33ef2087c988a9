"""imgcls: an image-classification research template (PyTorch Lightning + Hydra)."""

from imgcls.utils.config import register_resolvers

register_resolvers()

__version__ = "0.1.0"
