"""benchmarks/suite.py at smoke sizes: every row runs end to end through train.bench (and
the PyTorch twin where its library is installed) and lands in the table with its MFU."""

import pytest

from benchmarks import suite


def test_peak_flops_by_device_name_and_override():
  assert suite.peak_flops('NVIDIA H100 80GB HBM3') == pytest.approx(989.4e12)
  assert suite.peak_flops('NVIDIA H100 PCIe') == pytest.approx(756e12)
  assert suite.peak_flops('NVIDIA H200') == pytest.approx(989.4e12)
  assert suite.peak_flops('NVIDIA H100 NVL') == pytest.approx(835e12)  # Not 'H100'.
  assert suite.peak_flops('NVIDIA L40') == pytest.approx(181e12)  # Not 'L4'.
  assert suite.peak_flops('NVIDIA L4') == pytest.approx(121e12)
  assert suite.peak_flops('cpu') is None
  assert suite.peak_flops('cpu', override_tflops=2.0) == pytest.approx(2e12)


@pytest.mark.parametrize('name', sorted(suite.WORKLOADS))
def test_every_row_runs_at_smoke_sizes(name):
  rows = suite.run_workload(name, smoke=True, steps=1, peak=1e12, torch_compile=False)
  ours, *torch_rows = rows
  assert ours['implementation'].startswith('this codebase') and ours['workload'] == name
  assert ours['items_per_s'] > 0 and ours['step_ms'] > 0 and ours['compile_s'] > 0
  assert 0 < ours['mfu'] < 1  # XLA counted the step's FLOPs.
  assert torch_rows
  for row in torch_rows:  # Timed, or skipped for a missing library (torchvision, timm).
    assert (row['items_per_s'] or 0) > 0 or row['note'].startswith('skipped: No module named')
  if name == 'transformer':  # torch is a test requirement: its Transformer row is timed.
    assert ours['unit'] == 'tokens/s' and torch_rows[0]['items_per_s'] > 0
    assert torch_rows[0]['mfu'] == pytest.approx(
        ours['mfu'] * ours['step_ms'] / torch_rows[0]['step_ms'])
  table = suite.format_table(rows, 'test device')
  assert table.count(f'| {name} |') == len(rows) and 'test device' in table.splitlines()[0]


def test_step_flops_count_every_device_and_micro_batch():
  # XLA's cost analysis of the traced step counts a lax.scan body once: the same global
  # batch on 8 devices, or in 4 accumulated micro-batches, is the same work, up to the
  # optimizer update (with 4 micro-batches it is counted 4 times): ~5 % of this tiny step.
  import jax  # pylint: disable=import-outside-toplevel
  from configs import resnet18_fashion_mnist  # pylint: disable=import-outside-toplevel
  from train import bench  # pylint: disable=import-outside-toplevel
  config = resnet18_fashion_mnist.get_config()
  config.model.width, config.batch_size = 4, 16

  def flops(devices, accum):
    config.grad_accum_steps = accum
    return bench.benchmark(config, 1, devices=devices)['gflop_per_step']
  assert jax.device_count() == 8
  one = flops(jax.devices()[:1], 1)
  assert flops(jax.devices(), 1) == pytest.approx(one, rel=0.1)
  assert flops(jax.devices()[:1], 4) == pytest.approx(one, rel=0.1)


def test_steps_without_a_cost_analysis_are_counted_on_the_host(monkeypatch):
  # JAX 0.11 on GPUs returns no analysis of the traced step (seen on an H100): the
  # same step is then counted as lowered for the host CPU, attention as matmuls (cuDNN's
  # has no CPU lowering: a 'cudnn' config is counted too), micro-batches included.
  import jax  # pylint: disable=import-outside-toplevel
  from configs import vit_fashion_mnist  # pylint: disable=import-outside-toplevel
  from train import bench  # pylint: disable=import-outside-toplevel
  config = vit_fashion_mnist.get_config()
  config.batch_size, config.grad_accum_steps, config.model.attention_impl = 16, 2, 'xla'
  expected = bench.benchmark(config, 1, devices=jax.devices()[:2])['gflop_per_step']
  config.model.attention_impl = 'cudnn'
  config.init_from, config.init_into = '/no/such/weights', 'encoder'  # Never read here.
  assert bench.host_flops(config) * 2 / 1e9 == pytest.approx(expected, rel=0.02)
  assert config.model.attention_impl == 'cudnn'  # The caller's config is left as it was.
  config.model.attention_impl, config.init_from, config.init_into = 'xla', '', ''
  real, calls = jax.stages.Lowered.cost_analysis, []

  def none_on_the_first_call(self):
    calls.append(self)
    return None if len(calls) == 1 else real(self)
  monkeypatch.setattr(jax.stages.Lowered, 'cost_analysis', none_on_the_first_call)
  assert bench.benchmark(config, 1, devices=jax.devices()[:2])['gflop_per_step'] == (
      pytest.approx(expected, rel=0.02))
  assert len(calls) == 2


def test_a_failing_row_is_reported_and_the_others_still_print(monkeypatch, capsys):
  # One workload raising (as torch.compile can on a GPU without a C compiler) leaves a
  # row naming the error; the rows timed before and after it are printed all the same.
  def run_workload(name, *args):
    if name == 'vit_b16':
      raise RuntimeError('Triton not found\nmore detail')
    return [{'workload': name, 'implementation': 'this codebase', 'batch': 2,
             'items_per_s': 10.0, 'unit': 'examples/s', 'step_ms': 200.0, 'compile_s': 1.0,
             'mfu': None, 'note': ''}]
  monkeypatch.setattr(suite, 'run_workload', run_workload)
  suite.print_table(['resnet50', 'vit_b16', 'transformer'], False, 1, None, False, 'dev')
  lines = capsys.readouterr().out.splitlines()
  assert [l.split(' | ')[0] for l in lines if l.startswith('| ') and 'workload' not in l] == [
      '| resnet50', '| vit_b16', '| transformer']
  assert '| failed: RuntimeError: Triton not found |' in [l for l in lines if 'vit_b16' in l][0]


def test_a_failing_pytorch_row_says_why(monkeypatch):
  def torch_row(*args):
    raise RuntimeError('Inductor needs a C compiler')
  monkeypatch.setattr(suite, 'torch_row', torch_row)
  ours, *torch_rows = suite.run_workload('transformer', smoke=True, steps=1, peak=None,
                                         torch_compile=False)
  assert ours['items_per_s'] > 0
  assert torch_rows and all(r['items_per_s'] is None and r['note'] == (
      'failed: RuntimeError: Inductor needs a C compiler') for r in torch_rows)
