"""``--sweep AXIS=V1,V2``: the operating points a run measures speed at, and the KV-cache types it adds as rows.

Two kinds of axis:

- a point's coordinates (``Point.AXES``): ``depth``, ``batch``, ``threads``, ``prompt``, ``gen``. The
  speed tests run at every point of the product of the axes given; an axis not given stays at the run's
  value (depth 0, batch 1, the run's threads, ``--prompt-tokens``, ``--gen-tokens``).
- a runtime setting that changes the numbers, llama.cpp's KV-cache types (``llamacpp-type-k``,
  ``llamacpp-type-v``): each value is a deployment choice like the weights' precision, so every llama.cpp
  variant gets a row of its own per value, accuracy included (``kv_variant_name``).

Everything here is checked before anything is built: one ``UserError`` per mistake.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from harness.backends.llamacpp.config import KV_CACHE_TYPES, LlamaCppSettings
from harness.errors import UserError
from harness.results import Point

# axis -> the least value it takes
POINT_AXES = {"depth": 0, "batch": 1, "threads": 1, "prompt": 1, "gen": 1}
# axis -> (runtime, its settings field, the values it takes)
SETTING_AXES = {
    "llamacpp-type-k": ("llamacpp", "type_k", KV_CACHE_TYPES),
    "llamacpp-type-v": ("llamacpp", "type_v", KV_CACHE_TYPES),
}
_SETTING_TAGS = {"type_k": "ctk", "type_v": "ctv"}  # llama-bench's flags, in row names


@dataclass(frozen=True)
class Sweep:
    """The axes of ``--sweep``, each with its values in the order given (duplicates dropped)."""

    points_axes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    settings_axes: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.points_axes and not self.settings_axes

    def as_dict(self) -> dict[str, list]:
        return {**{a: list(v) for a, v in self.points_axes.items()}, **{a: list(v) for a, v in self.settings_axes.items()}}

    def points(self, threads: int, prompt: int, gen: int) -> list[Point]:
        """Every point of the product of the point axes; none when no point axis was given (the run's one point
        is then the variant's own row)."""
        if not self.points_axes:
            return []
        base = {"depth": (0,), "batch": (1,), "threads": (threads,), "prompt": (prompt,), "gen": (gen,)}
        axes = {**base, **self.points_axes}
        return [Point(**dict(zip(Point.AXES, values))) for values in itertools.product(*(axes[a] for a in Point.AXES))]

    def swept(self) -> list[str]:
        """The point axes with more than one value, in the order given: the first is the headline axis."""
        return [axis for axis, values in self.points_axes.items() if len(values) > 1]

    def setting_combinations(self, settings: LlamaCppSettings) -> list[dict[str, str]]:
        """Each combination of the KV-type values that differs from ``settings``: {field: value}."""
        if not self.settings_axes:
            return []
        fields = [SETTING_AXES[axis][1] for axis in self.settings_axes]
        combos = [dict(zip(fields, values)) for values in itertools.product(*self.settings_axes.values())]
        return [c for c in combos if any(getattr(settings, f) != v for f, v in c.items())]


def kv_variant_name(variant: str, combination: dict[str, str]) -> str:
    """The row name of a llama.cpp variant with other KV-cache types: ``llamacpp-q8_0+ctk-q8_0``."""
    return variant + "".join(f"+{_SETTING_TAGS[f]}-{v}" for f, v in sorted(combination.items()))


def parse_sweep(items: tuple[str, ...] | None) -> Sweep:
    """The axes of the ``--sweep`` items (``AXIS=V1,V2``); an axis given twice, or a bad value, is a UserError."""
    points: dict[str, tuple[int, ...]] = {}
    settings: dict[str, tuple[str, ...]] = {}
    for item in items or ():
        axis, sep, text = item.partition("=")
        axis = axis.strip()
        if not sep or not axis:
            raise UserError("give AXIS=V1,V2, e.g. depth=0,4096", setting="sweep", value=item)
        if axis in points or axis in settings:
            raise UserError(f"{axis} is swept twice; give each axis once with all its values", setting="sweep",
                            value=item)
        values = [v.strip() for v in text.split(",") if v.strip()]
        if not values:
            raise UserError(f"give {axis} at least one value", setting="sweep", value=item)
        if axis in POINT_AXES:
            points[axis] = tuple(dict.fromkeys(_whole(axis, v, item) for v in values))
        elif axis in SETTING_AXES:
            allowed = SETTING_AXES[axis][2]
            for value in values:
                if value not in allowed:
                    raise UserError(f"{value!r} is not a KV-cache type; pass some of {', '.join(allowed)}",
                                    setting="sweep", value=item)
            settings[axis] = tuple(dict.fromkeys(values))
        else:
            known = ", ".join([*POINT_AXES, *SETTING_AXES])
            raise UserError(f"unknown axis {axis!r}; sweep one of {known}", setting="sweep", value=item)
    return Sweep(points, settings)


def _whole(axis: str, text: str, item: str) -> int:
    low = POINT_AXES[axis]
    try:
        value = int(text)
    except ValueError:
        raise UserError(f"{text!r} is not a whole number", setting="sweep", value=item) from None
    if value < low:
        raise UserError(f"{axis} must be at least {low}", setting="sweep", value=item)
    return value


def check_fits(sweep: Sweep, points: list[Point], trained_ctx: int | None, usable_cores: int, model: str) -> None:
    """Refuse a point past the model's trained context, or more threads than this machine's usable cores."""
    for point in points:
        tokens = point.depth + point.prompt + point.gen
        if trained_ctx and tokens > trained_ctx:
            raise UserError(f"depth {point.depth} + prompt {point.prompt} + gen {point.gen} = {tokens} tokens is past "
                            f"{model}'s trained context of {trained_ctx}; sweep smaller values", setting="sweep",
                            value=_item(sweep, "depth" if "depth" in sweep.points_axes else "prompt"))
    for threads in sweep.points_axes.get("threads", ()):
        if threads > usable_cores:
            raise UserError(f"this machine lets the run use {usable_cores} cores; sweep threads up to {usable_cores}",
                            setting="sweep", value=_item(sweep, "threads"))


def _item(sweep: Sweep, axis: str) -> str:
    values = sweep.points_axes.get(axis) or sweep.settings_axes.get(axis) or ()
    return f"{axis}={','.join(map(str, values))}"
