"""On a GPU: MultiHeadAttention with attention_impl='cudnn'/'auto' against 'matmul', bf16:
self-attention with a key-padding mask, causal mask, cross-attention with padding and
no mask (outputs and input gradients), and six cached decoding steps against the full
causal pass. The script as run on the H100 for the README (Results, "GPU: the benchmark
suite on an H100"):

  python benchmarks/cudnn_attention_check.py
"""
import sys; sys.path.insert(0, '.')
import jax, jax.numpy as jnp, numpy as np
from nets import layers
B, L, S, F, H = 4, 16, 24, 256, 4
kx = jax.random.split(jax.random.key(0), 4)
x = jax.random.normal(kx[0], (B, L, F), jnp.float32)
src = jax.random.normal(kx[1], (B, S, F), jnp.float32)
lengths = jnp.array([16, 9, 4, 12])
pad = (jnp.arange(L)[None, :] < lengths[:, None])[:, None, None, :]
causal = jnp.tril(jnp.ones((L, L), bool))[None, None]
src_pad = (jnp.arange(S)[None, :] < jnp.array([24, 7, 20, 1])[:, None])[:, None, None, :]
mha = lambda impl: layers.MultiHeadAttention(H, attention_impl=impl, dtype=jnp.bfloat16)
v = mha('matmul').init(jax.random.key(1), x, src)
worst = 0.0
for name, kv, mask in [('self+pad', None, pad), ('causal', None, causal & pad), ('cross+pad', src, src_pad), ('nomask', None, None)]:
  outs, grads = {}, {}
  for impl in ['matmul', 'cudnn', 'auto']:
   try:
    f = lambda p, x: mha(impl).apply(p, x, kv, mask)
    outs[impl] = np.asarray(jax.jit(f)(v, x), np.float32)
    g = jax.jit(jax.grad(lambda p, x: jnp.sum(f(p, x).astype(jnp.float32) ** 2), argnums=1))(v, x)
    grads[impl] = np.asarray(g, np.float32)
   except Exception as e:
    print(name, impl, 'FAILED', type(e).__name__, str(e)[:200]); outs[impl] = grads[impl] = np.full_like(outs['matmul'], np.nan)
  for impl in ['cudnn', 'auto']:
    # rows whose query positions are padding are never read; compare all rows anyway
    e = np.max(np.abs(outs[impl] - outs['matmul'])); eg = np.max(np.abs(grads[impl] - grads['matmul'])) / (np.max(np.abs(grads['matmul'])) + 1e-9)
    print(f'{name:10s} {impl:6s} max|out diff| {e:.4f} (scale {np.max(np.abs(outs["matmul"])):.2f})  rel max grad diff {eg:.4f}')
    worst = max(worst, e)
# decode: 6 steps of causal self-attention with the cache, cudnn/auto vs matmul, and vs full pass
for impl in ['matmul', 'auto']:
  m = mha(impl)
  cache = m.init(jax.random.key(1), x, decode=True)['cache']
  ys = []
  for t in range(6):
    y, upd = m.apply({**v, 'cache': cache}, x[:, t:t + 1], decode=True, mutable=['cache'])
    cache = upd['cache']; ys.append(np.asarray(y, np.float32))
  full = np.asarray(m.apply(v, x[:, :6], None, causal[:, :, :6, :6]), np.float32)
  print('decode', impl, 'max|step - full pass|', np.max(np.abs(np.concatenate(ys, 1) - full)))
print('worst out diff', worst)
