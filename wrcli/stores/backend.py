"""The contract between :mod:`wrcli.stores` and one on-disk format: the abstract :class:`StoreBackend`.

A store is named by the path the user gives (OUT); a format may keep its bytes in more places beside it (HDF5:
``OUT.parts/``), which only :meth:`StoreBackend.paths` knows. :mod:`wrcli.stores` calls the methods in the order
of one extraction — :meth:`~StoreBackend.existing`, :meth:`~StoreBackend.remove` and :meth:`~StoreBackend.ensure`
on rank 0, :meth:`~StoreBackend.read_metadata` and :meth:`~StoreBackend.open_writer` on every rank,
:meth:`~StoreBackend.finalize` on rank 0 — and then for readers (:meth:`~StoreBackend.state`,
:meth:`~StoreBackend.decode_shard`, :meth:`~StoreBackend.open_reader`). A backend holds no state of its own: one instance serves every path.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from wrcli.stores.base import StoreReader, StoreSpec, StoreState, StoreWriter, discard


class StoreBackend(ABC):
    """One store format. Subclasses implement every abstract method; ``remove`` and ``exists`` follow from
    :meth:`paths`."""

    @property
    @abstractmethod
    def format(self) -> str:
        """The format's name, as ``--format`` takes it and ``wrc info`` shows it (``"zarr"``)."""

    @property
    @abstractmethod
    def suffixes(self) -> tuple[str, ...]:
        """The lower-case suffixes of OUT that select this format, the usual one first (``(".zarr",)``)."""

    @abstractmethod
    def paths(self, path: Path) -> list[Path]:
        """Every path that holds bytes of the store at ``path``, ``path`` first (whether they exist or not)."""

    @abstractmethod
    def detect(self, path: Path) -> bool:
        """Whether what is on disk at ``path`` is laid out like a store of this format (for OUT names without
        one of :attr:`suffixes`); it need not be a valid wrcli store."""

    @abstractmethod
    def existing(self, path: Path) -> list[dict]:
        """The ``wrc`` metadata of each part of a store already at ``path`` ([] when there is none, or only empty
        folders); :class:`~wrcli.errors.WrcError` (:func:`~wrcli.stores.base.foreign_error`) if anything else is
        there, so that it is never deleted."""

    @abstractmethod
    def read_metadata(self, path: Path) -> dict:
        """The ``wrc`` metadata the store was created with (finished or not); WrcError if it is not a store."""

    @abstractmethod
    def ensure(self, path: Path, spec: StoreSpec, metadata: dict) -> None:
        """Create an empty store for ``spec`` with ``metadata`` as its ``wrc`` attribute (the format may add keys of
        its own to the ``store`` section), unless one exists; atomically, so that a killed creation leaves nothing
        that :meth:`existing` refuses."""

    @abstractmethod
    def open_writer(self, path: Path, spec: StoreSpec) -> StoreWriter:
        """A writer of whole shards into the store that :meth:`ensure` made for ``spec`` (any process)."""

    @abstractmethod
    def finalize(self, path: Path) -> None:
        """Seal the store once every shard is done (WrcError naming the missing ones otherwise): record the
        ok/failed counts in its metadata and drop what killed writers left. Idempotent."""

    @abstractmethod
    def state(self, path: Path) -> StoreState:
        """What the store holds now, before or after :meth:`finalize` (for ``wrc info``)."""

    @abstractmethod
    def decode_shard(self, path: Path, k: int) -> None:
        """Read and decode all of shard ``k``'s features and per-image rows (for ``wrc info --verify``); raises
        whatever the format's library raises on damaged bytes."""

    @abstractmethod
    def open_reader(self, path: Path) -> StoreReader:
        """A reader of the finalized store; WrcError if it is unfinished or incomplete."""

    def exists(self, path: Path) -> bool:
        """Whether anything is at one of :meth:`paths`."""
        return any(p.exists() for p in self.paths(path))

    def remove(self, path: Path) -> None:
        """Delete the store (every one of :meth:`paths`), each tree renamed away first."""
        for p in self.paths(path):
            discard(p)
