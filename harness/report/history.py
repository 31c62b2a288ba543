"""The results store as text: the list of stored runs, and what changed between two of them."""

from __future__ import annotations

from tabulate import tabulate

from harness.report.format import ABSENT, fmt_sig


def render_history(runs: list) -> str:
    """The stored runs (``store.RunSummary``) as a table, newest first."""
    if not runs:
        return "No stored runs; `python -m harness compare` stores one."
    table = [
        [r.run_id, r.created_utc, r.model or ABSENT, r.corpus or ABSENT,
         ABSENT if r.tokens_scored is None else r.tokens_scored, r.reference or ABSENT, f"{r.n_ok}/{r.n_variants}"]
        for r in runs
    ]
    headers = ("run", "created (UTC)", "model", "corpus", "tokens", "reference", "ok/variants")
    return tabulate(table, headers=headers, disable_numparse=True)


_DIFF_SIG = {"ppl": 4, "kld_mean": 3, "prefill_tok_s": 3, "decode_tok_s": 3, "peak_rss_mb": 3}
_NOISE_MARK = {True: " *", False: "", None: " ?"}
_JUDGED = ("ppl", "kld_mean", "prefill_tok_s", "decode_tok_s")  # the metrics a diff says are real or not
DIFF_LEGEND = (
    "B/A: the ratio of run B's figure to run A's with its 95% interval; * = a change beyond the measured noise, "
    "no mark = within it, ? = cannot be judged (a run lacks the repetitions or the standard error). "
    "Speeds: the ratio of the medians, its interval a two-sample bootstrap of the two runs' repetitions, * when it "
    "leaves out 1 (runs stored without repetitions: `range rule`, * when the [min, max] ranges do not overlap). "
    "PPL, KLD: `exact` when both runs scored the same tokens (same model file, corpus and windows; for KLD the same "
    "reference too): accuracy is then deterministic and any difference is real; otherwise the interval comes from "
    "each run's standard error."
)


def _diff_cell(change) -> str:
    """``a → b`` with B/A and its interval (or how the change was judged) and its mark."""
    sig = _DIFF_SIG.get(change.key, 4)
    if change.a is None and change.b is None:
        return ABSENT
    text = f"{fmt_sig(change.a, sig)} → {fmt_sig(change.b, sig)}"
    if change.ratio is None:
        return text
    if change.basis == "exact":
        text += f" ({change.delta_pct:+.2f}%, exact)"
    elif change.ratio_ci is not None:
        text += f" (×{change.ratio:.3f} [{change.ratio_ci[0]:.3f}, {change.ratio_ci[1]:.3f}])"
    elif change.basis == "range":
        text += f" (×{change.ratio:.3f}, range rule)"
    elif change.key in _JUDGED:
        text += f" (×{change.ratio:.3f})"
    else:
        return text + f" ({change.delta_pct:+.1f}%)"
    return text + _NOISE_MARK[change.significant]


def render_diff(run_diff) -> str:
    """What changed from run A to run B (``store.RunDiff``), per variant, each change judged real or not."""
    lines = [f"A = {run_diff.run_a}, B = {run_diff.run_b}"]
    if run_diff.context:
        lines.append("The runs differ in: " + "; ".join(run_diff.context))
    table = []
    for v in run_diff.variants:
        absent = "(absent)"
        status = (v.status_a or absent) if v.status_a == v.status_b else f"{v.status_a or absent} → {v.status_b or absent}"
        table.append([v.variant, status] + [_diff_cell(c) for c in v.changes])
    headers = ("variant", "status", "PPL", "KLD", "prefill tok/s", "decode tok/s", "peak RSS MB")
    lines.append(tabulate(table, headers=headers, disable_numparse=True))
    lines += [_task_change_line(v.variant, change) for v in run_diff.variants for change in v.tasks]
    lines.append(DIFF_LEGEND)
    return "\n".join(lines) + "\n"


def _task_change_line(variant: str, change) -> str:
    """One task metric from A to B (``store.TaskChange``), with its paired difference when the documents match."""
    text = f"{variant}: {change.task} {change.metric} {fmt_sig(change.a, 4)} → {fmt_sig(change.b, 4)}"
    paired = change.paired
    if paired is None:
        return text + " (other documents: not paired)"
    text += (f", paired over {paired.docs} documents: {paired.delta:+.4g} "
             f"[{paired.ci[0]:+.3g}, {paired.ci[1]:+.3g}]")
    if paired.mcnemar_p is not None:
        text += f", McNemar p {paired.mcnemar_p:.3g}"
    return text + ("" if paired.tied else " *")
