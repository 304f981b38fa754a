"""On a GPU: XLA cost analysis of a matmul (lowered vs compiled), and cuDNN attention at
ViT-B/16's odd length (batch 256, 197 tokens, 12 heads of 64, bf16): refused unpadded,
then padded to 198/200/256 (keys masked by length) or 198/208 (boolean mask), value,
largest gradient difference from jax.nn's XLA path, and forward+backward ms; then this
codebase's matmul core. The script as run on the H100 for the README (Results, "GPU:
the benchmark suite on an H100"):

  python benchmarks/cudnn_attention_timing.py

On a CPU the cuDNN rows report "cuDNN is not detected".
"""
import time, functools, traceback
import jax, jax.numpy as jnp, numpy as np
print('jax', jax.__version__, jax.devices())
# 1. cost analysis
a = jnp.ones((1024, 1024), jnp.bfloat16)
low = jax.jit(lambda a, b: a @ b).lower(a, a)
try:
  c = low.cost_analysis(); print('lowered.cost_analysis', type(c), c if not isinstance(c, dict) else {k: v for k, v in c.items() if 'flop' in k})
except Exception as e: print('lowered.cost_analysis failed', repr(e))
comp = low.compile()
try:
  c = comp.cost_analysis(); print('compiled.cost_analysis', type(c), c if not isinstance(c, dict) else {k: v for k, v in c.items() if 'flop' in k})
except Exception as e: print('compiled.cost_analysis failed', repr(e))
print('expected flops', 2 * 1024**3)
# 2. cudnn attention at odd length
def timeit(f, *args, n=20):
  r = f(*args); jax.block_until_ready(r)
  t = time.perf_counter()
  for _ in range(n): r = f(*args)
  jax.block_until_ready(r); return (time.perf_counter() - t) / n * 1e3
B, L, H, D = 256, 197, 12, 64
k0 = jax.random.split(jax.random.key(0), 4)
q, k, v, g = [jax.random.normal(kk, (B, L, H, D), jnp.bfloat16) for kk in k0]
def loss(impl, pad, how):
  def f(q, k, v):
    if pad:
      P = pad - L
      qp, kp, vp = [jnp.pad(x, ((0, 0), (0, P), (0, 0), (0, 0))) for x in (q, k, v)]
      if how == 'lengths':
        o = jax.nn.dot_product_attention(qp, kp, vp, key_value_seq_lengths=jnp.full((B,), L, jnp.int32), implementation=impl)
      else:
        m = (jnp.arange(pad) < L)[None, None, None, :]
        m = jnp.broadcast_to(m, (1, 1, pad, pad))
        o = jax.nn.dot_product_attention(qp, kp, vp, mask=m, implementation=impl)
      o = o[:, :L]
    else:
      o = jax.nn.dot_product_attention(q, k, v, implementation=impl)
    return jnp.sum(o.astype(jnp.float32) * g.astype(jnp.float32))
  return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))
ref_v, ref_g = loss('xla', 0, None)(q, k, v)
print('xla unpadded fwd+bwd ms', timeit(loss('xla', 0, None), q, k, v))
for impl, pad, how in [('cudnn', 0, None), ('cudnn', 198, 'lengths'), ('cudnn', 200, 'lengths'), ('cudnn', 256, 'lengths'), ('cudnn', 198, 'mask'), ('cudnn', 208, 'mask')]:
  try:
    f = loss(impl, pad, how)
    val, grads = f(q, k, v)
    err = max(float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)))) for a, b in zip(grads, ref_g))
    print(impl, pad, how, 'value', float(val), 'ref', float(ref_v), 'max grad err', err, 'ms', timeit(f, q, k, v))
  except Exception as e:
    print(impl, pad, how, 'FAILED', type(e).__name__, str(e)[:300])
# forward only at 197
try:
  o = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation='cudnn'))(q, k, v); print('cudnn fwd-only 197 ok')
except Exception as e: print('cudnn fwd-only 197 FAILED', str(e)[:200])
import sys; sys.path.insert(0, '.')
from nets import layers
for impl in ['matmul']:
  f = jax.jit(jax.value_and_grad(lambda q, k, v: jnp.sum(layers.dot_product_attention(q, k, v, implementation=impl).astype(jnp.float32) * g.astype(jnp.float32)), argnums=(0, 1, 2)))
  print('ours', impl, 'ms', timeit(f, q, k, v))
