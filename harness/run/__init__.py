"""Running jobs: each variant's job in a child process of its own (``local``), or as Ray tasks (``on_ray``).

A runner runs any ``local.VariantJob`` and looks inside none: it may import ``harness.machine``, the
schema, ``harness.manifest``, ``harness.defaults`` and ``harness.errors``; never the measurement, the
configuration, a report or a command.
"""
