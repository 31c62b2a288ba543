"""lm-evaluation-harness's tasks on one loaded variant: lm-eval's model interface over our ``Backend``.

lm-eval owns the tasks (documents, prompts, few-shot, filters, metrics); ``BackendLM`` answers its
requests with the variant's own runtime, scoring continuations from the same logit blocks and Numba
kernels as perplexity, so the three runtimes are measured alike. ``score_tasks`` runs the tasks and
keeps, per task, lm-eval's metrics with their standard errors and each document's outcome on every
per-document metric, so a variant is compared with its reference document by document
(``harness.stats.paired_outcomes``).

lm-eval is an optional extra (``pip install -e '.[tasks]'``); nothing here imports it until called.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from harness import defaults
from harness.errors import UserError, one_line
from harness.kernels import to_host, token_nll

# lm-eval's key for a metric of the unfiltered output ("acc,none"); other filters keep their names.
NO_FILTER = "none"


@dataclass(frozen=True)
class TaskSpec:
    """Which tasks, on how many documents, with which few-shot count and seed: the same for every variant."""

    tasks: tuple[str, ...]  # lm-eval task or group names, or paths to task YAML files or folders
    limit: int | None = defaults.TASK_LIMIT  # documents per task (None: all)
    num_fewshot: int | None = None  # None: each task's own
    seed: int = defaults.TASK_SEED
    max_length: int = defaults.TASK_MAX_LENGTH  # tokens of context + continuation; longer contexts lose their start
    tokenizer: str | None = None  # the model's transformers tokenizer folder (its torch-fp32 copy), for every variant


INSTALL_TASKS = "pip install -e '.[tasks]'"


def check_tasks(spec: TaskSpec) -> None:
    """Every task loads here, its documents included, before any variant is measured; else one UserError.

    lm-eval missing, a task YAML that is not there or does not parse, an unknown task name, and a
    dataset that cannot be had (offline, not in the local ``datasets`` cache) each get one line.
    """
    try:
        import lm_eval  # noqa: F401  the optional extra
    except ImportError:
        raise UserError(f"lm-evaluation-harness is not installed; install the tasks extra: {INSTALL_TASKS}",
                        setting="tasks", value=",".join(spec.tasks)) from None
    for task in spec.tasks:
        if _is_path(task) and not Path(task).exists():
            raise UserError("no such task file or folder; give an lm-eval task name or the path of a task YAML",
                            setting="tasks", value=task)
    try:
        names = task_names(spec.tasks)
    except Exception as exc:  # a YAML that does not parse or names no task
        raise UserError(f"a task YAML could not be read ({one_line(exc)}); fix it or give a task name",
                        setting="tasks", value=",".join(spec.tasks)) from None
    manager = task_manager(spec.tasks)
    unknown = [name for name in names if not manager.match_tasks([name])]
    if unknown:
        raise UserError("no such lm-eval task or group; `lm-eval ls tasks` lists them, or give a task YAML's path",
                        setting="tasks", value=",".join(unknown))
    from lm_eval.tasks import get_task_dict

    for name in names:
        try:
            with _quiet_loading():
                get_task_dict([name], manager)  # loads the documents: offline, a hub dataset fails here
        except Exception as exc:
            raise UserError(f"its documents could not be loaded ({one_line(exc)}); point the task YAML's "
                            "dataset_path/data_files at a local file, or run once online to fill the datasets cache",
                            setting="tasks", value=name) from None


# The libraries that log while a task's documents load: the hub client's retries ("Retrying in 8s"), datasets.
_LOADING_LOGGERS = ("huggingface_hub", "datasets", "lm_eval", "fsspec", "filelock")


@contextlib.contextmanager
def _quiet_loading():
    """Documents loading with the libraries' warnings and progress bars held back: a failure is one line of ours."""
    import datasets

    levels = {name: logging.getLogger(name).level for name in _LOADING_LOGGERS}
    bars = datasets.is_progress_bar_enabled()
    try:
        for name in _LOADING_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        datasets.disable_progress_bars()
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        if bars:
            datasets.enable_progress_bars()


def task_manager(tasks: Sequence[str]):
    """lm-eval's TaskManager, told about the task YAML files and folders among ``tasks``.

    lm-eval's own catalogue (thousands of YAML files, about 10 s to index on 2 cores) is read only
    when a task is given by name.
    """
    from lm_eval.tasks import TaskManager

    paths = sorted({str(Path(t).resolve() if Path(t).is_dir() else Path(t).resolve().parent)
                    for t in tasks if _is_path(t)})
    return TaskManager(include_path=paths or None, include_defaults=not all(_is_path(t) for t in tasks))


def task_names(tasks: Sequence[str]) -> list[str]:
    """lm-eval's names for ``tasks``: a YAML file stands for the task (or group) it defines, a folder for those of
    its YAML files that define one (templates they include define none)."""
    names = []
    for task in tasks:
        if _is_path(task) and Path(task).is_file():
            name = _yaml_task_name(Path(task))
            if name is None:
                raise ValueError(f"{task} defines no task or group (no `task:` or `group:` key)")
            names.append(name)
        elif _is_path(task):
            names += [name for p in sorted(Path(task).glob("*.y*ml")) if (name := _yaml_task_name(p)) is not None]
        else:
            names.append(task)
    return names


def _yaml_task_name(path: Path) -> str | None:
    """The ``task`` (or, for a group's YAML, the ``group``) a task YAML names; lm-eval's own tags
    (``!function utils.process_docs``) are read as nothing, since only the name is needed here."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    config = yaml.load(path.read_text(), Loader=Loader) or {}
    name = config.get("task") if isinstance(config.get("task"), str) else config.get("group")
    return name if isinstance(name, str) else None


def _is_path(task: str) -> bool:
    return task.endswith((".yaml", ".yml")) or "/" in task or Path(task).is_dir()


def backend_lm(backend, tokenizer, max_length: int = defaults.TASK_MAX_LENGTH):
    """A ``BackendLM`` over a loaded backend and the model's transformers tokenizer."""
    from lm_eval.api.model import TemplateLM

    class BackendLM(TemplateLM):
        """lm-eval's model interface on a harness ``Backend``: greedy; requests packed into forward passes where
        the runtime packs them (``Backend.window_logit_blocks``)."""

        def __init__(self) -> None:
            super().__init__()
            self.backend, self.tokenizer, self.max_length = backend, tokenizer, max_length

        @property
        def eot_token_id(self) -> int:
            return int(self.tokenizer.eos_token_id)

        @property
        def prefix_token_id(self) -> int:
            # as lm-eval's hf model: BOS where the tokenizer has one, else end-of-text
            bos = self.tokenizer.bos_token_id
            return int(bos) if bos is not None else self.eot_token_id

        def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
            return self.tokenizer(string, add_special_tokens=bool(add_special_tokens))["input_ids"]

        def tok_decode(self, tokens: Sequence[int]) -> str:
            return self.tokenizer.decode(list(tokens), skip_special_tokens=True)

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
            # Requests with one context (a document's choices, or documents sharing a context) form a group,
            # whose context the runtime computes once for all its continuations (Backend.choice_logit_blocks).
            groups: dict[tuple, list[int]] = {}
            split = []
            for i, (_, context_enc, continuation_enc) in enumerate(requests):
                ids, start = self._sequence(context_enc, continuation_enc)
                split.append((ids[: start + 1], ids[start + 1 :]))
                groups.setdefault(tuple(split[-1][0]), []).append(i)
            # By context length, so a pack of groups (torch: right-padded) wastes little on padding.
            order = sorted(groups.values(), key=lambda members: len(split[members[0]][0]))
            scored = self.backend.choice_logit_blocks(
                [(split[members[0]][0], [split[i][1] for i in members]) for members in order])
            out: list[tuple[float, bool] | None] = [None] * len(requests)
            for members, continuations in zip(order, scored):
                for i, blocks in zip(members, continuations):
                    out[i] = _scored((block.logits for block in blocks), split[i][1])
                    (context, continuation), _, _ = requests[i]
                    self.cache_hook.add_partial("loglikelihood", (context, continuation), out[i])
            return out

        def _sequence(self, context_enc: Sequence[int], continuation_enc: Sequence[int]) -> tuple[list[int], int]:
            """The ids a request scores and the position of its first scored logit; the context loses its start
            beyond ``max_length``, as lm-eval's hf model truncates it."""
            ids = (list(context_enc) + list(continuation_enc))[-(self.max_length + 1):]
            return ids, len(ids) - len(continuation_enc) - 1

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
            from lm_eval import utils

            out = []
            for (string,) in (req.args for req in requests):
                windows = [self._sequence(context, continuation) for context, continuation in map(
                    utils.make_disjoint_window, utils.get_rolling_token_windows(
                        token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                        max_seq_len=self.max_length, context_len=1))]
                packed = self.backend.window_logit_blocks(windows)
                out.append(sum(_scored((block.logits for block in blocks), ids[start + 1:])[0]
                               for (ids, start), blocks in zip(windows, packed)))
                self.cache_hook.add_partial("loglikelihood_rolling", (string,), out[-1])
            return out

        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            out = []
            for context, gen_kwargs in (req.args for req in requests):
                kwargs = dict(gen_kwargs)
                stops = kwargs.get("until") or []
                stops = [stops] if isinstance(stops, str) else list(stops)
                max_new = int(kwargs.get("max_gen_toks", defaults.TASK_MAX_GEN_TOKS))
                # the backend stops after end-of-text, which decoding drops, or once a stop sequence is out;
                # the context keeps its end
                prompt = self.tok_encode(context)[-max(1, self.max_length - max_new):]
                text = self.tok_decode(self.backend.generate(prompt, max_new, _stop_check(self.tok_decode, stops))
                                       .token_ids)
                out.append(_cut_at_stops(text, stops))
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), out[-1])
            return out

    return BackendLM()


def _scored(blocks: Iterable, targets: Sequence[int]) -> tuple[float, bool]:
    """Sum of the targets' log-probabilities under the logit blocks, and whether each target is the argmax."""
    targets = np.asarray(targets, dtype=np.int64)
    logprob, greedy, row = 0.0, True, 0
    for logits in blocks:
        block_targets = targets[row:row + logits.shape[0]]
        logprob -= float(np.sum(token_nll(logits, block_targets), dtype=np.float64))
        greedy = greedy and bool(np.all(np.argmax(np.asarray(to_host(logits)), axis=1) == block_targets))
        row += logits.shape[0]
    return logprob, greedy


def _stop_check(decode, stops: Sequence[str]):
    """``Backend.generate``'s stop for lm-eval's stop sequences: whether the text of the tokens produced so far
    holds one (None without any)."""
    stops = [s for s in stops if s]
    if not stops:
        return None

    def reached(produced: list[int]) -> bool:
        text = decode(produced)
        return any(s in text for s in stops)

    return reached


def _cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """The text before the first stop sequence (greedy decoding past a stop changes nothing before it)."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=len(text))
    return text[:cut]


def score_tasks(lm, spec: TaskSpec) -> dict[str, dict[str, Any]]:
    """Run ``spec``'s tasks through ``lm``; per task: metrics, standard errors, documents, outcomes, seconds.

    ``outcomes`` holds, per per-document metric, each scored document's value in document order
    (``doc_ids`` gives the order): 1/0 for ``acc``, a float for others. The prompts are not kept.
    """
    from lm_eval import evaluator

    manager = task_manager(spec.tasks)
    scored = {}
    for name in task_names(spec.tasks):  # one at a time, so each task's seconds are its own
        start_s = time.perf_counter()
        result = evaluator.simple_evaluate(
            model=lm, tasks=[name], num_fewshot=spec.num_fewshot, limit=spec.limit, log_samples=True,
            task_manager=manager, bootstrap_iters=defaults.TASK_BOOTSTRAP_ITERS, random_seed=spec.seed,
            numpy_random_seed=spec.seed, torch_random_seed=spec.seed, fewshot_random_seed=spec.seed)
        seconds = time.perf_counter() - start_s
        for task, samples in result["samples"].items():
            scored[task] = _task_scores(result["results"].get(task, {}), samples, seconds)
    return scored


def _task_scores(results: dict[str, Any], samples: list[dict], seconds: float) -> dict[str, Any]:
    """One task's metrics (lm-eval's names, the filter added unless it is ``none``) and per-document outcomes."""
    samples = sorted(samples, key=lambda s: s["doc_id"])
    metrics, stderrs = {}, {}
    for key, value in results.items():
        name, _, filt = key.partition(",")
        if not filt or not isinstance(value, (int, float)):
            continue
        label = name if filt == NO_FILTER else f"{name},{filt}"
        if "_stderr" in label:
            stderrs[label.replace("_stderr", "")] = _finite(value)
        else:
            metrics[label] = _finite(value)
    outcomes = {m: [float(s[m]) for s in samples] for m in metrics
                if samples and all(isinstance(s.get(m), (int, float, bool)) for s in samples)}
    return {"metrics": metrics, "stderr": stderrs, "docs": len(samples),
            "doc_ids": [int(s["doc_id"]) for s in samples], "outcomes": outcomes, "seconds": round(seconds, 3)}


def _finite(value: float) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None
