"""Compiling a :class:`SearchFilter` into a SQL predicate over the ``documents`` row ``d``.

Every search query embeds this predicate, so a caller is never shown, counted
or ranked against a chunk it may not read: BM25 statistics are computed over
the visible chunks only.
"""

from __future__ import annotations

import json
from typing import Any

from psycopg import sql

from verity.core.types import MetadataCondition, SearchFilter

_RANGE_OPS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


def compile_filter(f: SearchFilter | None) -> tuple[sql.Composable, dict[str, Any]]:
    """A predicate on alias ``d`` and its parameters (named ``f_*``; keys and values alike)."""
    if f is None:
        return sql.SQL("TRUE"), {}
    parts: list[sql.Composable] = []
    params: dict[str, Any] = {}
    if f.groups is not None:
        params["f_groups"] = list(f.groups)
        parts.append(sql.SQL("(d.acl_groups = '{}' OR d.acl_groups && %(f_groups)s::text[])"))
    for i, cond in enumerate(f.conditions):
        part, value = _condition(cond, name=f"f_{i}")
        parts.append(part)
        params[f"f_{i}"] = value
        params[f"f_{i}_key"] = cond.key
    if not parts:
        return sql.SQL("TRUE"), {}
    return sql.SQL(" AND ").join(parts), params


def _condition(cond: MetadataCondition, *, name: str) -> tuple[sql.Composable, Any]:
    # The key is a parameter too: as a literal in the SQL text, a '%' in it would be taken
    # for a placeholder by psycopg (and fail the query).
    key = sql.SQL("{}::text").format(sql.Placeholder(f"{name}_key"))
    param = sql.Placeholder(name)
    match cond.op:
        case "eq":
            return sql.SQL("d.metadata @> {}::jsonb").format(param), json.dumps({cond.key: cond.value})
        case "in":
            if not isinstance(cond.value, list | tuple) or not cond.value:
                raise ValueError(f"filter {cond.key!r} 'in' needs a non-empty list")
            return (sql.SQL("(d.metadata -> {}) = ANY({}::jsonb[])").format(key, param),
                    [json.dumps(v) for v in cond.value])
        case "gt" | "gte" | "lt" | "lte":
            op = sql.SQL(_RANGE_OPS[cond.op])
            if isinstance(cond.value, bool) or not isinstance(cond.value, int | float | str):
                raise ValueError(f"filter {cond.key!r} {cond.op!r} needs a number or a string")
            if isinstance(cond.value, str):  # ISO dates and other ordered strings
                return (sql.SQL("(jsonb_typeof(d.metadata -> {k}) = 'string' AND "
                                "(d.metadata ->> {k}) {op} {p})").format(k=key, op=op, p=param),
                        cond.value)
            return (sql.SQL("(CASE WHEN jsonb_typeof(d.metadata -> {k}) = 'number' "
                            "THEN (d.metadata ->> {k})::numeric {op} {p} ELSE false END)"
                            ).format(k=key, op=op, p=param), cond.value)
        case _:
            raise ValueError(f"unknown filter op {cond.op!r}; use eq, in, gt, gte, lt or lte")
