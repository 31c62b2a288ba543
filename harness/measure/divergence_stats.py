"""A variant against its reference, streamed token by token: paired NLL differences and divergence statistics.

``score_variant`` feeds each block's ``harness.kernels.Divergence`` (KL, top-1
agreement, Δp and both runs' NLL per token) to a ``ReferenceComparison`` and
keeps nothing per token but the two exact-quantile buffers (8 bytes per token
each, for KLD and Δp). The figures are llama-perplexity's ``--kl-divergence``
statistics (``tools/perplexity/perplexity.cpp``), with these relations:

- Paired NLL, with ``d = nll_variant - nll_reference`` per token over the same
  N tokens: ``delta_nll_mean = mean d`` is its "Mean ln(PPL(Q)/PPL(base))";
  ``delta_nll_stderr = std(d, ddof=1) / sqrt(N)`` is the same number as its
  uncertainty ``sqrt(se_Q^2 + se_base^2 - 2 cov)`` (that expression expands to
  var(d)/(N-1) with var(d) = mean(d^2) - mean(d)^2), computed here without the
  cancellation; llama.cpp prints 0 for it below 11 tokens, we do from 2.
  ``delta_ppl_pct = 100 (exp(mean d) - 1)`` is 100 x ("Mean PPL(Q)/PPL(base)" - 1);
  its 95 % interval ``100 (exp(mean d -/+ 1.96 stderr) - 1)`` is the interval on
  the log scale mapped back, so it is slightly asymmetric (llama.cpp's ± on the
  ratio is ``ratio x stderr``, one standard error, to first order).
  ``nll_correlation`` is Pearson's r of the two runs' per-token NLL, its
  "Cor(ln(PPL(Q)), ln(PPL(base)))" as a fraction rather than a percentage.
  ``delta_bits_per_byte = sum d / ln 2 / bytes`` with interval
  ``+/- 1.96 N stderr / ln 2 / bytes``.
- KLD: mean ± stderr (llama.cpp's ``mean_and_uncertainty``), exact max,
  99.9/99/95/90/50/10/5/1/0.1 % quantiles and min (linear interpolation at
  ``q (N - 1)``, as its ``percentile``).
- Δp = p_variant(target) - p_reference(target), a probability (llama.cpp
  prints it x100 as %): mean ± stderr, max, 99.9/99/95/90/75/50/25/10/5/1/0.1 %,
  min, RMS and its uncertainty ``0.5 / rms x stderr(Δp^2)`` (llama.cpp's formula).
- ``top1_agreement`` is its "Same top p" in %, with the binomial
  ``top1_agreement_stderr = 100 sqrt(p (1 - p) / (N - 1))``.
"""

from __future__ import annotations

import math
import sys

import numpy as np

from harness.kernels import Divergence, Quantiles, RunningStats

Z_95 = 1.96  # two-sided 95 % normal quantile
# Past this, exp() overflows a float64: the perplexity is reported as inf.
MAX_EXP_ARG = math.log(sys.float_info.max)

KLD_QUANTILES = (
    ("kld_p999", 0.999), ("kld_p99", 0.99), ("kld_p95", 0.95), ("kld_p90", 0.90), ("kld_p50", 0.50),
    ("kld_p10", 0.10), ("kld_p05", 0.05), ("kld_p01", 0.01), ("kld_p001", 0.001),
)
DELTA_P_QUANTILES = (
    ("delta_p_p999", 0.999), ("delta_p_p99", 0.99), ("delta_p_p95", 0.95), ("delta_p_p90", 0.90),
    ("delta_p_p75", 0.75), ("delta_p_p50", 0.50), ("delta_p_p25", 0.25), ("delta_p_p10", 0.10),
    ("delta_p_p05", 0.05), ("delta_p_p01", 0.01), ("delta_p_p001", 0.001),
)
# The keys of Accuracy.paired_sums, in order ("bytes" is left out when the text is unknown).
PAIRED_SUM_KEYS = (
    "n", "sum_d", "sum_d2", "sum_nll_ref", "sum_nll_ref2", "sum_nll_test", "sum_nll_test2", "sum_nll_ref_nll_test",
    "bytes",
)


def safe_exp(x: float) -> float:
    """exp that reports a hopeless variant's perplexity as inf rather than raising."""
    return math.exp(x) if x < MAX_EXP_ARG else math.inf


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def mean_and_stderr(stats: RunningStats) -> tuple[float, float | None]:
    """Mean and its standard error; the stderr is None below two values.

    llama.cpp's ``sqrt((mean(x^2) - mean(x)^2) / (N - 1))`` equals the sample
    standard deviation over ``sqrt(N)``, which ``RunningStats.sem`` computes
    without the cancellation of the first form.
    """
    return stats.mean, (stats.sem if stats.count > 1 else None)


def ppl_pct(delta_nll: float) -> float:
    """A difference of mean NLL (nats) as a percentage change of perplexity."""
    return 100.0 * (safe_exp(delta_nll) - 1.0)


class PairedNll:
    """Streaming sums of two runs' NLL on the same tokens and of their per-token difference."""

    def __init__(self) -> None:
        self.ref = RunningStats()
        self.test = RunningStats()
        self.diff = RunningStats()
        self.sum_ref_test = 0.0

    def add(self, ref_nll: np.ndarray, test_nll: np.ndarray) -> None:
        """Fold one block of per-token NLL pairs (N,) into the sums."""
        with np.errstate(invalid="ignore"):
            d = test_nll - ref_nll
        # Both runs call the target impossible: they agree, and inf - inf is no number.
        d[np.isnan(d) & np.isinf(test_nll) & np.isinf(ref_nll)] = 0.0
        self.ref.add(ref_nll)
        self.test.add(test_nll)
        self.diff.add(d)
        self.sum_ref_test += float(np.dot(ref_nll, test_nll))

    def sums(self, n_bytes: int | None) -> dict:
        """``Accuracy.paired_sums``: what a reader needs to recompute every paired figure ("bytes" with the text)."""
        values = (
            self.diff.count, self.diff.sum, self.diff.sumsq, self.ref.sum, self.ref.sumsq, self.test.sum,
            self.test.sumsq, self.sum_ref_test, n_bytes,
        )
        return {key: value for key, value in zip(PAIRED_SUM_KEYS, values) if value is not None}

    def correlation(self) -> float | None:
        """Pearson's r of the two NLL series, from the three spreads: cov = (M2_test + M2_ref - M2_d) / 2."""
        scale = math.sqrt(self.test.m2 * self.ref.m2)
        if not scale > 0 or not math.isfinite(scale):
            return None
        r = 0.5 * (self.test.m2 + self.ref.m2 - self.diff.m2) / scale
        return _finite(min(1.0, max(-1.0, r)))

    def summary(self, n_bytes: int | None) -> dict:
        """The paired fields of ``Accuracy``; none when nothing was scored."""
        n = self.diff.count
        if n == 0:
            return {}
        mean, stderr = mean_and_stderr(self.diff)
        stderr = _finite(stderr)
        out = {
            "delta_nll_mean": mean,
            "delta_nll_stderr": stderr,
            "delta_ppl_pct": ppl_pct(mean),
            "delta_ppl_pct_ci": None,
            "nll_correlation": self.correlation(),
            "delta_bits_per_byte": self.diff.sum / math.log(2) / n_bytes if n_bytes else None,
            "delta_bits_per_byte_ci": None,
            "paired_sums": self.sums(n_bytes),
        }
        if stderr is not None and math.isfinite(mean):
            out["delta_ppl_pct_ci"] = [ppl_pct(mean - Z_95 * stderr), ppl_pct(mean + Z_95 * stderr)]
            if n_bytes:
                half = Z_95 * n * stderr / math.log(2) / n_bytes
                out["delta_bits_per_byte_ci"] = [out["delta_bits_per_byte"] - half, out["delta_bits_per_byte"] + half]
        return out


class DivergenceStats:
    """Streaming KLD, Δp and top-1 agreement, with exact quantiles of KLD and Δp."""

    def __init__(self) -> None:
        self.kld = RunningStats()
        self.kld_quantiles = Quantiles()
        self.delta_p = RunningStats()
        self.delta_p_squared = RunningStats()
        self.delta_p_quantiles = Quantiles()
        self.top1_agree = 0

    def add(self, d: Divergence) -> None:
        self.kld.add(d.kld)
        self.kld_quantiles.add(d.kld)
        self.delta_p.add(d.delta_p)
        self.delta_p_squared.add(np.square(d.delta_p))
        self.delta_p_quantiles.add(d.delta_p)
        self.top1_agree += int(np.count_nonzero(d.top1_agree))

    def summary(self) -> dict:
        """The KLD, top-1 and Δp fields of ``Accuracy``; none when nothing was scored."""
        n = self.kld.count
        if n == 0:
            return {}
        kld_mean, kld_stderr = mean_and_stderr(self.kld)
        out = {"kld_mean": kld_mean, "kld_stderr": kld_stderr, "kld_max": self.kld_quantiles.max}
        out.update(zip((k for k, _ in KLD_QUANTILES), self.kld_quantiles.quantiles([q for _, q in KLD_QUANTILES])))
        out["kld_min"] = self.kld_quantiles.min
        agree = self.top1_agree / n
        out["top1_agreement"] = 100.0 * agree
        out["top1_agreement_stderr"] = 100.0 * math.sqrt(agree * (1.0 - agree) / (n - 1)) if n > 1 else None
        out.update(self._delta_p_summary())
        return {key: float(value) if isinstance(value, (float, np.floating)) else value for key, value in out.items()}

    def _delta_p_summary(self) -> dict:
        n = self.delta_p.count
        mean, stderr = mean_and_stderr(self.delta_p)
        out = {"delta_p_mean": mean, "delta_p_stderr": stderr, "delta_p_max": self.delta_p_quantiles.max}
        out.update(zip((k for k, _ in DELTA_P_QUANTILES),
                       self.delta_p_quantiles.quantiles([q for _, q in DELTA_P_QUANTILES])))
        out["delta_p_min"] = self.delta_p_quantiles.min
        rms = math.sqrt(self.delta_p.sumsq / n)
        out["delta_p_rms"] = rms
        _, squared_stderr = mean_and_stderr(self.delta_p_squared)
        if squared_stderr is None:
            out["delta_p_rms_stderr"] = None
        else:  # llama.cpp: d sqrt(x) = dx / (2 sqrt(x)); zero spread when every Δp is 0
            out["delta_p_rms_stderr"] = 0.5 * squared_stderr / rms if rms > 0 else 0.0
        return out


class ReferenceComparison:
    """Everything ``score_variant`` accumulates against a reference: paired NLL and divergence."""

    def __init__(self) -> None:
        self.paired = PairedNll()
        self.divergence = DivergenceStats()

    def add(self, d: Divergence) -> None:
        self.paired.add(d.ref_nll, d.test_nll)
        self.divergence.add(d)

    def summary(self, n_bytes: int | None) -> dict:
        """The fields of ``Accuracy`` measured against the reference."""
        return {**self.paired.summary(n_bytes), **self.divergence.summary()}
