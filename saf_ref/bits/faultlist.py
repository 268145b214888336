"""A portable, replayable record of faults in stored words.

A :class:`FaultList` is a list of records ``(tensor, index, bit, kind, format)``:

============  =====================================================================================
column        meaning
============  =====================================================================================
``tensor``    name of the stored array (a ``state_dict`` key such as ``"layer1.0.conv1.weight"``;
              ``""`` for a single anonymous array); no control characters (line breaks, tabs, NUL)
``index``     flat index of the word in C order, ``0 <= index < codes.size`` (as ``codes.reshape(-1)``
              or ``np.ravel_multi_index``)
``bit``       bit of the word, ``0`` = least significant bit, always; ``0 <= bit < nbits``
``kind``      ``"flip"`` (toggle), ``"stuck0"`` (the bit reads 0) or ``"stuck1"`` (the bit reads 1)
``format``    name of the number format of the stored word (``"float32"``, ``"q2.5"``, a quantizer
              name, or ``"raw<nbits>"`` for an undeclared ``nbits``-bit word); never empty, no
              control characters
============  =====================================================================================

It is saved as JSON or CSV, both language-neutral and human-readable, so a fault pattern drawn by saf_ref
replays bit for bit in any other implementation (and the other way round).

CSV: a header line ``tensor,index,bit,kind,format`` then one record per line (written with ``\n``; ``\r\n``
is read too), RFC 4180 quoting (a name holding a comma or a quote is quoted)::

    tensor,index,bit,kind,format
    conv1.weight,12,30,flip,float32
    conv1.weight,12,3,stuck0,float32

JSON: one object, one record per line::

    {"schema": "saf_ref.faultlist", "version": 1, "faults": [
    {"tensor": "conv1.weight", "index": 12, "bit": 30, "kind": "flip", "format": "float32"},
    {"tensor": "conv1.weight", "index": 12, "bit": 3, "kind": "stuck0", "format": "float32"}
    ]}

Applying a list (:meth:`FaultList.apply`) follows one documented order, so duplicates have one meaning:
first every ``flip`` is XORed in (two flips of one bit cancel, so file order does not matter among
them), then the stuck-at records force their bits (a stuck bit reads its stuck value whatever was
written or flipped). A bit that is both ``stuck0`` and ``stuck1`` is a ``ValueError``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from saf_ref import validation
from saf_ref.bits.fields import smallest_container
from saf_ref.bits.formats import resolve_format

#: The kinds of fault a record can hold, in the order of their integer codes.
KINDS = ("flip", "stuck0", "stuck1")
#: The CSV header and the keys of a JSON record, in order.
COLUMNS = ("tensor", "index", "bit", "kind", "format")
#: The unsigned dtypes that hold codes.
CODE_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.uint32), np.dtype(np.uint64))
JSON_SCHEMA = "saf_ref.faultlist"
JSON_VERSION = 1
_MAX_BIT = 63
_MAX_INDEX = 2**63 - 1  # indices are stored as int64
_DIGITS = re.compile(r"[0-9]+")
# control characters (line breaks, NUL, ...) are not allowed in names: one record is one line of text
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# ---------------------------------------------------------------------------------------------------------
# Validation shared with saf_ref.bits.faults
# ---------------------------------------------------------------------------------------------------------
def check_codes(codes: Any, fn: str, name: str = "codes") -> np.ndarray:
    """Require an array of stored words: an unsigned integer ndarray (uint8/16/32/64)."""
    return validation.check_dtype(codes, name, fn, CODE_DTYPES)


def resolve_nbits(codes: np.ndarray, nbits: Any, fn: str) -> int:
    """``nbits`` as an int in ``[1, container bits]``; ``None`` means the container width."""
    width = codes.dtype.itemsize * 8
    if nbits is None:
        return width
    return validation.check_int(nbits, "nbits", fn, low=1, high=width)


def default_format_name(format_name: Any, nbits: int, fn: str) -> str:
    """The format name a record carries: ``format_name``, or ``"raw<nbits>"`` when it is ``None``."""
    if format_name is None:
        return f"raw{nbits}"
    if not isinstance(format_name, str) or not format_name:
        raise TypeError(
            f"{fn}: format_name must be a non-empty str or None, got {validation.describe(format_name)}"
        )
    return format_name


class Fault(NamedTuple):
    """One fault record: ``(tensor, index, bit, kind, format)`` (see the module docstring)."""

    tensor: str
    index: int
    bit: int
    kind: str
    format: str


def _categorize(values: Iterable[str]) -> tuple[tuple[str, ...], np.ndarray]:
    """Names in first-appearance order and, per value, its position in them (a categorical column)."""
    table: dict[str, int] = {}
    codes = [table.setdefault(v, len(table)) for v in values]
    return tuple(table), np.asarray(codes, dtype=np.int32)


def _merge_categories(
    columns: list[tuple[tuple[str, ...], np.ndarray]],
) -> tuple[tuple[str, ...], np.ndarray]:
    """Concatenate categorical columns ``(names, codes)``: one name table, codes remapped (vectorized)."""
    table: dict[str, int] = {}
    remapped = []
    for names, codes in columns:
        lookup = np.array([table.setdefault(n, len(table)) for n in names] or [0], dtype=np.int32)
        remapped.append(lookup[codes])
    return tuple(table), np.concatenate(remapped) if remapped else np.zeros(0, dtype=np.int32)


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


class FaultList:
    """An immutable, ordered list of fault records, stored as columns.

    There is no PyTorch equivalent; this is the interchange format for fault patterns.

    Parameters
    ----------
    records : iterable of Fault or 5-tuples ``(tensor, index, bit, kind, format)``
        The records, in order. Use :meth:`from_arrays` to build a large list from arrays.

    Notes
    -----
    Columns are NumPy arrays made read-only (``index``: int64, ``bit``: uint8); tensor and format names
    are stored once each with an integer code per record. Equality compares records in order. ``+``
    concatenates. See the module docstring for the file formats and the apply order.
    """

    __slots__ = (
        "_tensor_names",
        "_tensor_codes",
        "_index",
        "_bit",
        "_kind",
        "_format_names",
        "_format_codes",
    )

    def __init__(self, records: Iterable[Fault | tuple] = ()):
        fn = "FaultList"
        if isinstance(records, (str, bytes)) or not isinstance(records, Iterable):  # a str: its characters
            raise TypeError(
                f"{fn}: records must be an iterable of 5-tuples, got {validation.describe(records)}"
            )
        rows = [_validate_record(r, f"{fn}: records[{i}]") for i, r in enumerate(records)]
        self._set_columns(
            _categorize(r.tensor for r in rows),
            np.array([r.index for r in rows], dtype=np.int64),
            np.array([r.bit for r in rows], dtype=np.uint8),
            np.array([KINDS.index(r.kind) for r in rows], dtype=np.int8),
            _categorize(r.format for r in rows),
        )

    def _set_columns(self, tensors, index, bit, kind, formats) -> None:
        """Set the columns; ``tensors`` and ``formats`` are categorical: ``(names, code per record)``."""
        self._tensor_names, self._tensor_codes = tensors[0], np.asarray(tensors[1], dtype=np.int32)
        self._format_names, self._format_codes = formats[0], np.asarray(formats[1], dtype=np.int32)
        self._index = _readonly(np.ascontiguousarray(index, dtype=np.int64))
        self._bit = _readonly(np.ascontiguousarray(bit, dtype=np.uint8))
        self._kind = _readonly(np.ascontiguousarray(kind, dtype=np.int8))
        _readonly(self._tensor_codes)
        _readonly(self._format_codes)

    # ----------------------------------------------------------------------------------------------------
    # Construction
    # ----------------------------------------------------------------------------------------------------
    @classmethod
    def from_arrays(
        cls,
        index: Any,
        bit: Any,
        *,
        kind: str | Iterable[str] = "flip",
        tensor: str = "",
        format_name: str,
    ) -> FaultList:
        """Build a list from parallel arrays (vectorized; this is what the samplers use).

        Parameters
        ----------
        index : array_like of int, shape (K,)
            Flat indices (C order), non-negative.
        bit : array_like of int, shape (K,)
            Bit indices, LSB = 0, in ``[0, 63]``.
        kind : str or array_like of str, shape (K,)
            One kind for every record, or one per record; each in ``KINDS``.
        tensor : str
            Tensor name carried by every record.
        format_name : str
            Format name carried by every record (non-empty).
        """
        fn = "FaultList.from_arrays"
        index = np.asarray(index)
        bit = np.asarray(bit)
        for name, a in (("index", index), ("bit", bit)):
            if a.ndim != 1:
                raise ValueError(f"{fn}: {name} must be 1-dimensional, got shape {a.shape}")
            if a.size and a.dtype.kind not in "iu":
                raise TypeError(f"{fn}: {name} must hold integers, got dtype {a.dtype}")
        validation.check_equal(fn, "bit.shape[0]", bit.shape[0], "index.shape[0]", index.shape[0])
        if index.size and index.min() < 0:
            raise ValueError(f"{fn}: index must be >= 0, got {index.min()}")
        if index.size and index.dtype == np.uint64 and int(index.max()) > _MAX_INDEX:
            raise ValueError(f"{fn}: index must be at most 2**63 - 1 (int64), got {int(index.max())}")
        if bit.size and (bit.min() < 0 or bit.max() > _MAX_BIT):
            raise ValueError(
                f"{fn}: bit must be in [0, {_MAX_BIT}], got values in [{bit.min()}, {bit.max()}]"
            )
        if not isinstance(tensor, str):
            raise TypeError(f"{fn}: tensor must be a str, got {validation.describe(tensor)}")
        if not isinstance(format_name, str) or not format_name:
            raise TypeError(
                f"{fn}: format_name must be a non-empty str, got {validation.describe(format_name)}"
            )
        _validate_record((tensor, 0, 0, "flip", format_name), fn)  # the same name rules as records
        if isinstance(kind, str):
            validation.check_choice(kind, "kind", fn, KINDS)
            kinds = np.full(index.shape[0], KINDS.index(kind), dtype=np.int8)
        else:
            kind_list = list(kind)
            validation.check_equal(fn, "len(kind)", len(kind_list), "index.shape[0]", index.shape[0])
            try:
                distinct = set(kind_list)
            except TypeError:  # an unhashable entry (a list): check_choice names it
                distinct = kind_list
            for k in distinct:
                validation.check_choice(k, "kind", fn, KINDS)
            lookup = {k: i for i, k in enumerate(KINDS)}
            kinds = np.array([lookup[k] for k in kind_list], dtype=np.int8)
        out = cls.__new__(cls)
        n = index.shape[0]
        # one name for every record: categorical columns built directly (no loop over the records)
        one = np.zeros(n, dtype=np.int32)
        names, fmts = ((tensor,), (format_name,)) if n else ((), ())
        out._set_columns((names, one), index.astype(np.int64), bit.astype(np.uint8), kinds, (fmts, one))
        return out

    @classmethod
    def concat(cls, lists: Iterable[FaultList]) -> FaultList:
        """The records of every list, in order (also ``a + b``)."""
        lists = list(lists)
        for i, fl in enumerate(lists):
            if not isinstance(fl, FaultList):
                raise TypeError(
                    f"FaultList.concat: lists[{i}] must be a FaultList, got {validation.describe(fl)}"
                )
        out = cls.__new__(cls)
        out._set_columns(
            _merge_categories([(fl._tensor_names, fl._tensor_codes) for fl in lists]),
            np.concatenate([fl._index for fl in lists] or [np.zeros(0, np.int64)]),
            np.concatenate([fl._bit for fl in lists] or [np.zeros(0, np.uint8)]),
            np.concatenate([fl._kind for fl in lists] or [np.zeros(0, np.int8)]),
            _merge_categories([(fl._format_names, fl._format_codes) for fl in lists]),
        )
        return out

    def __add__(self, other: Any) -> FaultList:
        if not isinstance(other, FaultList):
            return NotImplemented
        return FaultList.concat([self, other])

    # ----------------------------------------------------------------------------------------------------
    # Columns and records
    # ----------------------------------------------------------------------------------------------------
    @property
    def index(self) -> np.ndarray:
        """Flat indices, int64, shape (K,), read-only."""
        return self._index

    @property
    def bit(self) -> np.ndarray:
        """Bit indices (LSB = 0), uint8, shape (K,), read-only."""
        return self._bit

    @property
    def kind(self) -> list[str]:
        """Kind of each record."""
        return [KINDS[k] for k in self._kind]

    @property
    def tensor(self) -> list[str]:
        """Tensor name of each record."""
        return [self._tensor_names[c] for c in self._tensor_codes]

    @property
    def format(self) -> list[str]:
        """Format name of each record."""
        return [self._format_names[c] for c in self._format_codes]

    @property
    def tensors(self) -> tuple[str, ...]:
        """The distinct tensor names, in order of first appearance."""
        return tuple(self._tensor_names[c] for c in _first_appearance(self._tensor_codes))

    @property
    def formats(self) -> tuple[str, ...]:
        """The distinct format names, in order of first appearance."""
        return tuple(self._format_names[c] for c in _first_appearance(self._format_codes))

    def __len__(self) -> int:
        return int(self._index.shape[0])

    def __getitem__(self, i: int) -> Fault:
        i = validation.check_int(i, "i", "FaultList.__getitem__", low=-len(self), high=len(self) - 1)
        return Fault(
            self._tensor_names[self._tensor_codes[i]],
            int(self._index[i]),
            int(self._bit[i]),
            KINDS[self._kind[i]],
            self._format_names[self._format_codes[i]],
        )

    def __iter__(self) -> Iterator[Fault]:
        return (self[i] for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FaultList):
            return NotImplemented
        return (
            len(self) == len(other)
            and np.array_equal(self._index, other._index)
            and np.array_equal(self._bit, other._bit)
            and np.array_equal(self._kind, other._kind)
            and self.tensor == other.tensor
            and self.format == other.format
        )

    __hash__ = None  # type: ignore[assignment]  # mutable-looking container semantics: not hashable

    def __repr__(self) -> str:
        head = ", ".join(repr(tuple(r)) for r in list(self)[:3])
        more = ", ..." if len(self) > 3 else ""
        return f"FaultList({len(self)} records: [{head}{more}])"

    def select(self, tensor: str) -> FaultList:
        """The records of one tensor, in order."""
        if not isinstance(tensor, str):
            raise TypeError(f"FaultList.select: tensor must be a str, got {validation.describe(tensor)}")
        keep = np.array([t == tensor for t in self._tensor_names], dtype=bool)
        rows = keep[self._tensor_codes] if len(self) else np.zeros(0, dtype=bool)
        out = FaultList.__new__(FaultList)
        n = int(rows.sum())
        out._set_columns(
            ((tensor,) if n else (), np.zeros(n, dtype=np.int32)),
            self._index[rows],
            self._bit[rows],
            self._kind[rows],
            _categorize(self._format_names[c] for c in self._format_codes[rows]),
        )
        return out

    # ----------------------------------------------------------------------------------------------------
    # Applying
    # ----------------------------------------------------------------------------------------------------
    def apply(self, codes: np.ndarray, tensor: str | None = None, *, nbits: int | None = None) -> np.ndarray:
        """Apply the faults to a codes array; return a new array (the input is not modified).

        Parameters
        ----------
        codes : ndarray of uint8/16/32/64, any shape
            Stored words.
        tensor : str or None
            Apply the records of this tensor only; it must be a tensor of the list (a misspelled name is
            an error, not a silent no-op). ``None``: the list must name at most one tensor, and all its
            records apply.
        nbits : int or None
            Bits per stored word. Default: the width of the records' format when it is a known one
            (``"float16"``: 16, ``"q2.5"``: 8, ``"raw12"``: 12, ``"quant8_..."``: 8), else the container
            width. A record with ``bit >= nbits`` is a ``ValueError``.

        Returns
        -------
        ndarray, same shape and dtype as ``codes``

        Raises
        ------
        TypeError
            ``codes`` is not an unsigned integer array, or its dtype is not the container of the records'
            format (float16 records need uint16 codes; ``raw<n>`` records any container of at least n
            bits).
        ValueError
            ``tensor`` is not in the list; ``nbits`` differs from the width of the records' format; an
            index or bit is out of range; a bit is both stuck0 and stuck1.

        Math
        ----
        With ``F`` the flip records and ``S0``, ``S1`` the stuck-at records of an element,
        ``out = ((codes XOR sum_{b in F} 2^b) AND NOT sum_{b in S0} 2^b) OR sum_{b in S1} 2^b``,
        where a bit flipped twice in ``F`` cancels (XOR).

        Notes
        -----
        Order: flips first (XOR, so their order does not matter and duplicates cancel), then stuck-at
        (a stuck bit reads its stuck value whatever was written or flipped). A bit both stuck0 and
        stuck1 is a ``ValueError``.
        """
        fn = "FaultList.apply"
        check_codes(codes, fn)
        if tensor is None:
            if len(self.tensors) > 1:
                raise ValueError(
                    f"{fn}: tensor must be given when the list holds faults of several tensors, "
                    f"got None for tensors {self.tensors}"
                )
            sub = self
        else:
            if not isinstance(tensor, str):
                raise TypeError(f"{fn}: tensor must be a str or None, got {validation.describe(tensor)}")
            if tensor not in self.tensors and len(self):  # (an empty list applies nothing to anything)
                raise ValueError(
                    f"{fn}: tensor must be one of the list's tensors {self.tensors}, got {tensor!r}"
                )
            sub = self.select(tensor)
        nbits = _nbits_for_formats(codes, nbits, sub.formats, fn)
        return _apply_columns(codes, sub._index, sub._bit, sub._kind, nbits, fn, tensor or "")

    def apply_dict(
        self, arrays: Mapping[str, np.ndarray], *, nbits: int | Mapping[str, int] | None = None
    ) -> dict[str, np.ndarray]:
        """Apply the faults to a dict of named codes arrays; return a new dict.

        Parameters
        ----------
        arrays : mapping str -> ndarray of uint8/16/32/64
            Codes keyed by tensor name (e.g. a storage dict keyed by ``state_dict`` names).
        nbits : int, mapping str -> int, or None
            Bits per word, for every tensor or per tensor (default: each container's width).

        Returns
        -------
        dict str -> ndarray
            Same keys; every tensor named in the list is a new array, the others are the same
            objects as in ``arrays`` (never modified, so sharing them is safe).
        """
        fn = "FaultList.apply_dict"
        if not isinstance(arrays, Mapping):
            raise TypeError(f"{fn}: arrays must be a mapping str -> ndarray"
                f", got {validation.describe(arrays)}")
        missing = [t for t in self.tensors if t not in arrays]
        if missing:
            raise ValueError(f"{fn}: arrays must hold every tensor of the list, missing {missing}")
        out = dict(arrays)
        for name in self.tensors:
            n = nbits.get(name) if isinstance(nbits, Mapping) else nbits
            out[name] = self.apply(arrays[name], name, nbits=n)
        return out

    # ----------------------------------------------------------------------------------------------------
    # Files
    # ----------------------------------------------------------------------------------------------------
    def to_csv(self) -> str:
        """The list as CSV text (header ``tensor,index,bit,kind,format``, one record per line)."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(tuple(r) for r in self)
        return buf.getvalue()

    @classmethod
    def from_csv(cls, text: str) -> FaultList:
        """Parse CSV text written by :meth:`to_csv` (or by hand); validate every field.

        Raises ``ValueError`` naming the line and field of the first bad value. Empty lines are ignored,
        and so is a byte-order mark at the start (spreadsheet programs write one).
        """
        fn = "FaultList.from_csv"
        if not isinstance(text, str):
            raise TypeError(f"{fn}: text must be a str, got {validation.describe(text)}")
        text = text.removeprefix("\ufeff")
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        records = []
        header_seen = False
        try:
            for row in reader:
                if not row:
                    continue
                where = f"{fn}: line {reader.line_num}"
                if not header_seen:
                    if tuple(row) != COLUMNS:
                        raise ValueError(f"{where}: header must be {','.join(COLUMNS)}, got {','.join(row)}")
                    header_seen = True
                    continue
                if len(row) != len(COLUMNS):
                    raise ValueError(f"{where}: expected {len(COLUMNS)} fields {COLUMNS}, got {len(row)}")
                records.append(_parse_text_record(row, where))
        except csv.Error as e:
            raise ValueError(f"{fn}: line {reader.line_num}: malformed CSV ({e})") from e
        if not header_seen:
            raise ValueError(f"{fn}: header {','.join(COLUMNS)} is missing (empty text)")
        return cls(records)

    def to_json(self) -> str:
        """The list as JSON text (an object with ``schema``, ``version``, ``faults``; one record a line)."""
        lines = [json.dumps(dict(zip(COLUMNS, r, strict=True)), ensure_ascii=False) for r in self]
        head = json.dumps({"schema": JSON_SCHEMA, "version": JSON_VERSION})[:-1]
        return head + ', "faults": [\n' + ",\n".join(lines) + "\n]}\n"

    @classmethod
    def from_json(cls, text: str) -> FaultList:
        """Parse JSON text written by :meth:`to_json`; validate every record.

        Raises ``ValueError`` naming the record (``faults[i]``) and field of the first bad value.
        """
        fn = "FaultList.from_json"
        if not isinstance(text, str):
            raise TypeError(f"{fn}: text must be a str, got {validation.describe(text)}")
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{fn}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e
        except RecursionError:  # json's decoder recurses once per nested [ or {: a damaged file
            raise ValueError(
                f"{fn}: text must be a fault list, got JSON nested too deeply to decode"
            ) from None
        if not isinstance(doc, dict):
            raise ValueError(f"{fn}: the top level must be an object, got {type(doc).__name__}")
        version = doc.get("version")  # an int: true and 1.0 equal 1 in Python but are not version 1
        if doc.get("schema") != JSON_SCHEMA or type(version) is not int or version != JSON_VERSION:
            raise ValueError(
                f"{fn}: schema/version must be {JSON_SCHEMA!r}/{JSON_VERSION}, "
                f"got {doc.get('schema')!r}/{doc.get('version')!r}"
            )
        faults = doc.get("faults")
        if not isinstance(faults, list):
            raise ValueError(f"{fn}: field 'faults' must be a list, got {type(faults).__name__}")
        records = []
        for i, rec in enumerate(faults):
            where = f"{fn}: faults[{i}]"
            if not isinstance(rec, dict) or set(rec) != set(COLUMNS):
                keys = sorted(rec) if isinstance(rec, dict) else type(rec).__name__
                raise ValueError(f"{where}: must be an object with keys {COLUMNS}, got {keys}")
            records.append(_validate_record(tuple(rec[c] for c in COLUMNS), where))
        return cls(records)

    def save(self, path: str | Path) -> None:
        """Write to ``path`` as CSV (suffix ``.csv``) or JSON (suffix ``.json``), UTF-8."""
        path = _check_path(path, "FaultList.save")
        text = {".csv": self.to_csv, ".json": self.to_json}.get(path.suffix.lower())
        if text is None:
            raise ValueError(f"FaultList.save: path must end in .csv or .json, got {str(path)!r}")
        path.write_text(text(), encoding="utf-8", newline="")

    @classmethod
    def load(cls, path: str | Path) -> FaultList:
        """Read a file written by :meth:`save` (CSV or JSON by suffix), validating every record."""
        path = _check_path(path, "FaultList.load")
        parse = {".csv": cls.from_csv, ".json": cls.from_json}.get(path.suffix.lower())
        if parse is None:
            raise ValueError(f"FaultList.load: path must end in .csv or .json, got {str(path)!r}")
        # utf-8-sig: a file that starts with a byte-order mark (as spreadsheet programs write CSV) reads
        # as the same text without it; any other UTF-8 file reads as with "utf-8".
        with open(path, encoding="utf-8-sig", newline="") as f:
            return parse(f.read())


# ---------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------
_RAW = re.compile(r"raw([0-9]+)")
_QUANT = re.compile(r"quant([0-9]+)_.*")


def format_width(name: str) -> tuple[int, bool] | None:
    """``(nbits, declared)`` of a record's format name, or None for a name saf_ref does not know.

    ``"raw12"`` -> ``(12, False)`` (an undeclared word: any container of at least 12 bits);
    ``"float16"`` -> ``(16, True)``, ``"q2.5"`` -> ``(8, True)``, ``"quant8_asym_offset_rounded"`` ->
    ``(8, True)`` (declared formats: their codes live in the smallest container of ``nbits`` bits).
    """
    m = _RAW.fullmatch(name)
    if m and 1 <= int(m.group(1)) <= 64:
        return int(m.group(1)), False
    m = _QUANT.fullmatch(name)
    if m and 2 <= int(m.group(1)) <= 16:  # the widths a Quantizer allows
        return int(m.group(1)), True
    try:
        return resolve_format(name, quantizer=False).nbits, True
    except (TypeError, ValueError):
        return None


def _nbits_for_formats(codes: np.ndarray, nbits: Any, formats: tuple[str, ...], fn: str) -> int:
    """``nbits`` for applying records of ``formats`` to ``codes``; refuse codes of another format."""
    width = codes.dtype.itemsize * 8
    nbits = None if nbits is None else validation.check_int(nbits, "nbits", fn, low=1, high=width)
    for name in formats:
        known = format_width(name)
        if known is None:
            continue  # a format saf_ref does not know: only the bit range is checked
        n, declared = known
        if declared and smallest_container(n) != codes.dtype:
            raise TypeError(
                f"{fn}: codes must have dtype {smallest_container(n)} for records of format {name!r} "
                f"({n} bits), got {codes.dtype}"
            )
        if n > width:
            raise TypeError(
                f"{fn}: codes must have at least {n} bits per word for records of format {name!r}, "
                f"got {codes.dtype}"
            )
        if nbits is not None and nbits != n:
            raise ValueError(
                f"{fn}: nbits must equal the width of the records' format {name!r} (={n}), got {nbits}"
            )
        nbits = n
    return width if nbits is None else nbits


def _check_path(path: Any, fn: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{fn}: path must be a str or path-like, got {validation.describe(path)}")
    return Path(path)


def _first_appearance(codes: np.ndarray) -> list[int]:
    """Distinct category codes in order of first appearance."""
    _, first = np.unique(codes, return_index=True)
    return [int(codes[i]) for i in np.sort(first)]


def _validate_record(rec: Any, where: str) -> Fault:
    """Check one record's types and values; ``where`` prefixes the message (function and position)."""
    if not isinstance(rec, tuple) or len(rec) != len(COLUMNS):
        raise ValueError(f"{where}: must be a 5-tuple {COLUMNS}, got {validation.describe(rec)}")
    tensor, index, bit, kind, fmt = rec
    if not isinstance(tensor, str):
        raise ValueError(f"{where}, field 'tensor': expected a string, got {tensor!r}")
    if _CONTROL.search(tensor):
        raise ValueError(f"{where}, field 'tensor': expected no control characters, got {tensor!r}")
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index <= _MAX_INDEX:
        raise ValueError(f"{where}, field 'index': expected an integer in [0, 2**63 - 1], got {index!r}")
    if isinstance(bit, bool) or not isinstance(bit, (int, np.integer)) or not 0 <= bit <= _MAX_BIT:
        raise ValueError(f"{where}, field 'bit': expected an integer in [0, {_MAX_BIT}], got {bit!r}")
    if kind not in KINDS:
        raise ValueError(f"{where}, field 'kind': expected one of {KINDS}, got {kind!r}")
    if not isinstance(fmt, str) or not fmt:
        raise ValueError(f"{where}, field 'format': expected a non-empty string, got {fmt!r}")
    if _CONTROL.search(fmt):
        raise ValueError(f"{where}, field 'format': expected no control characters, got {fmt!r}")
    return Fault(tensor, int(index), int(bit), kind, fmt)


def _parse_text_record(row: list[str], where: str) -> Fault:
    """Turn the five text fields of a CSV row into a validated record."""
    tensor, index, bit, kind, fmt = row
    if not _DIGITS.fullmatch(index):
        raise ValueError(f"{where}, field 'index': expected an integer in [0, 2**63 - 1], got {index!r}")
    if not _DIGITS.fullmatch(bit):
        raise ValueError(f"{where}, field 'bit': expected an integer in [0, {_MAX_BIT}], got {bit!r}")
    return _validate_record((tensor, int(index), int(bit), kind, fmt), where)


def _apply_columns(
    codes: np.ndarray, index: np.ndarray, bit: np.ndarray, kind: np.ndarray, nbits: int, fn: str, tensor: str
) -> np.ndarray:
    """Apply flip/stuck columns to a copy of ``codes`` (see :meth:`FaultList.apply` for the order)."""
    label = f" of tensor {tensor!r}" if tensor else ""
    if index.size and index.max() >= codes.size:
        raise ValueError(
            f"{fn}: every index{label} must be < codes.size (={codes.size}), got index {index.max()}"
        )
    if bit.size and bit.max() >= nbits:
        raise ValueError(f"{fn}: every bit{label} must be < nbits (={nbits}), got bit {bit.max()}")
    dtype = codes.dtype.type
    out = np.array(codes, order="C", copy=True)
    flat = out.reshape(-1)  # a view: out is C-contiguous
    masks = np.left_shift(dtype(1), bit.astype(codes.dtype))
    flips, s0, s1 = (kind == KINDS.index(k) for k in KINDS)
    # ufunc.at applies repeated indices one after another (plain fancy assignment would keep only one)
    np.bitwise_xor.at(flat, index[flips], masks[flips])
    if s0.any() or s1.any():
        # a bit is identified by index * 64 + bit; one both stuck0 and stuck1 is contradictory
        key0 = index[s0] * 64 + bit[s0]
        key1 = index[s1] * 64 + bit[s1]
        both = np.intersect1d(key0, key1)
        if both.size:
            raise ValueError(
                f"{fn}: a bit cannot be both stuck0 and stuck1, "
                f"got index {both[0] // 64}, bit {both[0] % 64}{label}"
            )
        np.bitwise_and.at(flat, index[s0], ~masks[s0])
        np.bitwise_or.at(flat, index[s1], masks[s1])
    return out
