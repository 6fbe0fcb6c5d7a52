"""CSV and TSV tables: numeric columns (:func:`load_csv_column`, :func:`load_csv_columns`, for
forecasting), texts and their labels (:func:`load_text_labels`, for classification), texts alone
(:func:`load_text_column`, to label new ones) or pairs of texts (:func:`load_text_pairs`, for
translation); every bad cell is a DataError naming its line.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from rnnfast.data.text import read_text
from rnnfast.errors import DataError


def _read_table(path, delimiter: str | None, encoding: str) -> list[tuple[int, list[str]]]:
    """The non-blank rows of a CSV/TSV file as ``(line number, fields)``; the first is the header row.

    The delimiter is a tab for ``.tsv``/``.tab`` files, otherwise sniffed from the header line
    (``,``, tab, ``;`` or ``|``; a comma when the header has none of them).
    """
    text = read_text(path, encoding)
    if delimiter is None:
        if Path(path).suffix.lower() in (".tsv", ".tab"):
            delimiter = "\t"
        else:
            # Only the header line: free text further down is full of commas and semicolons.
            try:
                first_line = next(line for line in text.splitlines() if line.strip())
                delimiter = csv.Sniffer().sniff(first_line, delimiters=",\t;|").delimiter
            except csv.Error:
                delimiter = ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        rows = [(reader.line_num, row) for row in reader if any(field.strip() for field in row)]
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV near line {reader.line_num} ({exc}); check its quoting") from None
    if not rows:
        raise DataError(f"{path} has no rows with values; pass a CSV/TSV file with a header row and data")
    return rows


def _column_index(header: list[str], column, path, option: str | None) -> int:
    """Index of ``column`` (a header name, or a 0-based position) in ``header``; ``option``: the
    command-line option that names it, for the message (None: the column is not the user's choice)."""
    names = [h.strip() for h in header]
    if isinstance(column, (int, np.integer)):
        if -len(names) <= column < len(names):
            return int(column) % len(names)
    elif column.strip() in names:
        return names.index(column.strip())
    available = ", ".join(f"{i}: {n!r}" for i, n in enumerate(names))
    advice = "pass a table that has it" if option is None else f"pass one of them ({option})"
    raise DataError(f"{path} has no column {column!r}; its columns are {available}; {advice}")


def _field(row: list[str], index: int, line: int, column, path) -> str:
    if index >= len(row):
        raise DataError(f"{path} line {line} has {len(row)} fields, so no column {column!r}; fix or remove that line")
    return row[index].strip()


def load_csv_column(path, column, *, header: bool = True, delimiter: str | None = None,
                    encoding: str = "utf-8") -> np.ndarray:
    """One numeric column of a CSV/TSV file as (N,) float64, in file order.

    ``column`` is a header name or a 0-based index; with ``header=False`` the first row is data and
    ``column`` must be an index. Blank lines are skipped; an empty, non-numeric or non-finite cell is
    a DataError naming its line.
    """
    return load_csv_columns(path, [column], header=header, delimiter=delimiter, encoding=encoding,
                            options=["--column"])[:, 0]


def load_csv_columns(path, columns, *, header: bool = True, delimiter: str | None = None, encoding: str = "utf-8",
                     options=None) -> np.ndarray:
    """Numeric columns of a CSV/TSV file as (N, len(columns)) float64, in file order, read in one pass;
    each column as :func:`load_csv_column` reads one. ``options``: for each column, the command-line
    option that named it (``--column``, ``--features``), which a missing column's message names;
    None for columns the user did not choose here (a checkpoint's)."""
    rows = _read_table(path, delimiter, encoding)
    if header:
        options = [None] * len(columns) if options is None else options
        indexes, rows = [_column_index(rows[0][1], c, path, o) for c, o in zip(columns, options)], rows[1:]
    elif all(isinstance(c, (int, np.integer)) for c in columns):
        indexes = [int(c) for c in columns]
    else:
        raise ValueError("with header=False, pass the columns as 0-based indexes")
    if not rows:
        raise DataError(f"{path} has a header but no data rows; pass a file with values in it")
    values = np.empty((len(rows), len(columns)), dtype=np.float64)
    for k, (line, row) in enumerate(rows):
        for j, (index, column) in enumerate(zip(indexes, columns)):
            cell = _field(row, index, line, column, path)
            try:
                values[k, j] = float(cell)
            except ValueError:
                raise DataError(f"{path} line {line}, column {column!r}: {cell!r} is not a number; "
                                "fill in or remove that row") from None
            if not np.isfinite(values[k, j]):
                raise DataError(f"{path} line {line}, column {column!r}: {cell!r} is not a finite number; "
                                "fill in or remove that row")
    return values


def _text_columns(path, columns, options, what: str, delimiter: str | None,
                  encoding: str) -> tuple[list[int], list[list[str]]]:
    """The data rows of a CSV/TSV file with a header row: the line each is on, and for each of
    ``columns`` its (stripped) fields in them; ``options`` as :func:`_column_index` takes them, one a
    column; ``what``: what the rows hold, for the message of a file with a header alone."""
    rows = _read_table(path, delimiter, encoding)
    header, rows = rows[0][1], rows[1:]
    indexes = [_column_index(header, column, path, option) for column, option in zip(columns, options)]
    if not rows:
        raise DataError(f"{path} has a header but no data rows; pass a file with {what} in it")
    return ([line for line, _ in rows],
            [[_field(row, index, line, column, path) for line, row in rows] for index, column in zip(indexes, columns)])


def load_text_column(path, column="text", *, delimiter: str | None = None, encoding: str = "utf-8",
                     option: str | None = "--text-column") -> tuple[list[int], list[str]]:
    """The texts of one column of a CSV/TSV file with a header row, and the line each is on:
    ``(lines, texts)``, for labelling new texts; ``option`` as :func:`_column_index` takes it."""
    lines, (texts,) = _text_columns(path, [column], [option], "texts", delimiter, encoding)
    return lines, texts


def load_text_labels(path, text_column="text", label_column="label", *, delimiter: str | None = None,
                     encoding: str = "utf-8") -> tuple[list[str], np.ndarray, list[str]]:
    """Texts and their labels from a CSV/TSV file with a header row, for classification.

    Returns ``texts`` (N strings), ``labels`` (N,) int32 ids into ``label_names``, and the sorted
    distinct ``label_names`` (numerically sorted when every label is an integer, so "2" < "10").
    """
    lines, (texts, names) = _text_columns(path, [text_column, label_column], ["--text-column", "--label-column"],
                                          "labelled texts", delimiter, encoding)
    if "" in names:
        raise DataError(f"{path} line {lines[names.index('')]} has an empty label; fill it in or remove that row")
    distinct = set(names)
    if len(distinct) < 2:
        raise DataError(f"{path} has only the label {names[0]!r}; a classifier needs at least two classes")
    numeric = all(n.lstrip("+-").isdigit() for n in distinct)
    label_names = sorted(distinct, key=int if numeric else None)
    lookup = {n: i for i, n in enumerate(label_names)}
    return texts, np.array([lookup[n] for n in names], dtype=np.int32), label_names


def load_text_pairs(path, source_column="source", target_column="target", *, delimiter: str | None = None,
                    encoding: str = "utf-8",
                    options=("--source-column", "--target-column")) -> tuple[list[int], list[str], list[str]]:
    """Pairs of texts (a source and its translation) from a CSV/TSV file with a header row:
    ``(lines, sources, targets)``, N each. An empty source or target is a DataError naming its line;
    ``options``: the command-line options naming the two columns, as :func:`load_csv_columns` takes them."""
    lines, (sources, targets) = _text_columns(path, [source_column, target_column], options,
                                              "source and target texts", delimiter, encoding)
    for side, column, texts in (("source", source_column, sources), ("target", target_column, targets)):
        if "" in texts:
            raise DataError(f"{path} line {lines[texts.index('')]} has an empty {side} (column {column!r}); "
                            "fill it in or remove that row")
    return lines, sources, targets
