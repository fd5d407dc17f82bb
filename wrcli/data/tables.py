"""Image lists as tables: a parquet (``.parquet``, ``.pq``; read with pyarrow), CSV (``.csv``) or TSV (``.tsv``) file as SRC.

One row is one image, in the table's order. Where it is:

- ``--path-column NAME``: a path per row, relative paths opened relative to the table's folder, recorded as written
  (the ``path`` of the store); stat'ed and decoded as files are (a missing file fails with its reason).
- ``--bytes-column NAME`` (parquet only): the encoded image in the row, a binary column or a struct with a ``bytes``
  field (how Hugging Face ``datasets`` store images). Recorded as ``TABLE#ROW`` (ROW from 0), or by the value of
  ``--path-column`` when both are given (then nothing is opened); its ``file_stat`` is the table's.
- neither: the first column named ``path``, ``file``, ``filename``, ``filepath``, ``image_path`` or ``image`` (a
  binary or struct ``image`` column holds bytes).

A row without a path or bytes (null, empty) is recorded as failed with that reason. ``--keep-columns a,b`` copies
those columns into the store, one value per image (:func:`kept_columns`): parquet integer, float and boolean
columns keep their type (integers or booleans with nulls become float64 with NaN), text stays text (null → ""),
other types are written as text; CSV and TSV cells are kept as the text written (ids keep their leading zeros).
Binary columns cannot be kept.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from wrcli.data.names import name_text, printable
from wrcli.data.sources import Encoded
from wrcli.errors import WrcError

TABLE_SUFFIXES = (".parquet", ".pq", ".csv", ".tsv")
DEFAULT_COLUMNS = ("path", "file", "filename", "filepath", "image_path", "image")
_NO_BYTES = "no image bytes in this row of the table"


@dataclass(frozen=True)
class TableOptions:
    """Which columns of a table SRC hold the images and which are kept (see the module docstring)."""

    path_column: str | None = None
    bytes_column: str | None = None
    keep_columns: tuple[str, ...] = ()

    def given(self) -> bool:
        return bool(self.path_column or self.bytes_column or self.keep_columns)


def is_table(src: str) -> bool:
    """Whether SRC is an existing file with a table's suffix."""
    return src.lower().endswith(TABLE_SUFFIXES) and os.path.isfile(src)


def _is_parquet(src: str) -> bool:
    return src.lower().endswith((".parquet", ".pq"))


def resolve(src: str, opts: TableOptions) -> TableOptions:
    """``opts`` with the path or bytes column chosen and every named column checked against the table's schema
    (only the schema is read); WrcError naming the columns there are otherwise."""
    import pyarrow as pa

    schema = _schema(src)
    names = schema.names
    what = f"{printable(src)} (its columns: {', '.join(names[:20])}{', ...' if len(names) > 20 else ''})"
    for option, column in (("--path-column", opts.path_column), ("--bytes-column", opts.bytes_column),
                           *(("--keep-columns", c) for c in opts.keep_columns)):
        if column is not None and column not in names:
            raise WrcError(f"{option} {column!r} is not a column of {what}")
    if opts.bytes_column and not _is_parquet(src):
        raise WrcError(f"--bytes-column needs a parquet table; {printable(src)} is text, which holds no image bytes")
    path, data = opts.path_column, opts.bytes_column
    if path is None and data is None:
        found = next((c for c in DEFAULT_COLUMNS if c in names), None)
        if found is None:
            raise WrcError(f"no image column in {what}; name it with --path-column or --bytes-column")
        holds_bytes = _is_parquet(src) and _bytes_type(schema.field(found).type)
        path, data = (None, found) if holds_bytes else (found, None)
    if data is not None and not _bytes_type(schema.field(data).type):
        raise WrcError(f"--bytes-column {data!r} holds {schema.field(data).type}, not image bytes (binary, or a "
                       "struct with a 'bytes' field)")
    if path is not None and _is_parquet(src) and not pa.types.is_string(schema.field(path).type) \
            and not pa.types.is_large_string(schema.field(path).type):
        raise WrcError(f"--path-column {path!r} holds {schema.field(path).type}, not text paths")
    for column in opts.keep_columns:
        if _is_parquet(src) and _binary(schema.field(column).type):
            raise WrcError(f"--keep-columns {column!r} holds bytes; keep text or number columns")
    return TableOptions(path, data, tuple(dict.fromkeys(opts.keep_columns)))


def _schema(src: str):
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    try:
        if _is_parquet(src):
            return pq.read_schema(src)
        with pcsv.open_csv(src, parse_options=_csv_parse(src)) as reader:
            return reader.schema
    except (OSError, pa.ArrowException) as exc:
        raise WrcError(f"cannot read table {printable(src)}: {str(exc).splitlines()[0]}") from exc


def _csv_parse(src: str):
    import pyarrow.csv as pcsv

    return pcsv.ParseOptions(delimiter="\t" if src.lower().endswith(".tsv") else ",")


def _binary(t: Any) -> bool:
    import pyarrow as pa

    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t)


def _bytes_type(t: Any) -> bool:
    import pyarrow as pa

    return _binary(t) or (pa.types.is_struct(t) and t.get_field_index("bytes") >= 0 and _binary(t.field("bytes").type))


@dataclass(frozen=True)
class Table:
    """What a table SRC lists: per row the recorded name and the file to open ("" for bytes rows), the kept
    columns, and for a bytes column its reader."""

    src: str
    names: tuple[str, ...]
    paths: tuple[str, ...]
    columns: dict[str, np.ndarray]
    stat: tuple[int, int]
    bytes_column: str | None

    def read(self, indices: Sequence[int]) -> Iterator[Encoded]:
        """The bytes of rows ``indices`` (ascending), reading only the row groups that hold them, in order."""
        import pyarrow.parquet as pq

        pending = iter(indices)
        want = next(pending, None)
        pf = pq.ParquetFile(self.src)
        start = 0
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if want is None:
                return
            if want >= start + n:
                start += n
                continue
            for batch in pf.iter_batches(batch_size=64, row_groups=[g], columns=[self.bytes_column]):
                cells = batch.column(0)
                if hasattr(cells, "field"):  # a struct column: its bytes field
                    cells = cells.field("bytes")
                while want is not None and want < start + len(cells):
                    data = cells[want - start].as_py()
                    yield Encoded(want, data or b"", "" if data else _NO_BYTES, self.stat)
                    want = next(pending, None)
                start += len(cells)


def read_table(src: str, opts: TableOptions, limit: int | None = None) -> Table:
    """The rows of the table at ``src`` (the first ``limit``) with ``opts`` as :func:`resolve` returns them."""
    import pyarrow as pa

    wanted = [c for c in dict.fromkeys((opts.path_column, *opts.keep_columns)) if c is not None]
    try:
        table = _read(src, wanted, opts.path_column)
    except (OSError, pa.ArrowException) as exc:
        raise WrcError(f"cannot read table {printable(src)}: {str(exc).splitlines()[0]}") from exc
    n = table.num_rows if limit is None else min(limit, table.num_rows)
    table = table.slice(0, n)
    base = os.path.dirname(src)
    shown = name_text(src)
    if opts.path_column is not None:
        values = table.column(opts.path_column).to_pylist()
        names = tuple(name_text(v) if v else f"{shown}#{row}" for row, v in enumerate(values))
        paths = tuple("" if not v or opts.bytes_column else os.path.join(base, v) for v in values)
    else:
        names, paths = tuple(f"{shown}#{row}" for row in range(n)), ("",) * n
    st = os.stat(src)
    return Table(src, names, paths, kept_columns(table, opts.keep_columns), (st.st_size, st.st_mtime_ns), opts.bytes_column)


def _read(src: str, columns: list[str], path_column: str | None):
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    if _is_parquet(src):
        return pq.read_table(src, columns=columns)
    names = _schema(src).names
    convert = pcsv.ConvertOptions(include_columns=columns, column_types={c: pa.string() for c in names},
                                  strings_can_be_null=False, quoted_strings_can_be_null=False)
    return pcsv.read_csv(src, parse_options=_csv_parse(src), convert_options=convert)


def kept_columns(table: Any, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The columns ``names`` of a pyarrow table as numpy arrays of the types the store keeps (module docstring)."""
    import pyarrow as pa

    kept = {}
    for name in names:
        column = table.column(name)
        t, nulls = column.type, column.null_count
        if (pa.types.is_integer(t) or pa.types.is_boolean(t)) and not nulls:
            values = column.to_numpy().astype(np.int64 if pa.types.is_integer(t) else bool)
        elif pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_floating(t):
            values = np.array([np.nan if v is None else float(v) for v in column.to_pylist()], dtype=np.float64)
        else:
            text = pa.types.is_string(t) or pa.types.is_large_string(t)
            values = np.array(["" if v is None else (v if text else str(v)) for v in column.to_pylist()], dtype=object)
        kept[name] = values
    return kept
