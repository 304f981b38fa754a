"""Timing of PyTorch train steps, shared by the benchmarks/torch_*.py peer baselines."""

import json
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


def result_line(step_seconds: float, batch_size: int, model_name: str, model: torch.nn.Module,
                device: torch.device, bf16: bool, **fields) -> str:
  """The JSON line the torch_* baselines print: framework, threads, device, autocast,
  model, `fields` (e.g. input size), parameter count, batch, step time, examples/s."""
  return json.dumps({'framework': f'torch {torch.__version__}',
                     'threads': torch.get_num_threads(), 'device': str(device),
                     'bfloat16_autocast': bf16, 'model': model_name, **fields,
                     'params': sum(p.numel() for p in model.parameters()),
                     'batch_size': batch_size, 'step_ms': round(step_seconds * 1e3, 2),
                     'examples_per_s': round(batch_size / step_seconds, 1)})
