"""Measurement: what one variant's child process does: accuracy against the reference, speed, memory, energy.

``variant.measure_variant`` is the entry; ``accuracy`` scores the windows with ``harness.kernels``,
``reference_record`` keeps the reference's logits for the others, ``divergence_stats`` gives the
paired intervals, ``efficiency`` times prefill and decode.
May import the backends, the kernels, ``harness.text``, ``harness.machine``, the schema and
``harness.defaults``; never the configuration (``harness.config``), a runner, a report or a command.
"""
