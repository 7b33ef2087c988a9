"""Data sources (LightningDataModules) and the pieces they share."""

from imgcls.data.spec import DataSpec

__all__ = ["DataSpec"]
