"""The task-generic training engine: state, optimizer, steps, parallel engines, checkpoints.

Importing it sets this codebase's default XLA flags (train/xla_flags.py) before JAX
starts its backends."""

from train import xla_flags

xla_flags.apply_defaults()
