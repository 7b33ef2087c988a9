"""``torch.compile`` wraps a module as ``_orig_mod``: the one place that sees through it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

COMPILED_PREFIX = "_orig_mod."


def unwrap(module: nn.Module) -> nn.Module:
    """The module ``torch.compile`` wrapped (itself when not compiled)."""
    return getattr(module, "_orig_mod", module)


def plain_key(key: str) -> str:
    """A state-dict key without ``_orig_mod.`` (checkpoints of compiled nets hold the same weights)."""
    return key.replace(COMPILED_PREFIX, "")


def plain_state_dict(state: Mapping[str, Any]) -> dict[str, Any]:
    return {plain_key(k): v for k, v in state.items()}
