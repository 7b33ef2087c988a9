"""Hydra sweep syntax as Optuna distributions: ``interval(a, b)``, ``tag(log, interval(a, b))``,
``range(a, b[, step])``, ``choice(x, y)``; a plain ``key=value`` is a fixed override. Parsed by
Hydra's own override parser, as ``hydra-optuna-sweeper`` did, so the search space reads the same."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from imgcls.errors import ConfigError


@dataclass
class SearchSpace:
    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    fixed: dict[str, str] = field(default_factory=dict)  # key -> override every trial gets

    def grid(self) -> dict[str, list[Any]]:
        """The values ``GridSampler`` walks: choices, stepped ranges (continuous intervals have
        no grid)."""
        return {name: _grid_values(name, d) for name, d in self.distributions.items()}


def _choices(override: Override) -> CategoricalDistribution:
    # lists become their override text ("[6,16]"): Optuna stores str/int/float/bool/None only
    choices: Any = list(override.sweep_iterator(transformer=Transformer.encode))
    return CategoricalDistribution(choices)


def _distribution(override: Override) -> BaseDistribution:
    if override.is_choice_sweep():
        return _choices(override)
    value: Any = override.value()
    if override.is_range_sweep():
        if value.shuffle:
            return _choices(override)
        # Hydra's range excludes stop; Optuna's high is the last value drawn
        high: Any = max(override.sweep_iterator())  # type: ignore[type-var]
        step = value.step
        if any(isinstance(v, float) for v in (value.start, value.stop, step)):
            return FloatDistribution(float(value.start), float(high), step=float(step))
        return IntDistribution(int(value.start), int(high), step=int(step))
    assert override.is_interval_sweep()
    log = "log" in value.tags
    if isinstance(value.start, int) and isinstance(value.end, int):
        return IntDistribution(value.start, value.end, log=log)
    return FloatDistribution(float(value.start), float(value.end), log=log)


def parse_search_space(overrides: list[str]) -> SearchSpace:
    """``params`` of the sweeper config plus the command line's overrides (later ones win)."""
    space = SearchSpace()
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.get_key_element()
        space.distributions.pop(key, None)
        space.fixed.pop(key, None)
        if override.is_sweep_override():
            space.distributions[key] = _distribution(override)
        else:
            assert override.input_line is not None
            space.fixed[key] = override.input_line
    return space


def _grid_values(name: str, d: BaseDistribution) -> list[Any]:
    if isinstance(d, CategoricalDistribution):
        return list(d.choices)
    step = getattr(d, "step", None)
    if step is None or getattr(d, "log", False):
        raise ConfigError(
            f"hydra.sweeper.params.{name}: GridSampler needs discrete values; use choice(...) "
            f"or range(start, stop, step) instead of interval(...)"
        )
    n = int(round((d.high - d.low) / step)) + 1  # type: ignore[attr-defined]
    return [d.low + i * step for i in range(n)]  # type: ignore[attr-defined]


def _suggest(trial: Any, name: str, d: BaseDistribution) -> Any:
    if isinstance(d, CategoricalDistribution):
        return trial.suggest_categorical(name, d.choices)
    suggest = trial.suggest_int if isinstance(d, IntDistribution) else trial.suggest_float
    return suggest(name, d.low, d.high, step=d.step, log=d.log)  # type: ignore[attr-defined]


def suggest(trial: Any, space: SearchSpace) -> list[str]:
    """Draw the trial's parameters: its job's overrides (searched ones, then the fixed ones)."""
    drawn = [f"{name}={_suggest(trial, name, d)}" for name, d in space.distributions.items()]
    return [*drawn, *space.fixed.values()]
