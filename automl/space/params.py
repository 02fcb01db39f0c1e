"""Parameters: a fixed value or a range, checked against a `Rule` (what the key's values must be).

    dropout: 0.1                                        # fixed
    depth: {type: int, low: 1, high: 3}                  # int range (optional log, step)
    lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
    activation: {type: categorical, choices: [relu, gelu]}

Ranges become Optuna distributions, which check their own invariants. `Rule` and `ParamOf` are
pydantic annotations: `Annotated[int, POSITIVE_INT]` is a fixed value, `Annotated[Param,
ParamOf(POSITIVE_INT)]` a parameter; both raise `Problem`s with this tool's messages.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import core_schema

from automl.space.problems import Problem, show

PRIMITIVES = (type(None), bool, int, float, str)


@dataclass(frozen=True)
class Rule:
    """What a key's values must be: a kind ("int", "float", "bool", "str" or "any"), a predicate
    and its description; `nullable` rules also take null (None)."""

    kind: str
    check: Callable[[Any], bool]
    expected: str
    nullable: bool = False

    def accepts(self, value: Any) -> bool:
        if self.kind == "any":
            return self.check(value)
        if self.kind == "bool":
            return isinstance(value, bool)
        if isinstance(value, bool):
            return False
        if self.kind == "int":
            ok = isinstance(value, int)
        elif self.kind == "float":
            ok = isinstance(value, (int, float)) and math.isfinite(value)
        else:
            ok = isinstance(value, str)
        return ok and self.check(value)

    def validate(self, value: Any) -> Any:
        """The value (ints made floats for float rules), or a `Problem`."""
        if value is None and self.nullable:
            return None
        if self.kind == "float" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not self.accepts(value):
            raise Problem(f"expected {self.expected}, got {show(value)}")
        return value

    def or_none(self) -> Rule:
        return Rule(self.kind, self.check, self.expected, nullable=True)

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(self.validate)


def one_of(names: Sequence[str]) -> Rule:
    names = tuple(names)
    return Rule("str", lambda v: v in names, "one of " + ", ".join(names))


POSITIVE_INT = Rule("int", lambda v: v >= 1, "an integer >= 1")
NON_NEGATIVE_INT = Rule("int", lambda v: v >= 0, "an integer >= 0")
ODD_INT = Rule("int", lambda v: v >= 1 and v % 2 == 1, "an odd integer >= 1")
FRACTION = Rule("float", lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")
SPLIT = Rule("float", lambda v: 0.0 < v <= 0.5, "a number in (0, 0.5]")
POSITIVE_FLOAT = Rule("float", lambda v: v > 0, "a number > 0")
NON_NEGATIVE_FLOAT = Rule("float", lambda v: v >= 0, "a number >= 0")
BOOL = Rule("bool", lambda v: True, "true or false")
TEXT = Rule("str", bool, "a non-empty string")
INT = Rule("int", lambda v: True, "an int")
FLOAT = Rule("float", lambda v: True, "a float")
ANY = Rule("any", lambda v: True, "any value")
OPTION_RULES = {"fraction": FRACTION, "positive": POSITIVE_FLOAT, "bool": BOOL}


@dataclass(frozen=True)
class Param:
    """A fixed value, or an Optuna distribution to sample from. `encoded` categoricals hold
    lists or mappings as JSON text (Optuna's choices must be plain values)."""

    fixed: Any = None
    distribution: BaseDistribution | None = None
    encoded: bool = False

    def sample(self, trial: optuna.trial.BaseTrial, name: str) -> Any:
        d = self.distribution
        if d is None:
            return self.fixed
        if isinstance(d, IntDistribution):
            return trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
        if isinstance(d, FloatDistribution):
            return trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log)
        value = trial.suggest_categorical(name, d.choices)  # type: ignore[attr-defined]
        return json.loads(value) if self.encoded else value

    def values(self) -> list[Any]:
        """Every value a categorical or fixed parameter can take (for cross-checks)."""
        if self.distribution is None:
            return [self.fixed]
        choices = list(getattr(self.distribution, "choices", []))
        return [json.loads(c) for c in choices] if self.encoded else choices

    def dump(self) -> Any:
        """The YAML form: the value, or the `{type: ...}` mapping."""
        d = self.distribution
        if d is None:
            return self.fixed
        if isinstance(d, (IntDistribution, FloatDistribution)):
            kind = "int" if isinstance(d, IntDistribution) else "float"
            out = {"type": kind, "low": d.low, "high": d.high, "log": d.log}
            return out if d.step is None else {**out, "step": d.step}
        return {"type": "categorical", "choices": self.values()}


class _Range(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IntRange(_Range):
    type: Literal["int"]
    low: Any = None
    high: Any = None
    log: Any = False
    step: Any = 1


class FloatRange(_Range):
    type: Literal["float"]
    low: Any = None
    high: Any = None
    log: Any = False
    step: Any = None


class Categorical(_Range):
    type: Literal["categorical"]
    choices: Any = None


RANGES: dict[str, type[_Range]] = {"int": IntRange, "float": FloatRange, "categorical": Categorical}


def _structure(spec: dict, kind: str) -> _Range:
    """The range's keys: only those its type takes."""
    try:
        return RANGES[kind].model_validate(spec)
    except ValidationError as e:
        error = e.errors()[0]
        allowed = ", ".join(sorted(RANGES[kind].model_fields))
        raise Problem(f"unknown key (expected one of: {allowed})", *error["loc"]) from None


def _categorical(choices: Any, rule: Rule) -> Param:
    if not isinstance(choices, list) or not choices:
        raise Problem("expected a non-empty list of choices", "choices")
    checked = [_choice(choice, rule, i) for i, choice in enumerate(choices)]
    encoded = any(not isinstance(c, PRIMITIVES) for c in checked)
    if encoded:
        checked = [json.dumps(c, sort_keys=True) for c in checked]
    if len({json.dumps(c, sort_keys=True) for c in checked}) != len(checked):
        raise Problem("choices must be distinct", "choices")
    return Param(distribution=CategoricalDistribution(checked), encoded=encoded)


def _choice(choice: Any, rule: Rule, i: int) -> Any:
    try:
        choice = rule.validate(choice)
        json.dumps(choice)
    except Problem as e:
        raise Problem(e.message, "choices", i) from None
    except (TypeError, ValueError):
        raise Problem(f"expected a plain value, list or mapping, got {show(choice)}", "choices", i) from None
    return choice


def _numeric(spec: _Range, kind: str, rule: Rule) -> Param:
    if rule.kind not in (kind, "any") and not (rule.kind == "float" and kind == "int"):
        expected = "categorical" if rule.kind in ("bool", "str") else rule.kind
        raise Problem(f"expected {expected!r} for this key, got {kind!r}", "type")
    number = INT if kind == "int" else FLOAT
    values = {}
    for key in ("low", "high", "log", "step"):
        value = getattr(spec, key)
        if key in ("low", "high") and value is None:
            raise Problem(f"missing; expected {number.expected}", key)
        check = BOOL if key == "log" else number.or_none() if key == "step" else number
        try:
            values[key] = check.validate(value)
        except Problem as e:
            raise Problem(e.message, key) from None
    try:
        cls = IntDistribution if kind == "int" else FloatDistribution
        dist: BaseDistribution = cls(values["low"], values["high"], log=values["log"], step=values["step"])
    except ValueError as e:
        raise Problem(str(e)) from None
    for key in ("low", "high"):
        if not rule.accepts(values[key]):
            raise Problem(f"expected {rule.expected}, got {show(values[key])}", key)
    return Param(distribution=dist)


def parse_param(spec: Any, rule: Rule) -> Param:
    """A fixed value or a `{type: ...}` range whose every value satisfies `rule`."""
    if isinstance(spec, Param):
        return spec
    if not isinstance(spec, dict):
        return Param(fixed=rule.validate(spec))
    kind = spec.get("type")
    if not isinstance(kind, str) or kind not in RANGES:
        raise Problem(f"expected type int, float or categorical, got {show(kind)}", *(["type"] if "type" in spec
                                                                                       else []))
    structure = _structure(spec, kind)
    if kind == "categorical":
        return _categorical(structure.choices, rule)  # type: ignore[attr-defined]
    return _numeric(structure, kind, rule)


def check_values(param: Param, rule: Rule) -> None:
    """Every value a fixed or categorical parameter can take satisfies `rule` (a stricter rule
    than the one it was parsed with, e.g. the losses of the dataset's task)."""
    if param.distribution is None:
        rule.validate(param.fixed)
        return
    for i, value in enumerate(param.values()):
        if not rule.accepts(value):
            raise Problem(f"expected {rule.expected}, got {show(value)}", "choices", i)


@dataclass(frozen=True)
class ParamOf:
    """Pydantic annotation: the field is a `Param` checked against `rule`."""

    rule: Rule

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            lambda value: parse_param(value, self.rule),
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda p: p.dump() if isinstance(p, Param) else p),
        )
