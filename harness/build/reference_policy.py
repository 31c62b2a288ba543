"""Which variant of a model the others are compared against: the one named, else the first full-precision
variant whose runtime runs here."""

from __future__ import annotations

from typing import Collection, Sequence

from harness.build.sources import Source
from harness.build.variants import FIXED_SPECS, catalogue
from harness.errors import UserError
from harness.manifest import Variant

# Full-precision variants (all hold the source's weights unchanged) in the order one becomes the
# reference when none is named: the first whose runtime imports and that this run has. The reference
# is scored once, first, and its logits are recorded for the others (harness.measure.reference_record), so
# the fastest of them goes first.
REFERENCE_ORDER = ("llamacpp-f32", "ort-fp32", "torch-fp32")
NO_REFERENCE = "none"  # the reference setting that compares against nothing


def with_reference(names: list[str] | None, reference: str | None, source: Source | None = None,
                   device: str = "cpu") -> list[str] | None:
    """The variants to prepare: the requested ones plus the reference (None: every variant).

    Without a named ``reference`` the fallback is the first of ``REFERENCE_ORDER`` whose
    runtime imports, among ``source``'s variants when ``source`` is given.
    """
    if names is None or reference == NO_REFERENCE:
        return names
    if not reference:
        candidates = [s.name for s in catalogue(source, None, device)] if source is not None else REFERENCE_ORDER
        reference = _fallback_reference(candidates, device)
    return names if reference is None or reference in names else [*names, reference]


def choose_reference(requested: str | None, variants: Sequence[Variant], device: str = "cpu") -> Variant | None:
    """The variant the others are compared against: ``requested``, else the fallback among ``variants``.

    None when ``requested`` is ``NO_REFERENCE`` or no full-precision variant can run here.
    """
    if requested == NO_REFERENCE:
        return None
    by_name = {v.name: v for v in variants}
    if requested:
        if requested not in by_name:
            raise UserError(f"not a variant of this run; choose from {', '.join([*by_name, NO_REFERENCE])}",
                            setting="reference", value=requested)
        return by_name[requested]
    name = _fallback_reference(by_name, device)
    return by_name[name] if name else None


def _fallback_reference(candidates: Collection[str], device: str = "cpu") -> str | None:
    """The first of ``REFERENCE_ORDER`` among ``candidates`` whose runtime imports here and runs on ``device``."""
    from harness.backends import runtime_unavailable_reason

    for name in REFERENCE_ORDER:
        if name in candidates and runtime_unavailable_reason(FIXED_SPECS[name].runtime, device) is None:
            return name
    return None
