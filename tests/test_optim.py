"""Schedules, the weight-decay mask and label smoothing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from tasks import classification
from tasks import common as task_common
from train import optim


def _config(schedule, **optim_fields):
  c = common.get_base_config()
  c.learning_rate, c.warmup_steps = 1.0, 10
  c.optim.schedule = schedule
  for k, v in optim_fields.items():
    c.optim[k] = v
  return c


def test_warmup_then_cosine_boundaries():
  f = optim.learning_rate_schedule(_config('cosine'), total_steps=110)
  np.testing.assert_allclose([f(0), f(5), f(10), f(60), f(110)], [0.0, 0.5, 1.0, 0.5, 0.0],
                             atol=1e-6)


def test_linear_and_step_decay():
  lin = optim.learning_rate_schedule(_config('linear', end_learning_rate_factor=0.1), 110)
  np.testing.assert_allclose([lin(10), lin(60), lin(110)], [1.0, 0.55, 0.1], atol=1e-6)
  step = optim.learning_rate_schedule(_config('step', step_boundaries=(0.5, 0.75)), 110)
  np.testing.assert_allclose([step(10), step(59), step(61), step(86), step(109)],
                             [1.0, 1.0, 0.1, 0.01, 0.01], atol=1e-7)


def test_rsqrt_schedule_is_inverse_square_root_after_warmup():
  f = optim.learning_rate_schedule(_config('rsqrt'), 1000)
  np.testing.assert_allclose([f(10), f(40), f(90)], [1.0, 0.5, np.sqrt(10 / 90)], atol=1e-6)
  np.testing.assert_allclose([f(0), f(5)], [0.0, 0.5], atol=1e-6)  # Warmup, Python ints too.


def test_schedule_errors():
  with pytest.raises(ValueError, match="valid: \\['cosine'"):
    optim.learning_rate_schedule(_config('cosin'), 100)
  with pytest.raises(ValueError, match='warmup_steps \\(10\\).*\\(5\\)'):
    optim.learning_rate_schedule(_config('cosine'), 5)


_NO_DECAY = tuple(common.get_base_config().optim.no_decay_names)  # The default config's.


def test_weight_decay_mask():
  params = {'patch_embedding': {'kernel': jnp.zeros((4, 4, 1, 8)), 'bias': jnp.zeros(8)},
            'pos_embedding': jnp.zeros((1, 49, 8)), 'cls_token': jnp.zeros((1, 1, 8)),
            'encoder_block_0': {'ln_mlp': {'scale': jnp.ones(8), 'bias': jnp.zeros(8)},
                                'mlp': {'Dense_0': {'kernel': jnp.zeros((8, 16))}},
                                'attention': {'query': {'kernel': jnp.zeros((8, 2, 4)),
                                                        'bias': jnp.zeros((2, 4))}}}}
  transformer = {'source_positions': jnp.zeros((16, 8)), 'target_positions': jnp.zeros((16, 8)),
                 'source_embed': {'embedding': jnp.zeros((30, 8))}}
  assert optim.weight_decay_mask(transformer, _NO_DECAY) == {  # Learned positions too.
      'source_positions': False, 'target_positions': False, 'source_embed': {'embedding': True}}
  mask = optim.weight_decay_mask(params, _NO_DECAY)
  assert mask == {'patch_embedding': {'kernel': True, 'bias': False},
                  'pos_embedding': False, 'cls_token': False,
                  'encoder_block_0': {'ln_mlp': {'scale': False, 'bias': False},
                                      'mlp': {'Dense_0': {'kernel': True}},
                                      'attention': {'query': {'kernel': True, 'bias': False}}}}


def test_decoupled_weight_decay_only_on_masked_params():
  c = _config('constant', weight_decay=0.5, grad_clip_norm=0.0)
  c.warmup_steps = 0
  c.optim.name = 'sgd'
  c.optim.momentum = 0.0
  tx, _ = optim.build(c, 100)
  params = {'dense': {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones(2)}}
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  np.testing.assert_allclose(updates['dense']['kernel'], -0.5 * np.ones((2, 2)))
  np.testing.assert_allclose(updates['dense']['bias'], np.zeros(2))


@pytest.mark.parametrize('mode', ['coupled', 'decoupled'])
def test_sgd_weight_decay_modes_against_torch_formula(mode):
  # Two SGD steps, momentum 0.9, lr 0.1, decay 0.01, constant gradient g on a kernel.
  # coupled (torch.optim.SGD): buf = 0.9 buf + (g + wd p); p -= lr buf.
  # decoupled (SGDW):          buf = 0.9 buf + g;          p -= lr (buf + wd p).
  c = _config('constant', weight_decay=0.01, grad_clip_norm=0.0, weight_decay_mode=mode,
              name='sgd', momentum=0.9)
  c.learning_rate, c.warmup_steps = 0.1, 0
  tx, _ = optim.build(c, 100)
  params = {'kernel': jnp.full((2, 2), 2.0)}
  grads = {'kernel': jnp.full((2, 2), 0.5)}
  state = tx.init(params)
  p, buf = 2.0, 0.0
  for _ in range(2):
    updates, state = tx.update(grads, state, params)
    params = jax.tree.map(jnp.add, params, updates)
    if mode == 'coupled':
      buf = 0.9 * buf + 0.5 + 0.01 * p
      p -= 0.1 * buf
    else:
      buf = 0.9 * buf + 0.5
      p -= 0.1 * (buf + 0.01 * p)
  np.testing.assert_allclose(params['kernel'], p, rtol=1e-6)
  c.optim.weight_decay_mode = 'l2'
  with pytest.raises(ValueError, match=r"'l2'.*\['decoupled', 'coupled'\]"):
    optim.build(c, 100)


def test_gradient_clipping_caps_global_norm():
  c = _config('constant', grad_clip_norm=1.0)
  c.warmup_steps = 0
  c.optim.name, c.optim.momentum = 'sgd', 0.0
  tx, _ = optim.build(c, 100)
  params = {'w': jnp.zeros(4)}
  updates, _ = tx.update({'w': jnp.full(4, 10.0)}, tx.init(params), params)
  np.testing.assert_allclose(jnp.linalg.norm(updates['w']), 1.0, rtol=1e-6)


def test_label_smoothing_targets():
  t = task_common.smoothed_targets(jnp.array([3]), 10, 0.1)
  np.testing.assert_allclose(t[0, 3], 0.91, rtol=1e-6)
  np.testing.assert_allclose(np.delete(np.asarray(t[0]), 3), np.full(9, 0.01), rtol=1e-6)
  np.testing.assert_allclose(t.sum(), 1.0, rtol=1e-6)


def test_classification_metrics_are_masked_sums():
  task = classification.ClassificationTask(num_classes=10)
  logits = jax.nn.one_hot(jnp.array([1, 2, 3, 4]), 10) * 10.0
  batch = {'label': jnp.array([1, 2, 0, 0]), 'mask': jnp.array([1.0, 1.0, 1.0, 0.0])}
  m = task.metrics(logits, batch)
  np.testing.assert_allclose(m['top1'], [2.0, 3.0])
  np.testing.assert_allclose(m['top5'], [3.0, 3.0])  # Label 0 is in the top 5 of row 2.
