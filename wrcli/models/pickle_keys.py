"""Where a refused ``.pth`` file keeps its state dict, found without running the file.

A ``torch.save`` zip archive holds a pickle (``data.pkl``). Read here with an unpickler that imports nothing:
every class or function the pickle names becomes an inert stand-in (a dict that ignores its arguments and
state; tensors an empty marker), and tensor storages are never read. Only builtin containers and these
stand-ins are built, so no code from the file runs — what remains is the key structure.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

MAX_DEPTH = 3


class _Opaque(dict):
    """Stands in for any class or function a pickle names; takes items, ignores arguments and state."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def __setstate__(self, state: Any) -> None:
        pass


class _Tensor(_Opaque):
    """Stands in for a tensor (what ``torch._utils._rebuild_*`` would build)."""


class _InertUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> type:
        return _Tensor if module == "torch._utils" and name.startswith("_rebuild") else _Opaque

    def persistent_load(self, pid: Any) -> None:
        return None  # a tensor storage: never read


def state_dict_path(path: Path) -> list[str] | None:
    """The keys leading from the top-level object of the torch zip file ``path`` to the first dict of
    tensors (breadth first, at most ``MAX_DEPTH`` deep; [] when the top level is one), or None when there is
    none or the file cannot be read this way (e.g. the legacy non-zip format)."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.rpartition("/")[2] == "data.pkl")
            obj = _InertUnpickler(io.BytesIO(archive.read(name))).load()
    except Exception:  # noqa: BLE001 - any unreadable file: no key to name
        return None
    level: list[tuple[list[str], Any]] = [([], obj)]
    for _ in range(MAX_DEPTH + 1):
        for keys, value in level:
            if isinstance(value, dict) and value and all(isinstance(v, _Tensor) for v in value.values()):
                return keys
        level = [(keys + [k], v) for keys, value in level if isinstance(value, dict) and not isinstance(value, _Tensor)
                 for k, v in value.items() if isinstance(k, str)]
    return None
