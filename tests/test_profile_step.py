"""benchmarks/profile_step.py: a real jax.profiler trace of a jitted train step is read
back and its operations summed by pass and layer; the PyTorch convolution kinds."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from benchmarks import profile_step


def test_attribute_reads_pass_and_layer_from_the_name_stack():
  assert profile_step.attribute(
      'jit(train_step)/transpose(jvp(MobileNetV2))/block2_1/depthwise/conv/reduce_sum') == (
          'backward', 'block*_*/depthwise/conv')
  assert profile_step.attribute('jit(train_step)/jvp(ViT)/encoder/block_3/mlp/dot_general',
                                group='op') == ('forward', 'encoder/block_*/mlp/dot_general')
  assert profile_step.attribute('jit(train_step)/add') == ('loss/update', '(outside the model)')


class _Mlp(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.Dense(4, name='out')(jax.nn.relu(nn.Dense(256, name='hidden')(x)))


def test_a_traced_step_is_summed_by_pass_and_layer(tmp_path):
  model = _Mlp()
  x = jnp.ones((512, 128))
  params = model.init(jax.random.key(0), x)

  @jax.jit
  def train_step(params):
    grads = jax.grad(lambda p: (model.apply(p, x) ** 2).mean())(params)
    return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)

  compiled = train_step.lower(params).compile()
  names = profile_step.hlo_op_names(compiled.as_text())
  assert any('jvp(_Mlp)/hidden' in n for n in names.values())
  params = compiled(params)
  with jax.profiler.trace(str(tmp_path)):
    for _ in range(2):
      params = compiled(params)
    jax.block_until_ready(params)
  totals = profile_step.summarise(profile_step.read_trace(str(tmp_path)), names, steps=2)
  layers = {key for key in totals if key[0] in ('forward', 'backward')}
  assert ('forward', 'hidden') in layers and ('backward', 'hidden') in layers, totals
  assert all(us > 0 for us in totals.values())
  table = profile_step.table(totals, top=2, title='pass, layer')
  # Which layers rank first depends on this machine's timing, so check the ranking itself.
  largest = [' '.join(key) for key, _ in totals.most_common(2)]
  assert [row.split(' | ')[0][2:] for row in table.splitlines()[2:4]] == largest, table
  assert table.splitlines()[4].startswith(f'| ({len(totals) - 2} more) |'), table
  assert table.splitlines()[-1].startswith('| **total** |')
  total = sum(totals.values())
  with_wall = profile_step.table(totals, top=2, title='pass, layer', wall_us=total + 1000)
  assert with_wall.splitlines()[-2].startswith('| wall time per traced step |')
  assert with_wall.splitlines()[-1].startswith("| in no operation's event") and '| 1.0 |' in \
      with_wall.splitlines()[-1]


def test_torch_convolution_kinds_from_input_shapes():
  assert profile_step.conv_kind('aten::mkldnn_convolution',
                                [[128, 48, 28, 28], [48, 1, 3, 3], []]) == 'depthwise 3x3'
  assert profile_step.conv_kind('aten::convolution_backward',
                                [[128, 48, 28, 28], [128, 48, 28, 28], [48, 1, 3, 3]]) == \
      'depthwise 3x3'
  # A 1-channel stem has in / groups = 1 too, but is not depthwise.
  assert profile_step.conv_kind('aten::mkldnn_convolution', [[128, 1, 28, 28], [16, 1, 3, 3]]) \
      == '3x3'
  assert profile_step.conv_kind('aten::mkldnn_convolution', [[8, 48, 7, 7], [96, 48, 1, 1]]) \
      == '1x1'
  assert profile_step.conv_kind('aten::mkldnn_convolution', [[8, 48]]) == ''


def test_torch_profile_of_each_model_family_twin():
  """--torch profiles the config's own twin: torch_vit for a ViT, torch_cnn for a CNN."""
  from configs import resnet18_fashion_mnist, vit_fashion_mnist
  vit = vit_fashion_mnist.get_config()
  vit.batch_size = 4
  totals = profile_step.profile_torch(vit, steps=1, image_size=28)
  assert any('scaled_dot_product' in op for op in totals), sorted(totals)[:20]
  cnn = resnet18_fashion_mnist.get_config()
  cnn.batch_size = 4
  totals = profile_step.profile_torch(cnn, steps=1, image_size=28)
  assert any(op.endswith(' 3x3') for op in totals), sorted(totals)[:20]
  assert not any('scaled_dot_product' in op for op in totals)
