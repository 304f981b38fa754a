"""The default XLA flags: merged into XLA_FLAGS without overriding the user's, and in
effect in this process (conftest imports `train` before JAX starts)."""

import jax
import jax.numpy as jnp

from train import xla_flags


def test_defaults_added_to_other_flags():
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
  added = xla_flags.apply_defaults(env)
  assert added == list(xla_flags.DEFAULT_FLAGS)
  assert env['XLA_FLAGS'].split() == ['--xla_force_host_platform_device_count=8',
                                      *xla_flags.DEFAULT_FLAGS]
  assert xla_flags.apply_defaults(env) == []   # idempotent
  assert env['XLA_FLAGS'].split().count(xla_flags.DEFAULT_FLAGS[0]) == 1


def test_user_value_wins_and_empty_environment():
  env = {'XLA_FLAGS': '--xla_cpu_experimental_ynn_fusion_type=+individual_convolution'}
  assert xla_flags.apply_defaults(env) == []
  assert env['XLA_FLAGS'] == '--xla_cpu_experimental_ynn_fusion_type=+individual_convolution'
  env = {}
  xla_flags.apply_defaults(env)
  assert env['XLA_FLAGS'] == ' '.join(xla_flags.DEFAULT_FLAGS)


def test_convolutions_compile_without_ynnpack_here():
  # Compiled, not run; YNNPACK takes convolutions of this size (not tiny ones).
  x, w = jnp.ones((16, 64, 64, 32)), jnp.ones((3, 3, 32, 32))
  conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
  hlo = conv.lower(x, w).compile().as_text()
  assert 'convolution(' in hlo and 'ynn_fusion' not in hlo
