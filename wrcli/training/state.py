"""The training state file (``OUT.state.pt``): everything needed to continue a run bit for bit.

It holds the upsampler, optimiser and scheduler state dicts, the step, the accumulated training seconds,
the options (a plain dict), the fingerprint of everything that changes the result, and the RNG states of
python, numpy, torch CPU and CUDA (as tensors and lists), so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wrcli.errors import WrcError, first_line
from wrcli.files import atomic_write


def rng_states() -> dict[str, Any]:
    """The RNG states of python, numpy, torch CPU and every CUDA device, as tensors and plain lists."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(words), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` captured (CUDA states only where the same devices exist)."""
    version, words, gauss = states["python"]
    random.setstate((version, tuple(words), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_state(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: a crash never leaves half a state."""
    with atomic_write(path) as tmp:
        torch.save(state, tmp)


def load_state(path: Path) -> dict[str, Any]:
    """The state saved at ``path``, read with ``weights_only=True``; WrcError when it cannot be read."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise WrcError(f"cannot read training state {path} ({first_line(e)}); delete it or train without --resume") from None
    if not isinstance(state, dict) or "fingerprint" not in state or "step" not in state:
        raise WrcError(f"{path} is not a wrcli training state; delete it or train without --resume")
    return state


def check_compatible(path: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """WrcError (one line) naming every setting that differs between the saved run and this one."""
    keys = sorted(set(saved) | set(current))
    changed = [k for k in keys if saved.get(k) != current.get(k)]
    if changed:
        diffs = "; ".join(f"{k}: {_short(saved.get(k))} then, {_short(current.get(k))} now" for k in changed)
        raise WrcError(
            f"cannot resume from {path}: settings that change the result differ ({diffs}); "
            f"rerun with the original settings, or without --resume to start over"
        )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
