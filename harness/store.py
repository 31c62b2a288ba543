"""The results store: every finished run kept in one SQLite file, listed, reloaded and compared.

One row per run in a ``runs`` table: a few columns to list runs without
parsing them, and the whole run (environment included) as JSON, so a stored
run renders exactly as it did when it finished. ``check`` tells a file that is
no store (a text file, a damaged database) before any work is done.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UserError
from harness.paths import STORE_ENV, data_dir
from harness.results import RunRecord, VariantRow, json_safe
from harness.stats import PairedOutcomes, paired_outcomes, ratio_of_medians

STORE_NAME = "harness.sqlite"
STORE_SCHEMA_VERSION = 1  # kept in PRAGMA user_version
SPEED_KEYS = ("prefill_tok_s", "decode_tok_s")
DIFF_KEYS = ("ppl", "kld_mean", "prefill_tok_s", "decode_tok_s", "peak_rss_mb")
# Run-level facts that, when they differ, explain a change in the numbers.
CONTEXT_SECTIONS = ("models", "corpus", "environment", "settings")

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


def resolve_path(path: str | os.PathLike | None) -> Path:
    return Path(path).expanduser() if path else default_path()


def check(path: str | os.PathLike | None = None) -> Path:
    """The store's path, once it is known to be usable: a harness store, or a file that can be created there.

    Raises ``UserError`` naming the file and what to do, so ``compare`` fails
    before measuring rather than when saving.
    """
    store_path = resolve_path(path)
    if store_path.is_dir():
        raise _not_a_store(store_path, "it is a folder")
    if not store_path.exists():
        folder = next(p for p in store_path.parents if p.exists())  # created when the first run is saved
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise _not_a_store(store_path, f"{folder} is not a writable folder")
        return store_path
    try:
        with closing(sqlite3.connect(f"file:{store_path}?mode=ro", uri=True)) as conn:
            tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and "runs" not in tables:
                raise _not_a_store(store_path, "it is a SQLite database of something else")
            if "runs" in tables:
                conn.execute("SELECT run_id, run_json FROM runs LIMIT 1").fetchall()
    except sqlite3.DatabaseError as exc:
        raise _not_a_store(store_path, f"it is not a SQLite database ({exc})") from None
    return store_path


def _not_a_store(path: Path, why: str) -> UserError:
    return UserError(f"not a harness results store: {why}; pass another file or move this one away",
                     setting="store", value=path)


def _open(path: str | os.PathLike | None) -> sqlite3.Connection:
    path = check(path)
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


def save(run: RunRecord, path: str | os.PathLike | None = None) -> str:
    """Store ``run`` (replacing a stored run with the same id, as ``--resume`` re-saves); returns its id."""
    if not run.run_id:
        raise ValueError("save: the run has no run_id")
    document = json_safe(run.to_dict())  # numpy scalars would reach SQLite as blobs
    record = (
        document["run_id"],
        document["created_utc"] or "",
        run.title,
        document["corpus"]["name"],
        document["models"][0].get("tokens_scored") if len(run.models) == 1 else None,  # several: one count each
        ", ".join(dict.fromkeys(m["reference"] for m in document["models"] if m.get("reference"))) or None,
        len(run.results),
        sum(r.ok for r in run.results),
        json.dumps(document, allow_nan=False),
    )
    with closing(_open(path)) as conn, conn:
        conn.execute("INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", record)
    return run.run_id


def list_runs(path: str | os.PathLike | None = None) -> list[RunSummary]:
    """Every stored run, newest first; empty when the store does not exist yet."""
    if not check(path).exists():
        return []
    with closing(_open(path)) as conn:
        records = conn.execute(
            "SELECT run_id, created_utc, model, corpus, tokens_scored, reference, n_variants, n_ok "
            "FROM runs ORDER BY created_utc DESC, run_id DESC"
        ).fetchall()
    return [RunSummary(*record) for record in records]


def load(run_id: str, path: str | os.PathLike | None = None) -> RunRecord:
    """The stored run whose id is ``run_id`` or starts with it (a unique prefix)."""
    store_path = check(path)
    if not store_path.exists():
        raise UserError(f"run {run_id!r}: no results store at {store_path}; "
                        "run `python -m harness compare` first or pass --store")
    if not run_id:
        raise UserError("empty run id; `python -m harness history` lists the stored runs")
    with closing(_open(store_path)) as conn:
        exact = conn.execute("SELECT run_json FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if exact:
            return RunRecord.from_dict(json.loads(exact[0]))
        matches = conn.execute(
            "SELECT run_id, run_json FROM runs WHERE substr(run_id, 1, ?) = ? ORDER BY run_id",
            (len(run_id), run_id),
        ).fetchall()
    if not matches:
        raise UserError(f"run {run_id!r}: no such run in {store_path}; `python -m harness history` lists them")
    if len(matches) > 1:
        shown = ", ".join(m[0] for m in matches[:5]) + (", ..." if len(matches) > 5 else "")
        raise UserError(f"run {run_id!r} is ambiguous: it starts {len(matches)} run ids ({shown}); give more characters")
    return RunRecord.from_dict(json.loads(matches[0][1]))


# How a change was judged (``Change.basis``).
BOOTSTRAP = "bootstrap"  # the two runs' repetitions: ratio of medians with a two-sample bootstrap interval
RANGE = "range"  # a run stored without its repetitions: significant when the [min, max] ranges do not overlap
EXACT = "exact"  # both runs scored the same tokens: accuracy is deterministic, any difference is real
STDERR = "stderr"  # different tokens: each run's standard error, as independent estimates
STDERR_KEYS = {"ppl": "ppl_stderr", "kld_mean": "kld_stderr"}
Z_95 = 1.959963984540054
# The facts that fix the token ids a model's variants scored: the model's (its file's hash among them) and the corpus's.
MODEL_TOKEN_FACTS = ("source_sha256", "tokenizer", "tokens_scored", "windows")
CORPUS_TOKEN_FACTS = ("name", "source", "protocol", "ctx", "text_bytes")


@dataclass(frozen=True)
class Change:
    """One metric of one variant in run A and run B, and whether the difference is real."""

    key: str
    a: float | None
    b: float | None
    significant: bool | None = None  # None: nothing to judge it by (or a metric that is not judged)
    ratio_ci: tuple[float, float] | None = None  # 95 % interval of b / a
    basis: str | None = None  # BOOTSTRAP, RANGE, EXACT or STDERR

    @property
    def is_speed(self) -> bool:
        return self.key in SPEED_KEYS

    @property
    def ratio(self) -> float | None:
        if self.a is None or self.b is None or self.a == 0:
            return None
        return self.b / self.a

    @property
    def delta_pct(self) -> float | None:
        ratio = self.ratio
        return None if ratio is None else (ratio - 1.0) * 100.0


@dataclass(frozen=True)
class VariantDiff:
    variant: str
    status_a: str | None  # None: not in that run
    status_b: str | None
    changes: tuple[Change, ...]
    tasks: tuple["TaskChange", ...] = ()


@dataclass(frozen=True)
class TaskChange:
    """One lm-eval task metric in A and B; paired by document when both runs scored the same documents."""

    task: str
    metric: str
    a: float | None
    b: float | None
    paired: PairedOutcomes | None  # B - A over the shared documents; None when they scored other documents


def task_changes(row_a: VariantRow | None, row_b: VariantRow | None) -> tuple[TaskChange, ...]:
    """Every task metric both rows scored, A then B, paired by document (B - A) where their documents are the same."""
    tasks_a, tasks_b = (row_a.tasks or {}) if row_a else {}, (row_b.tasks or {}) if row_b else {}
    changes = []
    for task in (t for t in tasks_a if t in tasks_b):
        a, b = tasks_a[task], tasks_b[task]
        for metric in (m for m in a.metrics if m in b.metrics):
            paired = None
            if metric in a.outcomes and metric in b.outcomes and sorted(a.doc_ids) == sorted(b.doc_ids):
                by_doc = dict(zip(a.doc_ids, a.outcomes[metric]))
                paired = paired_outcomes(b.outcomes[metric], [by_doc[d] for d in b.doc_ids])
            changes.append(TaskChange(task, metric, a.metrics[metric], b.metrics[metric], paired))
    return tuple(changes)


@dataclass(frozen=True)
class RunDiff:
    run_a: str
    run_b: str
    context: tuple[str, ...]  # "corpus.ctx: 512 -> 1024", facts that differ between the runs
    variants: tuple[VariantDiff, ...]
    same_tokens: bool = False  # both runs scored the same token ids (``same_tokens``)


def speed_change(row_a: VariantRow | None, row_b: VariantRow | None, key: str) -> Change:
    """A speed in A and B, judged on the two runs' repetitions.

    With both runs' values: the ratio of the medians B/A and its 95 %
    two-sample bootstrap interval (``stats.ratio_of_medians``), significant
    when the interval leaves out 1. A run stored before the values were kept
    falls back to the [min, max] rule: significant when the two ranges do not
    overlap (what the bootstrap gives with 3 repetitions a side). Neither:
    not judged.
    """
    a, b = _metric(row_a, key), _metric(row_b, key)
    if a is None or b is None:
        return Change(key, a, b)
    effs = [row.efficiency if row is not None else None for row in (row_a, row_b)]
    values = [eff.values(key) if eff is not None else None for eff in effs]
    if None not in values and min(min(v) for v in values) > 0:
        ratio = ratio_of_medians(values[0], values[1])
        return Change(key, a, b, ratio.significant, (ratio.low, ratio.high), BOOTSTRAP)
    spreads = [eff.spread(key) if eff is not None else None for eff in effs]
    if None in spreads:
        return Change(key, a, b)
    (low_a, high_a), (low_b, high_b) = spreads
    return Change(key, a, b, high_a < low_b or high_b < low_a, None, RANGE)


def accuracy_change(row_a: VariantRow | None, row_b: VariantRow | None, key: str, exact: bool) -> Change:
    """PPL or KLD in A and B: ``exact`` when both scored the same tokens, else judged on each run's standard error.

    Independent estimates: the log of B/A has the standard error
    sqrt((se_a/a)^2 + (se_b/b)^2), and the change is significant when the
    95 % interval of B/A leaves out 1.
    """
    a, b = _metric(row_a, key), _metric(row_b, key)
    if a is None or b is None:
        return Change(key, a, b)
    if exact:
        return Change(key, a, b, a != b, None, EXACT)
    se_a, se_b = _metric(row_a, STDERR_KEYS[key]), _metric(row_b, STDERR_KEYS[key])
    if se_a is None or se_b is None or a <= 0 or b <= 0:
        return Change(key, a, b)
    se_log = math.hypot(se_a / a, se_b / b)
    low, high = (b / a) * math.exp(-Z_95 * se_log), (b / a) * math.exp(Z_95 * se_log)
    return Change(key, a, b, low > 1.0 or high < 1.0, (low, high), STDERR)


def same_tokens(run_a: RunRecord, run_b: RunRecord, model: str | None) -> bool:
    """Whether ``model``'s variants scored the very same token ids in both runs: same file (hash), corpus, windows."""
    infos = [run.model_info(model) for run in (run_a, run_b)]
    facts = [tuple(getattr(info, name) for name in MODEL_TOKEN_FACTS) for info in infos]
    corpus = [tuple(getattr(run.corpus, name) for name in CORPUS_TOKEN_FACTS) for run in (run_a, run_b)]
    known = facts[0][0] is not None and facts[0][MODEL_TOKEN_FACTS.index("tokens_scored")] is not None
    return known and facts[0] == facts[1] and corpus[0] == corpus[1]


def _rows_same_tokens(row_a: VariantRow | None, row_b: VariantRow | None) -> bool:
    counts = [row.accuracy.tokens_scored if row is not None and row.accuracy is not None else None
              for row in (row_a, row_b)]
    return counts[0] is not None and counts[0] == counts[1]


def _flatten(value, prefix: str) -> dict:
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):  # e.g. the models
        items = ((str(i), item) for i, item in enumerate(value))
    else:
        return {prefix: value}
    flat = {}
    for key, item in items:
        flat.update(_flatten(item, f"{prefix}.{key}"))
    return flat


def _context_changes(run_a: RunRecord, run_b: RunRecord) -> tuple[str, ...]:
    dict_a, dict_b = run_a.to_dict(), run_b.to_dict()
    flat_a, flat_b = {}, {}
    for section in CONTEXT_SECTIONS:
        flat_a.update(_flatten(dict_a.get(section), section))
        flat_b.update(_flatten(dict_b.get(section), section))
    keys = dict.fromkeys(list(flat_a) + list(flat_b))
    return tuple(f"{k}: {flat_a.get(k)} -> {flat_b.get(k)}" for k in keys if flat_a.get(k) != flat_b.get(k))


def _metric(row: VariantRow | None, key: str) -> float | None:
    return row.metric(key) if row is not None else None


def _changes(row_a: VariantRow | None, row_b: VariantRow | None, same: bool, same_reference: bool) -> tuple:
    changes = []
    for key in DIFF_KEYS:
        if key in SPEED_KEYS:
            changes.append(speed_change(row_a, row_b, key))
        elif key in STDERR_KEYS:
            exact = same and _rows_same_tokens(row_a, row_b) and (key == "ppl" or same_reference)
            changes.append(accuracy_change(row_a, row_b, key, exact))
        else:
            changes.append(Change(key, _metric(row_a, key), _metric(row_b, key)))
    return tuple(changes)


def diff(run_a: RunRecord, run_b: RunRecord) -> RunDiff:
    """Per row (A's order, then B's new ones), what changed in PPL, KLD, speeds and peak RSS, and whether it is real.

    Rows pair by model and variant. KLD is exact only when both runs also
    measured it against the same reference.
    """
    rows_a = {(r.model, r.variant): r for r in run_a.results}
    rows_b = {(r.model, r.variant): r for r in run_b.results}
    labels = {**{key: run_b.label(r) for key, r in rows_b.items()}, **{key: run_a.label(r) for key, r in rows_a.items()}}
    variants = []
    for key in dict.fromkeys(list(rows_a) + list(rows_b)):
        model = key[0]
        row_a, row_b = rows_a.get(key), rows_b.get(key)
        same = same_tokens(run_a, run_b, model)
        same_reference = run_a.model_info(model).reference == run_b.model_info(model).reference
        variants.append(VariantDiff(labels[key], row_a.status if row_a else None, row_b.status if row_b else None,
                                    _changes(row_a, row_b, same, same_reference), task_changes(row_a, row_b)))
    same_all = all(same_tokens(run_a, run_b, m.name) for m in run_a.models) if run_a.models else False
    return RunDiff(run_a.run_id or "A", run_b.run_id or "B", _context_changes(run_a, run_b), tuple(variants), same_all)
