"""Building: a model source turned into its family of variants in the cache, and which variant is the reference.

May import the top-level leaves (``harness.errors``, ``harness.manifest``, ``harness.paths``) and
``harness.machine``; ``reference_policy`` also reads the runtime registry (``harness.backends``) to
know which runtimes are installed. Never the measurement, a runner, a report or a command.
"""
