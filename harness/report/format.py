"""How the report writes a figure: significant digits, PPL ± its error, a speed with its interval, sizes."""

from __future__ import annotations

import math

from harness.results import VariantRow

ABSENT = "—"


def fmt_sig(value: float | None, sig: int = 4) -> str:
    """``value`` to ``sig`` significant figures in fixed notation (tiny values in e-notation), or '—'."""
    if value is None:
        return ABSENT
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    if magnitude < -3:
        return f"{value:.{sig - 1}e}"
    return f"{value:.{max(sig - 1 - magnitude, 0)}f}"


def fmt_ppl(row: VariantRow) -> str:
    """PPL ± its standard error: 4 significant figures, the error to 2."""
    ppl, stderr = row.metric("ppl"), row.metric("ppl_stderr")
    if ppl is None:
        return ABSENT
    return fmt_sig(ppl, 4) if stderr is None else f"{fmt_sig(ppl, 4)} ± {fmt_sig(stderr, 2)}"


def fmt_signed_pct(value: float | None) -> str:
    return ABSENT if value is None else f"{value:+.2f}"


def fmt_speed(row: VariantRow, key: str) -> str:
    """A repeated figure to 3 significant figures, ``±h%`` half its 95 % interval, ``~`` when it missed the target.

    ``69.5±2.1%``; ``69.5±6.3%~``. A run stored before intervals shows no ``±``
    (its ``~`` then meant a [min, max] spread over 10 % of the median).
    """
    value = row.metric(key)
    if value is None:
        return ABSENT
    text = fmt_sig(value, 3)
    interval = row.efficiency.interval(key) if row.efficiency is not None else None
    if interval is not None and value != 0:
        half_pct = 100.0 * (interval[1] - interval[0]) / 2.0 / abs(value)
        text += f"±{half_pct:.1f}%" if half_pct < 9.95 else f"±{half_pct:.0f}%"
    return text + ("~" if row.is_noisy(key) else "")


def fmt_mb(value_bytes: float | None) -> str:
    return ABSENT if value_bytes is None else f"{value_bytes / 1e6:.1f}"


def fmt_fixed(value: float | None, digits: int) -> str:
    return ABSENT if value is None else f"{value:.{digits}f}"


def precision_label(row: VariantRow) -> str:
    """The precision, with what else sets the row apart (``+ctk-q8_0``: --sweep's KV-cache type)."""
    extra = row.variant.partition("+")[2]
    return (row.precision or ABSENT) + (f" +{extra}" if extra else "")
