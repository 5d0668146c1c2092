"""Typed rows and the one place their Arrow schema is derived.

Every table row in calcpipe is a frozen dataclass whose field names carry their units
(``volume_mm3``, ``peak_hu``). :func:`arrow_schema` maps the annotations to Arrow types;
``X | None`` becomes a nullable column, anything else non-nullable.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable
from typing import Any

if typing.TYPE_CHECKING:
    import pyarrow as pa

_ARROW_TYPES = {int: "int64", float: "float64", str: "string", bool: "bool_"}


def _arrow_type(annotation: Any) -> tuple[Any, bool]:
    import pyarrow as pa

    nullable = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        nullable = len(members) < len(typing.get_args(annotation))
        if len(members) != 1:
            raise TypeError(f"unsupported union annotation {annotation!r}")
        annotation = members[0]
    if annotation not in _ARROW_TYPES:
        raise TypeError(f"no Arrow type for annotation {annotation!r}")
    return getattr(pa, _ARROW_TYPES[annotation])(), nullable


def arrow_schema(row_type: type) -> pa.Schema:
    """Arrow schema of a row dataclass, in field order."""
    import pyarrow as pa

    hints = typing.get_type_hints(row_type)
    fields = []
    for field in dataclasses.fields(row_type):
        arrow_type, nullable = _arrow_type(hints[field.name])
        fields.append(pa.field(field.name, arrow_type, nullable=nullable))
    return pa.schema(fields)


def to_arrow(rows: Iterable[Any], row_type: type) -> pa.Table:
    """Rows as an Arrow table with the derived schema (typed even when empty)."""
    import pyarrow as pa

    schema = arrow_schema(row_type)
    columns: dict[str, list[Any]] = {name: [] for name in schema.names}
    for row in rows:
        for name in schema.names:
            columns[name].append(getattr(row, name))
    return pa.table(columns, schema=schema)
