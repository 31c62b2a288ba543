"""The results store: every finished run kept in one SQLite file, listed, reloaded and compared.

One row per run in a ``runs`` table: a few columns to list runs without
parsing them, and the whole run (environment included) as JSON, so a stored
run renders exactly as it did when it finished.
"""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from tabulate import tabulate

from harness import report
from harness.errors import UserError
from harness.paths import STORE_ENV, data_dir
from harness.report_files import json_safe

STORE_NAME = "harness.sqlite"
STORE_SCHEMA_VERSION = 1  # kept in PRAGMA user_version
SPEED_KEYS = ("prefill_tok_s", "decode_tok_s")
DIFF_KEYS = ("ppl", "kld_mean", "prefill_tok_s", "decode_tok_s", "peak_rss_mb")
# Run-level facts that, when they differ, explain a change in the numbers.
CONTEXT_SECTIONS = ("model", "corpus", "environment", "settings")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    created_utc TEXT NOT NULL,
    model TEXT,
    corpus TEXT,
    tokens_scored INTEGER,
    reference TEXT,
    n_variants INTEGER NOT NULL,
    n_ok INTEGER NOT NULL,
    run_json TEXT NOT NULL
)
"""


def default_path() -> Path:
    """$HARNESS_STORE if set, else ``harness.sqlite`` in the user's data dir."""
    if os.environ.get(STORE_ENV):
        return Path(os.environ[STORE_ENV]).expanduser().resolve()
    return data_dir() / STORE_NAME


def _open(path: str | os.PathLike | None) -> sqlite3.Connection:
    path = Path(path).expanduser() if path else default_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.execute(_SCHEMA)
    conn.execute(f"PRAGMA user_version = {STORE_SCHEMA_VERSION}")
    return conn


@dataclass(frozen=True)
class RunSummary:
    """One stored run as ``history`` lists it."""

    run_id: str
    created_utc: str
    model: str | None
    corpus: str | None
    tokens_scored: int | None
    reference: str | None
    n_variants: int
    n_ok: int


def save(run: dict, path: str | os.PathLike | None = None) -> str:
    """Store ``run`` (replacing a stored run with the same id, as ``--resume`` re-saves); returns its id."""
    if not run.get("run_id"):
        raise ValueError("save: the run has no run_id")
    run = json_safe(run)  # numpy scalars would reach SQLite as blobs
    rows = run.get("results", [])
    corpus = run.get("corpus") or {}
    record = (
        run["run_id"],
        run.get("created_utc") or "",
        (run.get("model") or {}).get("name"),
        corpus.get("name"),
        corpus.get("tokens_scored"),
        run.get("reference"),
        len(rows),
        sum(report.is_ok(r) for r in rows),
        json.dumps(run, allow_nan=False),
    )
    with closing(_open(path)) as conn, conn:
        conn.execute("INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", record)
    return run["run_id"]


def list_runs(path: str | os.PathLike | None = None) -> list[RunSummary]:
    """Every stored run, newest first; empty when the store does not exist yet."""
    if not Path(path or default_path()).expanduser().exists():
        return []
    with closing(_open(path)) as conn:
        records = conn.execute(
            "SELECT run_id, created_utc, model, corpus, tokens_scored, reference, n_variants, n_ok "
            "FROM runs ORDER BY created_utc DESC, run_id DESC"
        ).fetchall()
    return [RunSummary(*record) for record in records]


def load(run_id: str, path: str | os.PathLike | None = None) -> dict:
    """The stored run whose id is ``run_id`` or starts with it (a unique prefix)."""
    store_path = Path(path or default_path()).expanduser()
    if not store_path.exists():
        raise UserError(f"run {run_id!r}: no results store at {store_path}; "
                        "run `python -m harness compare` first or pass --store")
    if not run_id:
        raise UserError("empty run id; `python -m harness history` lists the stored runs")
    with closing(_open(store_path)) as conn:
        exact = conn.execute("SELECT run_json FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if exact:
            return json.loads(exact[0])
        matches = conn.execute(
            "SELECT run_id, run_json FROM runs WHERE substr(run_id, 1, ?) = ? ORDER BY run_id",
            (len(run_id), run_id),
        ).fetchall()
    if not matches:
        raise UserError(f"run {run_id!r}: no such run in {store_path}; `python -m harness history` lists them")
    if len(matches) > 1:
        shown = ", ".join(m[0] for m in matches[:5]) + (", ..." if len(matches) > 5 else "")
        raise UserError(f"run {run_id!r} is ambiguous: it starts {len(matches)} run ids ({shown}); give more characters")
    return json.loads(matches[0][1])


@dataclass(frozen=True)
class Change:
    """One metric of one variant in run A and run B."""

    key: str
    a: float | None
    b: float | None
    beyond_noise: bool | None = None  # speeds only; None when either run has no spread

    @property
    def delta_pct(self) -> float | None:
        if self.a is None or self.b is None or self.a == 0:
            return None
        return (self.b / self.a - 1.0) * 100.0


@dataclass(frozen=True)
class VariantDiff:
    variant: str
    status_a: str | None  # None: not in that run
    status_b: str | None
    changes: tuple[Change, ...]


@dataclass(frozen=True)
class RunDiff:
    run_a: str
    run_b: str
    context: tuple[str, ...]  # "corpus.ctx: 512 -> 1024", facts that differ between the runs
    variants: tuple[VariantDiff, ...]


def _spread(row: dict, key: str) -> tuple[float, float] | None:
    spread = (row.get("efficiency") or {}).get(f"{key}_spread")
    if isinstance(spread, (list, tuple)) and len(spread) == 2 and None not in spread:
        return float(spread[0]), float(spread[1])
    return None


def speed_beyond_noise(row_a: dict, row_b: dict, key: str) -> bool | None:
    """Whether a speed changed by more than its measured noise.

    Rule: the change is beyond noise when the [min, max] ranges of the measured
    repetitions in the two runs do not overlap, i.e. every repetition of one
    run was faster than every repetition of the other. None when either run
    lacks the spread.
    """
    a, b = _spread(row_a, key), _spread(row_b, key)
    if a is None or b is None:
        return None
    return a[1] < b[0] or b[1] < a[0]


def _flatten(value, prefix: str) -> dict:
    if isinstance(value, dict):
        flat = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}"))
        return flat
    return {prefix: value}


def _context_changes(run_a: dict, run_b: dict) -> tuple[str, ...]:
    flat_a, flat_b = {}, {}
    for section in CONTEXT_SECTIONS + ("reference",):
        flat_a.update(_flatten(run_a.get(section), section))
        flat_b.update(_flatten(run_b.get(section), section))
    keys = dict.fromkeys(list(flat_a) + list(flat_b))
    return tuple(f"{k}: {flat_a.get(k)} -> {flat_b.get(k)}" for k in keys if flat_a.get(k) != flat_b.get(k))


def diff(run_a: dict, run_b: dict) -> RunDiff:
    """Per variant (in A's order, then B's new ones), what changed in PPL, KLD, speeds and peak RSS."""
    rows_a = {r.get("variant"): r for r in run_a.get("results", [])}
    rows_b = {r.get("variant"): r for r in run_b.get("results", [])}
    variants = []
    for name in dict.fromkeys(list(rows_a) + list(rows_b)):
        row_a, row_b = rows_a.get(name, {}), rows_b.get(name, {})
        changes = tuple(
            Change(
                key,
                report.metric(row_a, key),
                report.metric(row_b, key),
                speed_beyond_noise(row_a, row_b, key) if key in SPEED_KEYS else None,
            )
            for key in DIFF_KEYS
        )
        variants.append(VariantDiff(name, row_a.get("status"), row_b.get("status"), changes))
    return RunDiff(run_a.get("run_id", "A"), run_b.get("run_id", "B"), _context_changes(run_a, run_b), tuple(variants))


def render_history(runs: list[RunSummary]) -> str:
    """The stored runs as a table, newest first."""
    if not runs:
        return "No stored runs; `python -m harness compare` stores one."
    table = [
        [r.run_id, r.created_utc, r.model or report.ABSENT, r.corpus or report.ABSENT,
         report.ABSENT if r.tokens_scored is None else r.tokens_scored, r.reference or report.ABSENT,
         f"{r.n_ok}/{r.n_variants}"]
        for r in runs
    ]
    headers = ("run", "created (UTC)", "model", "corpus", "tokens", "reference", "ok/variants")
    return tabulate(table, headers=headers, disable_numparse=True)


_DIFF_SIG = {"ppl": 4, "kld_mean": 3, "prefill_tok_s": 3, "decode_tok_s": 3, "peak_rss_mb": 3}
_NOISE_MARK = {True: " *", False: "", None: " ?"}


def _cell(change: Change) -> str:
    sig = _DIFF_SIG.get(change.key, 4)
    if change.a is None and change.b is None:
        return report.ABSENT
    text = f"{report.fmt_sig(change.a, sig)} → {report.fmt_sig(change.b, sig)}"
    if change.delta_pct is not None:
        text += f" ({change.delta_pct:+.1f}%)"
    if change.key in SPEED_KEYS and change.a is not None and change.b is not None:
        text += _NOISE_MARK[change.beyond_noise]
    return text


def render_diff(run_diff: RunDiff) -> str:
    """What changed from run A to run B, per variant, with the speed noise verdicts."""
    lines = [f"A = {run_diff.run_a}, B = {run_diff.run_b}"]
    if run_diff.context:
        lines.append("The runs differ in: " + "; ".join(run_diff.context))
    table = []
    for v in run_diff.variants:
        absent = "(absent)"
        status = (v.status_a or absent) if v.status_a == v.status_b else f"{v.status_a or absent} → {v.status_b or absent}"
        table.append([v.variant, status] + [_cell(c) for c in v.changes])
    headers = ("variant", "status", "PPL", "KLD", "prefill tok/s", "decode tok/s", "peak RSS MB")
    lines.append(tabulate(table, headers=headers, disable_numparse=True))
    lines.append(
        "speeds: * = beyond the measured noise (the [min, max] ranges of the two runs' repetitions do not overlap); "
        "no mark = within it; ? = a run has no spread."
    )
    return "\n".join(lines) + "\n"
