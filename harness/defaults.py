"""Every default a run uses, in one leaf module: the configuration (``harness.config``) and the measurement
modules both read it, so neither depends on the other. It imports nothing.

A name carries its unit where the number has one; ``harness.config`` turns
each into a command-line flag's default and help.
"""

# the text scored for accuracy
CTX = 512  # tokens per window
# compare's budget: all 13 variants of the default model within 5 minutes on 2 cores, with room for a slow machine
MAX_TOKENS = 1024  # the text's first N tokens, when neither --max-chunks nor --full is given
# speed
PROMPT_TOKENS = 512
GEN_TOKENS = 32
WARMUP = 1
REPETITIONS = 3  # measured repetitions of each speed test at least
MAX_REPETITIONS = 30
PRECISION_TARGET_PCT = 3.0  # stop once the 95% interval's half-width is within this % of the median
SPEED_BUDGET_S = 6  # per variant, warm-ups included
AGREEMENT_TOKENS = 16  # greedy tokens per prompt for generation agreement with the reference
DEVICE = "cpu"
TIMEOUT_S = 900  # one variant's child, before it counts as failed
# the answer
MAX_PPL_INCREASE_PCT = 5.0
MAX_TASK_DROP = 1.0  # --rank-by: the drop from the reference a recommendation may accept (points for accuracies)
# lm-eval's tasks (--tasks). Documents per task: minutes for every variant on 2 cores (a local 200-document
# four-choice task took 8 s per variant with its load, torch-fp32, benchmarks/bench_tasks.py; a task given by
# name adds about 10 s per variant for lm-eval to index its catalogue).
TASK_LIMIT = 100
TASK_SEED = 1234  # lm-eval's own default seed, for the documents' few-shot examples
TASK_MAX_LENGTH = 2048
TASK_MAX_GEN_TOKS = 256  # a generate_until task's max_gen_toks when it gives none (lm-eval's default)
TASK_BOOTSTRAP_ITERS = 1000  # lm-eval's bootstrap for the standard errors of metrics that are not means
