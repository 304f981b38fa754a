"""One mechanism every weight format uses: walk the variables the model expects and
fetch each from the source file by an explicit name rule, then report every
difference at once.

A format module supplies `rule(collection, path) -> (source_key, transform)`: for each
of this codebase's variables (collection 'params' or 'batch_stats', path such as
('stage1_block1', 'conv_bn0', 'conv', 'kernel')) the name of the source tensor and the
function that turns it into ours (e.g. a transpose OIHW -> HWIO). Several variables may
read one source tensor (a fused qkv projection); a source tensor that no variable
reads and that the format does not `ignore` is an error, never silently skipped.
"""

import difflib
from typing import Callable, Mapping

import jax
import numpy as np

# Top-level modules that depend on the task, not on what was learnt (the classifier
# `head` of ViT, ResNet and MobileNetV2): a file may lack one altogether (a backbone
# saved without its classifier), and a loading model of another class count
# reinitialises it (pretrained.merge).
HEADS = ('head',)

Transform = Callable[[np.ndarray], np.ndarray]
Rule = Callable[[str, tuple], tuple[str, Transform]]


class WeightMismatchError(ValueError):
  """A weight file has missing, extra or mis-shaped tensors for the model it is loaded
  into; the message lists each (with the closest names for missing ones)."""


def identity(x: np.ndarray) -> np.ndarray:
  return x


def oihw_to_hwio(x: np.ndarray) -> np.ndarray:
  """A PyTorch Conv2d kernel [out, in / groups, kh, kw] -> Flax [kh, kw, in / groups, out]."""
  return np.transpose(x, (2, 3, 1, 0))


def linear_to_dense(x: np.ndarray) -> np.ndarray:
  """A PyTorch Linear weight [out, in] -> a Flax Dense kernel [in, out]."""
  return np.transpose(x)


def flatten(tree: Mapping, prefix: tuple = ()) -> dict[tuple, object]:
  """A nested dict -> {path tuple: leaf}."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(flatten(value, prefix + (key,)))
    else:
      out[prefix + (key,)] = value
  return out


def unflatten(flat: Mapping[tuple, object]) -> dict:
  """{path tuple: leaf} -> a nested dict."""
  out = {}
  for path, leaf in flat.items():
    node = out
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = leaf
  return out


def expected_variables(model, *init_args) -> dict:
  """The variables `model.init` would create for `init_args` (shapes and dtypes only,
  nothing is computed): {'params': ..., 'batch_stats': ...?}."""
  rngs = {'params': jax.random.key(0), 'dropout': jax.random.key(0)}
  return dict(jax.eval_shape(lambda: model.init(rngs, *init_args, train=False)))


def convert(tensors: Mapping[str, np.ndarray], expected: Mapping, rule: Rule, *, source: str,
            ignore: Callable[[str], bool] = lambda key: False,
            looks_like: str = '') -> dict:
  """The variables `expected` describes, filled from `tensors` by `rule`.

  Args:
    tensors: source name -> array (as the file names them).
    expected: {'params': nested dict of arrays or ShapeDtypeStructs, 'batch_stats': ...}
      the model's variables (expected_variables); other collections are skipped.
    rule: see the module docstring.
    source: the file, for messages.
    ignore: source keys that are known and deliberately not loaded (e.g. PyTorch's
      BatchNorm `num_batches_tracked`).
    looks_like: what the file's tensors look like (a format's `architecture`), added
      to the message of an error.
  Returns:
    nested dict {collection: {...: float32 numpy array}} with the structure of `expected`,
    less a `HEADS` module none of whose tensors the file has (a headless file).
  Raises:
    WeightMismatchError listing every missing, extra and mis-shaped tensor.
  """
  used, missing, misshaped, out = set(), [], [], {}
  absent_heads, present_heads = {}, set()
  for collection in ('params', 'batch_stats'):
    for path, leaf in flatten(expected.get(collection, {})).items():
      key, transform = rule(collection, path)
      ours = f'{collection}/{"/".join(path)}'
      if key not in tensors:
        close = difflib.get_close_matches(key, list(tensors), n=3, cutoff=0.5)
        line = f'{key} (for {ours}){"; closest: " + ", ".join(close) if close else ""}'
        if path[0] in HEADS:
          absent_heads.setdefault(path[0], []).append(line)
        else:
          missing.append(line)
        continue
      if path[0] in HEADS:
        present_heads.add(path[0])
      used.add(key)
      value = np.asarray(transform(np.asarray(tensors[key])), np.float32)
      if tuple(value.shape) != tuple(leaf.shape):
        misshaped.append(f'{key} {list(np.shape(tensors[key]))} -> {ours}: '
                         f'converted {list(value.shape)}, model {list(leaf.shape)}')
        continue
      out[(collection,) + path] = value
  for head in present_heads & set(absent_heads):  # Part of a head is an error.
    missing += absent_heads[head]
  extra = sorted(k for k in tensors if k not in used and not ignore(k))
  if missing or misshaped or extra:
    lines = [f'{source} does not fit the model:']
    if looks_like:
      lines.append(f'  the file looks like {looks_like}')
    for title, items in (('missing in the file', missing), ('mis-shaped', misshaped),
                         ('in the file but not in the model', extra)):
      if items:
        shown = items[:20] + ([f'... and {len(items) - 20} more'] if len(items) > 20 else [])
        lines.append(f'  {len(items)} {title}:\n    ' + '\n    '.join(shown))
    raise WeightMismatchError('\n'.join(lines))
  return unflatten(out)
