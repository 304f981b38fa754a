"""Timing of PyTorch train steps, shared by the benchmarks/torch_*.py peer baselines."""

import time
from typing import Callable

import torch


def seconds_per_step(step: Callable[[], None], steps: int, warmup: int,
                     device: torch.device) -> float:
  """Runs `step` `warmup` times untimed, then `steps` times; returns the mean seconds
  per timed step (CUDA work synchronised before each clock read)."""
  sync = torch.cuda.synchronize if device.type == 'cuda' else lambda: None
  for _ in range(warmup):
    step()
  sync()
  start = time.perf_counter()
  for _ in range(steps):
    step()
  sync()
  return (time.perf_counter() - start) / steps
