"""Small local lm-eval tasks for the tests: YAML files over JSONL documents the test writes (no dataset hub).

The documents are made up here (arithmetic and counting), so no third-party text is copied: two
multiple-choice tasks (one-word choices, and sentence endings shaped as HellaSwag's), a loglikelihood
task, a generate_until task and a loglikelihood_rolling task, as lm-eval reads them through
``dataset_path: json``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen")


# A multiple-choice task's metrics: accuracy, and accuracy with each choice's log-likelihood per character.
CHOICE_METRICS = """metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def _write_jsonl(path: Path, docs: list[dict]) -> None:
    path.write_text("".join(json.dumps(doc) + "\n" for doc in docs))


def multiple_choice(folder: Path, docs: int = 40, seed: int = 0, name: str = "harness_mc") -> Path:
    """``name``: which of four numbers is the sum of two small numbers (acc and acc_norm)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(docs):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        wrong = rng.sample([n for n in range(0, 19) if n != a + b], 3)
        choices = [NUMBER_WORDS[n] for n in wrong]
        answer = rng.randint(0, 3)
        choices.insert(answer, NUMBER_WORDS[a + b])
        rows.append({"question": f"What is {NUMBER_WORDS[a]} plus {NUMBER_WORDS[b]}?", "choices": choices,
                     "answer": answer})
    return _task(folder, name, rows, """output_type: multiple_choice
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_choice: "{{choices}}"
doc_to_target: "{{answer}}"
""" + CHOICE_METRICS)


NAMES = ("Ann", "Ben", "Cleo", "Dan", "Eve", "Finn", "Gus", "Hana")
THINGS = ("apples", "stamps", "marbles", "books", "shells", "buttons", "pencils", "coins")


def stories(folder: Path, docs: int = 40, seed: int = 4, name: str = "harness_story") -> Path:
    """``name``: shaped as HellaSwag is, a context of two sentences and four endings of a sentence each, only
    one of them with the right count (acc and acc_norm)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(docs):
        first, second = rng.sample(NAMES, 2)
        things = rng.choice(THINGS)
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        context = (f"{first} had {NUMBER_WORDS[a]} {things}. {second} gave {first} {NUMBER_WORDS[b]} more {things}, "
                   f"and {first} put all of them into a box on the kitchen table.")
        counts = [a + b, *rng.sample([n for n in range(1, 19) if n != a + b], 3)]
        rng.shuffle(counts)
        endings = [f" When {first} counted them again that evening, there were {NUMBER_WORDS[n]} {things} in the box."
                   for n in counts]
        rows.append({"context": context, "endings": endings, "answer": counts.index(a + b)})
    return _task(folder, name, rows, """output_type: multiple_choice
doc_to_text: "{{context}}"
doc_to_choice: "{{endings}}"
doc_to_target: "{{answer}}"
target_delimiter: ""
""" + CHOICE_METRICS)


def _counting(docs: int, seed: int) -> list[dict]:
    """Counts of four number words, each with the word that comes next."""
    rng = random.Random(seed)
    starts = [rng.randint(0, 12) for _ in range(docs)]
    return [{"text": "Counting: " + ", ".join(NUMBER_WORDS[s:s + 4]) + ",", "target": " " + NUMBER_WORDS[s + 4]}
            for s in starts]


def loglikelihood(folder: Path, docs: int = 20, seed: int = 1, name: str = "harness_ll") -> Path:
    """``name``: the next number word of a count (acc is lm-eval's is-greedy flag, perplexity its own)."""
    return _task(folder, name, _counting(docs, seed), """output_type: loglikelihood
doc_to_text: "{{text}}"
doc_to_target: "{{target}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
""")


def generate_until(folder: Path, docs: int = 10, seed: int = 2, name: str = "harness_gen") -> Path:
    """``name``: continue a count greedily until a comma or a newline (exact_match)."""
    return _task(folder, name, _counting(docs, seed), """output_type: generate_until
doc_to_text: "{{text}}"
doc_to_target: "{{target}}"
generation_kwargs:
  until: [",", "\\n"]
  max_gen_toks: 8
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
""")


def rolling(folder: Path, docs: int = 4, seed: int = 3, name: str = "harness_rolling") -> Path:
    """``name``: whole counting texts scored token by token (loglikelihood_rolling: word/byte perplexity)."""
    rng = random.Random(seed)
    rows = [{"text": ", ".join(NUMBER_WORDS[s:s + rng.randint(4, 8)]) + "."} for s in
            (rng.randint(0, 10) for _ in range(docs))]
    return _task(folder, name, rows, """output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
""")


def _task(folder: Path, name: str, rows: list[dict], body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    _write_jsonl(data, rows)
    path = folder / f"{name}.yaml"
    path.write_text(f"""task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
{body}""")
    return path
