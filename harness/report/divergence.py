"""Reading a variant's accuracy against its reference: paired intervals, ties, the KLD noise floor, and
llama-perplexity's statistics layout.

Pure functions over ``harness.results`` rows, used by ``harness.report`` (the
table, the recommendations, ``show --variant``); nothing here imports Numba.
Stored runs from before the paired statistics lack them: every function falls
back (to the PPL ratio, to no interval) rather than failing.
"""

from __future__ import annotations

import math

from harness.results import RunRecord, VariantRow

ABSENT = "—"
# Two-sided 95 % normal quantile, as harness.measure.divergence_stats.Z_95 (not imported: it loads Numba).
Z_95 = 1.96
# KLD harmless kernel differences give when no other runtime's full-precision variant ran: about twice
# the 4.6e-7 that torch-fp32 and ort-fp32 show against llamacpp-f32 on the default model (1,024 tokens).
DEFAULT_KLD_NOISE_FLOOR = 1e-6
FULL_PRECISIONS = frozenset({"fp32", "f32"})


def paired_delta(row: VariantRow, reference: str | None) -> tuple[float, float] | None:
    """``(mean, stderr)`` of the row's per-token NLL difference from the reference; (0, 0) for the reference."""
    if reference is not None and row.variant == reference and row.ok:
        return 0.0, 0.0
    mean, stderr = row.metric("delta_nll_mean"), row.metric("delta_nll_stderr")
    return None if mean is None or stderr is None else (mean, stderr)


def delta_ppl_interval(row: VariantRow, reference: str | None) -> tuple[float, float] | None:
    """The 95 % interval of ΔPPL % (paired); (0, 0) for the reference; None when the row has none."""
    if reference is not None and row.variant == reference and row.ok and row.metric("ppl") is not None:
        return 0.0, 0.0
    ci = row.accuracy.delta_ppl_pct_ci if row.accuracy is not None else None
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(
            isinstance(v, (int, float)) and math.isfinite(v) for v in ci):
        return float(ci[0]), float(ci[1])
    return None


def delta_ppl_pct(row: VariantRow, ref_ppl: float | None) -> float | None:
    """How much higher the row's PPL is than the reference's, in percent.

    The paired figure (``accuracy.delta_ppl_pct``, from the per-token NLL
    differences) when the row has it, else the ratio of the two PPLs (a stored
    run from before it, the reference itself). On the same tokens both are one
    number up to float rounding.
    """
    paired = row.metric("delta_ppl_pct")
    if paired is not None:
        return paired
    ppl = row.metric("ppl")
    if ppl is None or not ref_ppl:
        return None
    return (ppl / ref_ppl - 1.0) * 100.0


def fmt_delta_ppl(row: VariantRow, ref_ppl: float | None, reference: str | None) -> str:
    """ΔPPL % with the half-width of its 95 % interval, ``+1.10 ± 0.21``; the point value alone without one."""
    value = delta_ppl_pct(row, ref_ppl)
    if value is None:
        return ABSENT
    interval = None if row.variant == reference else delta_ppl_interval(row, reference)
    if interval is None:
        return f"{value:+.2f}"
    return f"{value:+.2f} ± {(interval[1] - interval[0]) / 2:.2f}"


def delta_ppl_upper(row: VariantRow, ref_ppl: float | None, reference: str | None) -> float | None:
    """The upper end of the row's ΔPPL % interval; the point value for a row without one."""
    interval = delta_ppl_interval(row, reference)
    return interval[1] if interval is not None else delta_ppl_pct(row, ref_ppl)


def ties_with_best(best: VariantRow, rows: list[VariantRow], reference: str | None) -> list[VariantRow]:
    """``best`` and every row whose paired difference from it is not significant, in ``rows``' order.

    Both Δ's are measured against the one reference on the same tokens, so the
    difference of the two variants is ``Δa - Δb``. Its standard error depends on
    how the two variants' per-token errors correlate, which the sums do not
    hold; whatever that correlation, it is at most ``se_a + se_b``. The rule
    is therefore conservative: a tie when ``|Δa - Δb| <= 1.96 (se_a + se_b)``,
    i.e. a variant is called less accurate only when that is certain at 95 %
    even in the worst case. A row without paired statistics (a stored run
    from before them) ties only on an identical PPL.
    """
    anchor = paired_delta(best, reference)
    tied = []
    for row in rows:
        other = paired_delta(row, reference)
        if anchor is None or other is None:
            same = row is best or row.metric("ppl") == best.metric("ppl")
        else:
            same = row is best or abs(other[0] - anchor[0]) <= Z_95 * (other[1] + anchor[1])
        if same:
            tied.append(row)
    return tied


def kld_noise_floor(run: RunRecord) -> tuple[float, str | None]:
    """The KLD that harmless kernel differences give in this run, and the variant it comes from.

    The largest ``kld_mean`` among the full-precision (fp32/f32) variants of
    runtimes other than the reference's: they hold the reference's weights, so
    their divergence is arithmetic, not quantization. Without one,
    ``DEFAULT_KLD_NOISE_FLOOR`` (source None).
    """
    ref_row = run.row(run.reference) if run.reference else None
    ref_runtime = ref_row.runtime if ref_row is not None else None
    floors = [
        (row.metric("kld_mean"), row.variant) for row in run.results
        if row.ok and row.variant != run.reference and row.precision in FULL_PRECISIONS
        and row.runtime != ref_runtime and row.metric("kld_mean") is not None
    ]
    return max(floors) if floors else (DEFAULT_KLD_NOISE_FLOOR, None)


def indistinguishable(row: VariantRow, floor: float) -> bool:
    """Whether the row's KLD interval reaches down to the noise floor: ``kld_mean - 1.96 stderr <= floor``."""
    kld = row.metric("kld_mean")
    if not row.ok or kld is None:
        return False
    return kld - Z_95 * (row.metric("kld_stderr") or 0.0) <= floor


# ---- llama-perplexity's printout ------------------------------------------------------------------
def _num(value: float | None, spec: str) -> str:
    """``value`` formatted with ``spec``, or '—' right-aligned to the same width."""
    if value is None or not math.isfinite(value):
        width = int(spec.split(".")[0] or 0)
        return ABSENT.rjust(width)
    return format(value, spec)


def _pm(value: float | None, error: float | None, spec: str, error_spec: str | None = None) -> str:
    return f"{_num(value, spec)} ± {_num(error, error_spec or spec)}"


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


def _base_ppl(row: VariantRow, reference_row: VariantRow | None) -> tuple[float | None, float | None]:
    """PPL(base) ± on the row's own tokens: from its paired sums, else the reference row's figures."""
    sums = row.accuracy.paired_sums if row.accuracy is not None else None
    n = (sums or {}).get("n") or 0
    if n > 1 and sums.get("sum_nll_ref") is not None and sums.get("sum_nll_ref2") is not None:
        mean = sums["sum_nll_ref"] / n
        var = sums["sum_nll_ref2"] / n - mean * mean
        ppl = math.exp(mean)
        return ppl, ppl * math.sqrt(max(var, 0.0) / (n - 1))
    if reference_row is None:
        return None, None
    return reference_row.metric("ppl"), reference_row.metric("ppl_stderr")


def _perplexity_lines(row: VariantRow, reference_row: VariantRow | None) -> list[str]:
    ppl, ppl_unc = row.metric("ppl"), row.metric("ppl_stderr")
    base, base_unc = _base_ppl(row, reference_row)
    cor, mean, se = row.metric("nll_correlation"), row.metric("delta_nll_mean"), row.metric("delta_nll_stderr")
    ratio = math.exp(mean) if mean is not None else None
    diff = diff_unc = None
    if None not in (ppl, base):
        diff = ppl - base
    if None not in (ppl, ppl_unc, base, base_unc, cor):
        # llama.cpp: cov(PPL, PPL_base) = PPL PPL_base cov(ln) with cov(ln) = r se_Q se_base (delta method)
        cov = cor * ppl_unc * base_unc
        diff_unc = math.sqrt(max(ppl_unc ** 2 + base_unc ** 2 - 2.0 * cov, 0.0))
    return [
        "====== Perplexity statistics ======",
        f"Mean PPL(Q)                   : {_pm(ppl, ppl_unc, '10.6f')}",
        f"Mean PPL(base)                : {_pm(base, base_unc, '10.6f')}",
        f"Cor(ln(PPL(Q)), ln(PPL(base))): {_num(_scaled(cor, 100.0), '6.2f')}%",
        f"Mean ln(PPL(Q)/PPL(base))     : {_pm(mean, se, '10.6f')}",
        f"Mean PPL(Q)/PPL(base)         : {_pm(ratio, None if ratio is None or se is None else ratio * se, '10.6f')}",
        f"Mean PPL(Q)-PPL(base)         : {_pm(diff, diff_unc, '10.6f')}",
    ]


_KLD_ROWS = (("Maximum", "kld_max"), ("99.9%  ", "kld_p999"), ("99.0%  ", "kld_p99"), ("95.0%  ", "kld_p95"),
             ("90.0%  ", "kld_p90"), ("Median ", "kld_p50"), ("10.0%  ", "kld_p10"), (" 5.0%  ", "kld_p05"),
             (" 1.0%  ", "kld_p01"), (" 0.1%  ", "kld_p001"), ("Minimum", "kld_min"))
_DELTA_P_ROWS = (("Maximum", "delta_p_max"), ("99.9%  ", "delta_p_p999"), ("99.0%  ", "delta_p_p99"),
                 ("95.0%  ", "delta_p_p95"), ("90.0%  ", "delta_p_p90"), ("75.0%  ", "delta_p_p75"),
                 ("Median ", "delta_p_p50"), ("25.0%  ", "delta_p_p25"), ("10.0%  ", "delta_p_p10"),
                 (" 5.0%  ", "delta_p_p05"), (" 1.0%  ", "delta_p_p01"), (" 0.1%  ", "delta_p_p001"),
                 ("Minimum", "delta_p_min"))


def _divergence_blocks(row: VariantRow) -> list[str]:
    m = row.metric
    lines = ["====== KL divergence statistics ======",
             f"Mean    KLD: {_pm(m('kld_mean'), m('kld_stderr'), '10.6f')}"]
    lines += [f"{label} KLD: {_num(m(key), '10.6f')}" for label, key in _KLD_ROWS]
    pct = lambda key: _scaled(m(key), 100.0)  # noqa: E731  llama.cpp prints Δp in %
    lines += ["", "====== Token probability statistics ======",
              f"Mean    Δp: {_pm(pct('delta_p_mean'), pct('delta_p_stderr'), '6.3f', '5.3f')} %"]
    lines += [f"{label} Δp: {_num(pct(key), '6.3f')}%" for label, key in _DELTA_P_ROWS]
    lines += [f"RMS Δp    : {_pm(pct('delta_p_rms'), pct('delta_p_rms_stderr'), '6.3f', '5.3f')} %",
              f"Same top p: {_pm(m('top1_agreement'), m('top1_agreement_stderr'), '6.3f', '5.3f')} %"]
    return lines


def divergence_lines(row: VariantRow, reference_row: VariantRow | None) -> list[str]:
    """The row's statistics against its reference, laid out as ``llama-perplexity --kl-divergence`` prints them.

    Δp is shown in percent, as llama.cpp prints it (report.json keeps it a
    probability). A figure a stored run lacks is '—'. For the reference itself,
    a run without one, or a variant that did not run, a line says why in place
    of the divergence blocks.
    """
    if not row.ok or row.accuracy is None:
        return [f"{row.variant}: {row.status}" + (f": {row.error}" if row.error else "") + "; no statistics."]
    lines = _perplexity_lines(row, reference_row) + [""]
    if reference_row is not None and row.variant == reference_row.variant:
        return lines + [f"{row.variant} is the reference: nothing to diverge from."]
    if row.metric("kld_mean") is None:
        return lines + [f"No divergence statistics for {row.variant}: the run has no reference to compare with."]
    return lines + _divergence_blocks(row)
