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


def classification_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        images: torch.Tensor, labels: torch.Tensor, bf16: bool,
                        clip_norm: float = 0.0, label_smoothing: float = 0.0,
                        forward: Callable | None = None) -> Callable[[], None]:
  """One train step of an image classifier on a fixed batch (images [b, c, h, w], labels
  [b] int64): forward (`forward`, e.g. torch.compile(model), default `model`; under
  bfloat16 autocast when `bf16`), cross entropy (with `label_smoothing`), backward,
  global-norm gradient clipping when `clip_norm` > 0, and the optimizer update."""
  forward = model if forward is None else forward

  def step():
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
      loss = torch.nn.functional.cross_entropy(forward(images), labels,
                                               label_smoothing=label_smoothing)
    loss.backward()
    if clip_norm:
      torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    optimizer.step()
  return step


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
