"""The results store: every finished run kept in one SQLite file, listed, reloaded and compared.

One row per run in a ``runs`` table: a few columns to list runs without
parsing them, and the whole run (environment included) as JSON, so a stored
run renders exactly as it did when it finished. ``check`` tells a file that is
no store (a text file, a damaged database) before any work is done.
"""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UserError
from harness.paths import STORE_ENV, data_dir
from harness.report_files import json_safe
from harness.results import RunRecord, VariantRow

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
        document["model"]["name"],
        document["corpus"]["name"],
        document["corpus"]["tokens_scored"],
        document["reference"],
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


@dataclass(frozen=True)
class Change:
    """One metric of one variant in run A and run B."""

    key: str
    a: float | None
    b: float | None
    beyond_noise: bool | None = None  # speeds only; None when either run has no spread

    @property
    def is_speed(self) -> bool:
        return self.key in SPEED_KEYS

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


def speed_beyond_noise(row_a: VariantRow | None, row_b: VariantRow | None, key: str) -> bool | None:
    """Whether a speed changed by more than its measured noise.

    Rule: the change is beyond noise when the [min, max] ranges of the measured
    repetitions in the two runs do not overlap, i.e. every repetition of one
    run was faster than every repetition of the other. None when either run
    lacks the spread.
    """
    spreads = [row.efficiency.spread(key) if row and row.efficiency else None for row in (row_a, row_b)]
    if None in spreads:
        return None
    a, b = spreads
    return a[1] < b[0] or b[1] < a[0]


def _flatten(value, prefix: str) -> dict:
    if isinstance(value, dict):
        flat = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}"))
        return flat
    return {prefix: value}


def _context_changes(run_a: RunRecord, run_b: RunRecord) -> tuple[str, ...]:
    dict_a, dict_b = run_a.to_dict(), run_b.to_dict()
    flat_a, flat_b = {}, {}
    for section in CONTEXT_SECTIONS + ("reference",):
        flat_a.update(_flatten(dict_a.get(section), section))
        flat_b.update(_flatten(dict_b.get(section), section))
    keys = dict.fromkeys(list(flat_a) + list(flat_b))
    return tuple(f"{k}: {flat_a.get(k)} -> {flat_b.get(k)}" for k in keys if flat_a.get(k) != flat_b.get(k))


def _metric(row: VariantRow | None, key: str) -> float | None:
    return row.metric(key) if row is not None else None


def diff(run_a: RunRecord, run_b: RunRecord) -> RunDiff:
    """Per variant (in A's order, then B's new ones), what changed in PPL, KLD, speeds and peak RSS."""
    rows_a = {r.variant: r for r in run_a.results}
    rows_b = {r.variant: r for r in run_b.results}
    variants = []
    for name in dict.fromkeys(list(rows_a) + list(rows_b)):
        row_a, row_b = rows_a.get(name), rows_b.get(name)
        changes = tuple(
            Change(key, _metric(row_a, key), _metric(row_b, key),
                   speed_beyond_noise(row_a, row_b, key) if key in SPEED_KEYS else None)
            for key in DIFF_KEYS
        )
        variants.append(VariantDiff(name, row_a.status if row_a else None, row_b.status if row_b else None, changes))
    return RunDiff(run_a.run_id or "A", run_b.run_id or "B", _context_changes(run_a, run_b), tuple(variants))
