"""The metadata filter language: parsing with budgets, and evaluation on a row or on columns."""

# Filter language 2 (docs/protocol.md, "Filter language"). A filter is a JSON object:
#
#   {}                                   no filter (top level only)
#   {"field": scalar}                    equality, as {"field": {"eq": scalar}}
#   {"field": {"op": operand, ...}}      every operator holds: eq ne in not_in gt gte lt lte
#                                        exists
#   {"and": [f, ...]} {"or": [f, ...]}   all / at least one of 1.. filters
#   {"not": f}                           f does not hold
#
# and the members of one object all hold. Language 1 had equality and "in" only; each of its
# filters means what it meant: "and" and "or" are combinators only with a list (a language-1
# value was never a list), and "not" only with an object that is not a condition (an object
# whose keys are all operators is a condition on a field named "not", as it was).
#
# Kinds and comparisons are those of indexer/columns.py (`kind_of`): strings, numbers (as
# doubles), booleans, null, and anything else, which equals nothing. A condition holds only on
# a value of its operand's kind: true is not 1, and a range never crosses kinds. `ne` and
# `not_in` are the negations of `eq` and `in`: they hold where the field is missing.
#
# Parsed filters are trees of Cond, And, Or and Not; eq and ne are stored as in and not_in of
# one value. `matches` evaluates a tree on one row's metadata (the reference); `evaluate` on
# the columns of a block of rows, with numpy. A property test holds them equal.

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from indexer import columns
from indexer.columns import BOOL, MISSING, NULL, NUMBER, STRING, Columns, field_value, kind_of

LANGUAGE = 2
# Budgets of one filter: and/or/not levels, conditions (one operator on one field each; the
# 64 fields of language 1 are 64 conditions), and values in one in/not_in list.
MAX_FILTER_DEPTH = 8
MAX_FILTER_CLAUSES = 64
MAX_FILTER_VALUES = 1024
LIST_OPS = ("in", "not_in")
RANGE_OPS = ("gt", "gte", "lt", "lte")
OPERATORS = ("eq", "ne", *LIST_OPS, *RANGE_OPS, "exists")
_SCALARS = "values must be strings, finite numbers, booleans or null"


class FilterError(ValueError):
    """A filter that is not in the language or over a budget; the message says where and why."""


@dataclass(frozen=True, slots=True, eq=False)
class Cond:
    """One operator on one field: in / not_in (values), a range (one value), exists (a bool)."""

    field: str
    op: str
    values: tuple[Any, ...]

    def _key(self) -> tuple:
        # Kinds keep true apart from 1 (equal in Python), as the language does.
        return (self.field, self.op, tuple(kind_of(v) for v in self.values))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Cond) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


@dataclass(frozen=True, slots=True)
class And:
    """Every part holds."""

    parts: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Or:
    """At least one part holds."""

    parts: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Not:
    """The part does not hold."""

    part: Expr


Expr = Cond | And | Or | Not


# Parsing.

def parse(obj: Any) -> Expr | None:
    """The filter `obj` (decoded JSON) as a tree; None for no filter; FilterError if invalid."""
    if obj is None:
        return None
    if not isinstance(obj, Mapping):
        raise FilterError("must be a JSON object: {\"field\": value}, {\"field\": {\"op\": "
                          "value}}, {\"and\": [filters]}, {\"or\": [filters]} or "
                          "{\"not\": filter}")
    if not obj:
        return None
    budget = _Budget()
    return _filter(obj, "", 0, budget)


class _Budget:
    """Conditions counted while one filter is parsed."""

    def __init__(self) -> None:
        self.clauses = 0

    def clause(self) -> None:
        self.clauses += 1
        if self.clauses > MAX_FILTER_CLAUSES:
            raise FilterError(f"holds more than {MAX_FILTER_CLAUSES} conditions (an operator "
                              "on a field each), over the limit")


def _filter(obj: Any, where: str, depth: int, budget: _Budget) -> Expr:
    """One filter object: the AND of its members."""
    if not isinstance(obj, Mapping):
        raise FilterError(f"{where}must be a filter object, got {_show(obj)}")
    if not obj:
        raise FilterError(f"{where}is an empty filter: an empty object means no filter only "
                          "as the whole filter")
    if len(obj) > MAX_FILTER_CLAUSES:
        raise FilterError(f"{where}has {len(obj)} fields, over the limit of "
                          f"{MAX_FILTER_CLAUSES}")
    parts: list[Expr] = []
    for name, value in obj.items():
        if not isinstance(name, str) or not name:
            raise FilterError(f"{where}field names must be non-empty strings")
        if _combinator(name, value):
            if depth >= MAX_FILTER_DEPTH:
                raise FilterError(f"{where}nests and/or/not deeper than {MAX_FILTER_DEPTH} "
                                  "levels")
            parts.append(_combined(name, value, where, depth + 1, budget))
        else:
            parts.append(_condition(name, value, where, budget))
    return _join(And, parts)


def _combinator(name: str, value: Any) -> bool:
    """Whether a member is and/or/not, rather than a condition on a field of that name."""
    if name in ("and", "or"):
        return isinstance(value, (list, tuple))
    if name == "not":
        return isinstance(value, Mapping) and not (value and all(
            isinstance(k, str) and k in OPERATORS for k in value))
    return False


def _combined(name: str, value: Any, where: str, depth: int, budget: _Budget) -> Expr:
    if name == "not":
        return Not(_filter(value, f"{where}not: ", depth, budget))
    if not value:
        raise FilterError(f"{where}{name!r} needs a list of at least one filter")
    parts = [_filter(v, f"{where}{name}[{i}]: ", depth, budget) for i, v in enumerate(value)]
    return _join(And if name == "and" else Or, parts)


def _join(kind: type, parts: list[Expr]) -> Expr:
    """One part as itself; several as `kind`, with nested parts of the same kind flattened."""
    flat: list[Expr] = []
    for part in parts:
        flat.extend(part.parts if isinstance(part, kind) else [part])
    return flat[0] if len(flat) == 1 else kind(tuple(flat))


def _condition(name: str, value: Any, where: str, budget: _Budget) -> Expr:
    """The condition on field `name`: a scalar (equality) or an object of operators."""
    at = f"{where}{name!r}: "
    if not isinstance(value, Mapping):
        _scalar(value, at)
        budget.clause()
        return Cond(name, "in", (value,))
    if not value:
        raise FilterError(f"{at}a condition needs at least one operator of "
                          f"{', '.join(OPERATORS)}")
    conds = []
    for op, operand in value.items():
        if op not in OPERATORS:
            raise FilterError(f"{at}unknown operator {str(op)[:40]!r}; expected one of "
                              f"{', '.join(OPERATORS)}")
        budget.clause()
        conds.append(_operator(name, op, operand, at))
    return _join(And, conds)


def _operator(name: str, op: str, operand: Any, at: str) -> Cond:
    if op in ("eq", "ne"):
        _scalar(operand, at)
        return Cond(name, "in" if op == "eq" else "not_in", (operand,))
    if op in LIST_OPS:
        if not (isinstance(operand, (list, tuple)) and 1 <= len(operand) <= MAX_FILTER_VALUES):
            raise FilterError(f"{at}{op!r} needs a list of 1..{MAX_FILTER_VALUES} values")
        for v in operand:
            _scalar(v, at)
        return Cond(name, op, tuple(operand))
    if op in RANGE_OPS:
        kind = kind_of(operand)[0] if _is_scalar(operand) else None
        if kind not in (NUMBER, STRING):
            raise FilterError(f"{at}{op!r} needs a number or a string, got {_show(operand)}")
        return Cond(name, op, (operand,))
    if not isinstance(operand, bool):
        raise FilterError(f"{at}'exists' needs true or false, got {_show(operand)}")
    return Cond(name, "exists", (operand,))


def _is_scalar(value: Any) -> bool:
    if value is None or isinstance(value, (bool, str)):
        return True
    if isinstance(value, (int, float)):
        try:
            return math.isfinite(float(value))
        except OverflowError:  # an integer no double holds
            return False
    return False


def _scalar(value: Any, at: str) -> None:
    if not _is_scalar(value):
        raise FilterError(f"{at}{_SCALARS}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


# The wire form.

def to_json(expr: Expr) -> dict[str, Any]:
    """The canonical JSON object of a parsed filter: parse(to_json(e)) == e.

    A conjunction of conditions on distinct fields is one object, as language 1 wrote it:
    `{"color": "red", "size": {"in": [1, 2]}}`.
    """
    if isinstance(expr, Cond):
        return {expr.field: _operand_json([expr])}
    if isinstance(expr, And):
        merged = _one_object(expr.parts)
        return merged if merged is not None else {"and": [to_json(p) for p in expr.parts]}
    if isinstance(expr, Or):
        return {"or": [to_json(p) for p in expr.parts]}
    inner = to_json(expr.part)
    if all(k in OPERATORS for k in inner):  # would read as a condition on a field "not"
        inner = {"and": [inner]}
    return {"not": inner}


def _one_object(parts: tuple[Expr, ...]) -> dict[str, Any] | None:
    """Conditions as one object, {field: operators}, when that reads back as the same parts:
    each field's conditions side by side, with distinct operators; else None."""
    if not all(isinstance(p, Cond) for p in parts):
        return None
    out: dict[str, list[Cond]] = {}
    for i, part in enumerate(parts):
        if part.field in out and parts[i - 1].field != part.field:
            return None  # the object would move this condition next to the field's others
        out.setdefault(part.field, []).append(part)
    if any(len({_op_key(c) for c in conds}) < len(conds) for conds in out.values()):
        return None
    return {name: _operand_json(conds) for name, conds in out.items()}


def _op_key(cond: Cond) -> str:
    """The operator a condition is written with: eq and ne for lists of one value."""
    if cond.op in LIST_OPS and len(cond.values) == 1:
        return "eq" if cond.op == "in" else "ne"
    return cond.op


def _operand_json(conds: list[Cond]) -> Any:
    if len(conds) == 1 and _op_key(conds[0]) == "eq":
        return conds[0].values[0]
    return {_op_key(c): list(c.values) if _op_key(c) in LIST_OPS else c.values[0]
            for c in conds}


def fields(expr: Expr | None) -> frozenset[str]:
    """Every field a filter names."""
    if expr is None:
        return frozenset()
    if isinstance(expr, Cond):
        return frozenset([expr.field])
    if isinstance(expr, Not):
        return fields(expr.part)
    return frozenset().union(*(fields(p) for p in expr.parts))


# The reference evaluator: one row's metadata.

def matches(expr: Expr | None, metadata: Any) -> bool:
    """True when a row whose metadata is `metadata` (an object, or None) passes the filter."""
    if expr is None:
        return True
    if isinstance(expr, And):
        return all(matches(p, metadata) for p in expr.parts)
    if isinstance(expr, Or):
        return any(matches(p, metadata) for p in expr.parts)
    if isinstance(expr, Not):
        return not matches(expr.part, metadata)
    kind, key = kind_of(field_value(metadata, expr.field))
    op = expr.op
    if op == "exists":
        return (kind != MISSING) == expr.values[0]
    if op in LIST_OPS:
        hit = any(kind_of(v) == (kind, key) for v in expr.values)
        return hit if op == "in" else not hit
    want_kind, want = kind_of(expr.values[0])
    if kind != want_kind:
        return False
    if op == "gt":
        return key > want
    if op == "gte":
        return key >= want
    if op == "lt":
        return key < want
    return key <= want


# The column evaluator: a block of rows at once.

def evaluate(expr: Expr | None, table: Columns) -> np.ndarray:
    """Which rows of a block pass the filter: bool (rows,), from the block's columns."""
    if expr is None:
        return np.ones(table.rows, dtype=bool)
    if isinstance(expr, And):
        out = evaluate(expr.parts[0], table)
        for part in expr.parts[1:]:
            out &= evaluate(part, table)
        return out
    if isinstance(expr, Or):
        out = evaluate(expr.parts[0], table)
        for part in expr.parts[1:]:
            out |= evaluate(part, table)
        return out
    if isinstance(expr, Not):
        return ~evaluate(expr.part, table)
    return _cond(expr, table.column(expr.field), table.rows)


def _cond(cond: Cond, col: columns.Column | None, rows: int) -> np.ndarray:
    op = cond.op
    if op == "exists":
        if col is None:
            return np.full(rows, not cond.values[0])
        return col.present.copy() if cond.values[0] else ~col.present
    if op in LIST_OPS:
        hit = _in(cond.values, col, rows)
        return hit if op == "in" else ~hit
    kind, want = kind_of(cond.values[0])
    if col is None:
        return np.zeros(rows, dtype=bool)
    if kind == NUMBER:
        if col.num is None:
            return np.zeros(rows, dtype=bool)
        with np.errstate(invalid="ignore"):  # NaN (not a number) compares false, as it must
            return {"gt": np.greater, "gte": np.greater_equal, "lt": np.less,
                    "lte": np.less_equal}[op](col.num, want)
    if col.codes is None:
        return np.zeros(rows, dtype=bool)
    if op in ("gt", "gte"):
        return col.codes >= col.vocab.below(want, inclusive=op == "gt")
    return (col.codes >= 0) & (col.codes < col.vocab.below(want, inclusive=op == "lte"))


def _in(values: Sequence[Any], col: columns.Column | None, rows: int) -> np.ndarray:
    """Rows whose value equals one of `values` (kinds apart)."""
    out = np.zeros(rows, dtype=bool)
    if col is None:
        return out
    nums, codes = [], []
    for value in values:
        kind, key = kind_of(value)
        if kind == NUMBER:
            nums.append(key)
        elif kind == STRING and col.vocab is not None:
            code = col.vocab.code(key)
            if code >= 0:
                codes.append(code)
        elif kind == BOOL and col.bools is not None:
            out |= col.bools == int(key)
        elif kind == NULL and col.null is not None:
            out |= col.null
    if nums and col.num is not None:
        out |= np.isin(col.num, nums) if len(nums) > 1 else col.num == nums[0]
    if codes:
        out |= np.isin(col.codes, codes) if len(codes) > 1 else col.codes == codes[0]
    return out


def evaluate_pieces(expr: Expr | None, pieces: Sequence[tuple[Columns, int, int]],
                    rows: int) -> np.ndarray:
    """The filter over rows held in consecutive pieces of blocks: (columns, first, end)."""
    if not pieces:
        return np.ones(rows, dtype=bool) if expr is None else np.zeros(rows, dtype=bool)
    out = np.concatenate([evaluate(expr, table)[a:b] for table, a, b in pieces])
    if len(out) != rows:
        raise ValueError(f"column pieces hold {len(out)} rows, the source {rows}")
    return out


def segment_accepts(segment: Any):
    """The filter evaluator of a loaded segment's rows: expr -> bool (rows,), from its columns."""
    return lambda expr: evaluate(expr, columns.of_segment(segment))
