"""Text: the corpus, its token ids (one tokenizer for every variant) and the windows each protocol scores.

May import the top-level leaves (``harness.errors``, ``harness.paths``) and ``harness.machine``
(native output); nothing that builds, measures, runs or reports.
"""
