r"""Weight import at full size: for each supported architecture, the time of
`pretrained.convert` (read + map + write) and the largest logit difference between
PyTorch and this codebase on the same random weights and images (224x224, batch 2).

  # References from this repository's torch.nn twins (benchmarks/torch_twins.py), in the
  # project's venv (requirements-test.txt has the CPU torch wheel):
  python -m benchmarks.pretrained_parity --out=/tmp/parity_twins

  # References from the real torchvision / timm constructors, made in an environment
  # that has them (torchvision does not load next to the project's CPU torch wheel):
  python3 -m venv /tmp/tv && /tmp/tv/bin/pip install torch==2.14.1 torchvision==0.29.1 \
      timm==1.0.29 safetensors numpy
  /tmp/tv/bin/python -m benchmarks.pretrained_parity --make_references=real \
      --out=/tmp/parity_real
  python -m benchmarks.pretrained_parity --out=/tmp/parity_real   # compares (project venv)

Random weights everywhere (BatchNorm statistics, biases, LayerNorm affines included), so
that a swapped or skipped tensor shows. The reference side imports only torch and its
libraries, never JAX or this codebase's models.
"""

import argparse
import json
import os
import time

import numpy as np

# name -> (our registry name, weight format, file written by the reference side).
ARCHITECTURES = {
    'resnet18': ('resnet18', 'torchvision', 'resnet18.pth'),
    'resnet50': ('resnet50', 'torchvision', 'resnet50.safetensors'),
    'mobilenet_v2': ('mobilenet_v2', 'torchvision', 'mobilenet_v2.pth'),
    'vit_b16': ('vit_b16', 'timm_vit', 'vit_b16.safetensors'),
    # The same ViT's weights in the original JAX naming; its reference logits use the
    # tanh GELU, as the original ViT (and so the imported model) computes.
    'vit_b16_npz': ('vit_b16', 'vit_npz', 'vit_b16.npz'),
}
IMAGE_SIZE, BATCH, SEED = 224, 2, 0


def _torch_model(name: str, source: str):
  """A random-weight PyTorch model of architecture `name`, in eval mode, from the
  real libraries (`source`='real') or this repository's twins ('twins')."""
  import torch  # pylint: disable=import-outside-toplevel
  from benchmarks import torch_twins  # pylint: disable=import-outside-toplevel
  torch.manual_seed(SEED)
  if source == 'twins':
    if name == 'vit_b16':
      return torch_twins.timm_vision_transformer(SEED)
    if name == 'mobilenet_v2':
      return torch_twins.torchvision_mobilenet_v2(seed=SEED)
    return torch_twins.torchvision_resnet(int(name[len('resnet'):]), seed=SEED)
  if name == 'vit_b16':
    import timm  # pylint: disable=import-outside-toplevel
    model = timm.create_model('vit_base_patch16_224', pretrained=False)
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():  # timm initialises biases, norms and the head at 0 / 1.
      for param_name, p in model.named_parameters():
        if p.ndim == 1 or param_name in ('cls_token', 'pos_embed') or 'head' in param_name:
          p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()
  import torchvision  # pylint: disable=import-outside-toplevel
  model = getattr(torchvision.models, name)(weights=None)
  return torch_twins.randomise_batch_norms(model, SEED).eval()


def make_references(source: str, out: str) -> None:
  """Writes each architecture's state_dict, the images and PyTorch's logits to `out`."""
  import torch  # pylint: disable=import-outside-toplevel
  from safetensors.torch import save_file  # pylint: disable=import-outside-toplevel
  os.makedirs(out, exist_ok=True)
  images = np.random.default_rng(SEED).normal(size=(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE))
  images = images.astype(np.float32)
  from benchmarks import torch_twins  # pylint: disable=import-outside-toplevel
  logits = {}
  for name, (_, _, filename) in ARCHITECTURES.items():
    if name == 'vit_b16_npz':
      continue  # Written with vit_b16's weights below.
    model = _torch_model(name, source)
    with torch.no_grad():
      logits[name] = model(torch.from_numpy(images)).numpy()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = os.path.join(out, filename)
    if filename.endswith('.safetensors'):
      save_file(state, path)
    else:
      torch.save(state, path)
    print(f'{name}: wrote {path}', flush=True)
    if name == 'vit_b16':
      for module in model.modules():
        if isinstance(module, torch.nn.GELU):
          module.approximate = 'tanh'
      with torch.no_grad():
        logits['vit_b16_npz'] = model(torch.from_numpy(images)).numpy()
      tensors = {k: v.numpy() for k, v in state.items()}
      path = os.path.join(out, ARCHITECTURES['vit_b16_npz'][2])
      np.savez(path, **torch_twins.vit_npz_from_timm(tensors, num_heads=12))
      print(f'vit_b16_npz: wrote {path}', flush=True)
  np.savez(os.path.join(out, 'references.npz'), images=images, source=source, **logits)


def compare(out: str) -> list[dict]:
  """Converts each file in `out` and compares our logits with the references."""
  import jax  # pylint: disable=import-outside-toplevel
  import shutil  # pylint: disable=import-outside-toplevel
  import nets  # pylint: disable=import-outside-toplevel
  import pretrained  # pylint: disable=import-outside-toplevel
  from pretrained import convert  # pylint: disable=import-outside-toplevel
  references = np.load(os.path.join(out, 'references.npz'))
  images = np.transpose(references['images'], (0, 2, 3, 1))  # NCHW -> NHWC.
  rows = []
  for name, (model_name, format_name, filename) in ARCHITECTURES.items():
    converted = os.path.join(out, f'{name}_converted')
    shutil.rmtree(converted, ignore_errors=True)
    start = time.perf_counter()
    result = convert.convert(format_name, os.path.join(out, filename), model_name, converted)
    convert_s = time.perf_counter() - start
    variables, info = pretrained.load(converted)
    model = nets.build(model_name, **info['model_kwargs'])
    ours = np.asarray(jax.jit(lambda v, x, m=model: m.apply(v, x, train=False))(variables,
                                                                                images))
    theirs = references[name]
    rows.append({'architecture': name, 'format': format_name, 'file': filename,
                 'reference': str(references['source']), 'params': result['num_params'],
                 'total_s': round(convert_s, 2),  # Also builds the model, imports a reader.
                 **{f'{k}_s': v for k, v in result['seconds'].items()},
                 'max_abs_logit_error': float(np.abs(ours - theirs).max()),
                 'max_abs_logit': float(np.abs(theirs).max())})
    print(json.dumps(rows[-1]), flush=True)
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default='/tmp/parity_twins', help='Folder of the files.')
  parser.add_argument('--make_references', choices=['twins', 'real'], default=None,
                      help="Only write the PyTorch side ('real': torchvision / timm).")
  args = parser.parse_args()
  if args.make_references:
    make_references(args.make_references, args.out)
    return
  if not os.path.exists(os.path.join(args.out, 'references.npz')):
    make_references('twins', args.out)
  import jax  # pylint: disable=import-outside-toplevel
  print(f'device: {jax.devices()[0].device_kind}')
  rows = compare(args.out)
  print('| architecture | format | reference | parameters | read + map + write (s) | '
        'max abs logit error | max abs logit |')
  print('|---|---|---|---|---|---|---|')
  for r in rows:
    print(f'| {r["architecture"]} | {r["format"]} | {r["reference"]} | {r["params"]:,} | '
          f'{r["read_s"]} + {r["convert_s"]} + {r["save_s"]} | '
          f'{r["max_abs_logit_error"]:.1e} | {r["max_abs_logit"]:.2f} |')


if __name__ == '__main__':
  main()
