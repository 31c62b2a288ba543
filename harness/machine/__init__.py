"""The machine: what a run measured on, its GPUs through NVML, CPU energy through RAPL, a resource monitor.

Leaves under every other package (the backends read ``environment`` and ``nvml`` too): may import
``harness.results`` and ``harness.errors`` only.
"""
