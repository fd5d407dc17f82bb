"""The files of a training run: the model OUT, its training state OUT.state.pt and the JSON-lines log.

They are checked before anything loads (a path that cannot be written is refused at once, not after the last
step), an earlier run's files are replaced only when asked (``resume`` continues them, ``overwrite`` starts
over), temporary files of killed writes are removed, and a resumed log keeps each step once.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from wrcli.errors import WrcError
from wrcli.files import remove_stale_tmps, write_text_atomic

log = logging.getLogger(__name__)

MODEL_SUFFIX = ".safetensors"


@dataclass(frozen=True)
class RunFiles:
    """Where one run writes: ``out`` (the model), ``state`` (OUT.state.pt) and ``log`` (OUT.log.jsonl by default)."""

    out: Path
    state: Path
    log: Path

    @classmethod
    def of(cls, out: str | os.PathLike, log_file: str | os.PathLike | None = None) -> RunFiles:
        out = Path(out)
        return cls(out, Path(f"{out}.state.pt"), Path(log_file or f"{out}.log.jsonl"))

    def paths(self) -> tuple[Path, Path, Path]:
        return self.out, self.state, self.log


def check_writable(files: RunFiles) -> None:
    """WrcError (one line) unless OUT ends in .safetensors and every file of the run is no folder and lies in a
    folder that exists and this process may write, or can be made where it may write."""
    if files.out.is_dir():
        raise WrcError(f"--out {files.out} is a folder; name the model file, e.g. {files.out / 'wrc.safetensors'}")
    if files.out.suffix != MODEL_SUFFIX:
        raise WrcError(f"--out {files.out} must end in {MODEL_SUFFIX} (a file name such as wrc{MODEL_SUFFIX})")
    for path in files.paths():
        if path.is_dir():
            raise WrcError(f"cannot write {path}: it is a folder")
        folder = _nearest_existing(path.parent)
        if not folder.is_dir():
            raise WrcError(f"cannot write {path}: {folder} is not a folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise WrcError(f"cannot write {path}: no permission to write in {folder}")


def _nearest_existing(folder: Path) -> Path:
    """``folder`` or the closest of its ancestors that exists (where the missing folders would be made)."""
    folder = folder.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def claim(files: RunFiles, *, resume: bool, overwrite: bool, main: bool) -> None:
    """Make the run's files ready: WrcError when an earlier run left any of them and neither ``resume`` (continue
    it) nor ``overwrite`` (start over) is given; with ``overwrite`` and no ``resume`` the main process deletes
    them. The main process also removes the temporary files a killed write of any of them left."""
    earlier = [p for p in files.paths() if p.exists()]
    if earlier and not (resume or overwrite):
        raise WrcError(f"an earlier training run is there ({', '.join(map(str, earlier))}); pass --resume to "
                       f"continue it or --overwrite to start over")
    if not main:
        return
    for path in files.paths():
        remove_stale_tmps(path)
    if overwrite and not resume:
        for path in earlier:
            log.info("--overwrite: deleting %s", path)
            path.unlink()


def start_log(path: Path, step: int, *, finished: bool) -> None:
    """Begin the log of a run that starts at ``step``: empty at step 0; else the records up to ``step`` (a run
    killed after its last state save logged steps that the resumed run does again; a torn last line is dropped),
    and with ``finished`` (the run resumes at its last step, to validate and write the model again) without the
    validation at ``step``."""
    if step == 0 or not path.is_file():
        write_text_atomic(path, "")
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines() if _keep(line, step, finished)]
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def _keep(line: str, step: int, finished: bool) -> bool:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return False
    if not isinstance(record, dict) or not isinstance(record.get("step"), int):
        return False
    return record["step"] < step or (record["step"] == step and not (finished and "validation" in record))
