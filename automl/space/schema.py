"""The search-space schema: one pydantic model per YAML section, every list read from the registries.

Field-level checks (types, ranges, allowed names) come from `Rule`/`ParamOf` annotations; checks
that join keys of one section run in that section's validator, and checks across sections (the
dataset's task decides the metrics and losses, its kind the model families) in `Document`'s.
Validators raise `Problem`s; `automl.space.core` turns the first one into a `SpaceError` line.
"""

from __future__ import annotations

import inspect
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, create_model, model_validator
from pydantic_core import core_schema

from automl import registries as reg
from automl.builder import BuilderError, absolute_spec, check_param_names, import_path_of, resolve_builder
from automl.space.params import (
    ANY,
    BOOL,
    FRACTION,
    NON_NEGATIVE_FLOAT,
    NON_NEGATIVE_INT,
    ODD_INT,
    OPTION_RULES,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    SPLIT,
    TEXT,
    Param,
    ParamOf,
    Rule,
    check_values,
    one_of,
)
from automl.space.problems import Problem, excerpt, show

FAMILY_KEYS = ("depth", "width", "activation", "dropout", "batch_norm", "blocks", "channels", "kernel_size")
CNN_KEYS = ("blocks", "channels", "kernel_size")
DATA_KEYS = ("path", "target", "task", "image_size", "color")
# trial parameter names that suggest() uses besides a builder's own parameters
RESERVED = {"loss", "optimizer", "lr", "weight_decay", "batch_size", "schedule"} | {
    o.field or key for info in reg.LOSSES.values() for key, o in info.options.items()
} | {f"{name}.{key}" for name, info in reg.OPTIMIZERS.items() for key in info.options}
MAPPING = Rule("any", lambda v: isinstance(v, dict), "a mapping")


def _p(rule: Rule) -> Any:
    return Annotated[Param, ParamOf(rule)]


def _fixed(value: Any) -> Any:
    return Field(default_factory=lambda: Param(fixed=value))


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


class _ImageSize:
    """Pydantic annotation: `32` or `[32, 24]` -> [height, width]."""

    @staticmethod
    def validate(value: Any) -> list[int] | None:
        if value is None:
            return None
        sizes = [value, value] if isinstance(value, int) and not isinstance(value, bool) else value
        if (not isinstance(sizes, list) or len(sizes) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in sizes)):
            raise Problem(f"expected an integer >= 1 or [height, width], got {show(value)}")
        return sizes

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(cls.validate)


class DataSection(Section):
    dataset: Annotated[str, one_of(reg.DATASETS)]
    validation_fraction: Annotated[float, SPLIT] = 0.15
    test_fraction: Annotated[float, SPLIT] = 0.15
    augment: Annotated[bool, BOOL] = False
    path: Annotated[str | None, TEXT.or_none()] = None
    target: Annotated[str | None, TEXT.or_none()] = None
    task: Annotated[str | None, one_of(reg.TASKS).or_none()] = None
    image_size: Annotated[list[int] | None, _ImageSize] = None
    color: Annotated[str | None, one_of(reg.COLORS).or_none()] = None

    @model_validator(mode="after")
    def _per_dataset(self, info: ValidationInfo) -> DataSection:
        source = reg.DATASETS[self.dataset]
        for key in DATA_KEYS:
            if getattr(self, key) is not None and key not in source.keys:
                takers = ", ".join(n for n, d in reg.DATASETS.items() if key in d.keys)
                raise Problem(f"only for data.dataset: {takers}", key)
        for key in source.required:
            if getattr(self, key) is None:
                expected = self.model_fields[key].metadata[0].expected
                raise Problem(f"missing; data.dataset: {self.dataset} needs it ({expected})", key)
        if "task" in source.keys and self.task is None:
            self.task = source.default_task
        if self.dataset == "image_folder":
            self.image_size = self.image_size or [32, 32]
            self.color = self.color or "rgb"
        if self.path is not None:
            base = (info.context or {}).get("base_dir") or Path.cwd()
            self.path = os.path.normpath(Path(base) / Path(self.path).expanduser())
        if self.augment and source.kind not in ("image", "array"):
            raise Problem(f"augmentation needs an image dataset, not {self.dataset!r}", "augment")
        return self


# `objective.select.where` conditions: "<= 2", ">= 0.95", "< 1e5", "> 0"
CONDITION = re.compile(r"^\s*(<=|>=|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")
# pruners that a multi-objective search can apply per epoch (automl.pruning)
MULTI_OBJECTIVE_PRUNERS = ("median", "percentile", "none")


def parse_condition(text: Any) -> tuple[str, float]:
    """`"<= 2"` -> ("<=", 2.0); a `Problem` for anything else."""
    match = CONDITION.match(text) if isinstance(text, str) else None
    if match is None or not math.isfinite(float(match.group(2))):
        raise Problem(f'expected a condition such as "<= 2" or ">= 0.95", got {show(text)}')
    return match.group(1), float(match.group(2))


class SelectSection(Section):
    """Which trial of the Pareto front becomes the champion (automl.selection)."""

    best: Annotated[str | None, TEXT.or_none()] = None  # default: the first metric
    where: Annotated[dict[str, Any] | None, MAPPING.or_none()] = None  # metric -> condition


METRIC_LIST = Rule("any", lambda v: isinstance(v, list) and all(isinstance(m, str) for m in v),
                   "a list of metric names")


class ObjectiveSection(Section):
    metric: Annotated[str | None, one_of([m for ms in reg.METRICS.values() for m in ms]).or_none()] = None
    direction: Annotated[str | None, one_of(["maximize", "minimize"]).or_none()] = None
    metrics: Annotated[list[str] | None, METRIC_LIST.or_none()] = None  # several: a multi-objective search
    select: SelectSection | None = None


NUMBER = Rule("float", lambda v: True, "a number")
# the values each metric can take, for checking budget.goal: (low, high), None for no bound
METRIC_RANGES: dict[str, tuple[float | None, float | None]] = {
    "val_accuracy": (0.0, 1.0), "val_r2": (None, 1.0),
    "val_loss": (0.0, None), "val_rmse": (0.0, None), "val_mae": (0.0, None),
}


class BudgetSection(Section):
    epochs: Annotated[int, POSITIVE_INT] = 10
    trials: Annotated[int, POSITIVE_INT] = 20
    timeout: Annotated[float | None, POSITIVE_FLOAT.or_none()] = None
    goal: Annotated[float | None, NUMBER.or_none()] = None  # stop once the objective metric reaches it
    patience: Annotated[int | None, POSITIVE_INT.or_none()] = None  # stop after N trials without a new best


class FinalSection(Section):
    """The seed-robust champion (automl.final): the top_k configurations trained with `seeds` seeds."""

    top_k: Annotated[int | None, POSITIVE_INT.or_none()] = None  # default 3
    seeds: Annotated[int | None, POSITIVE_INT.or_none()] = None  # per configuration, the trial's own included


class _Count:
    """Pydantic annotation: a whole number >= 1, also written as a float (`1e6`, `2.5e5`) -> int."""

    expected = "a whole number >= 1 (e.g. 1000000 or 1.0e6)"

    @classmethod
    def validate(cls, value: Any) -> int | None:
        if value is None:
            return None
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or value < 1 or value != int(value)):
            raise Problem(f"expected {cls.expected}, got {show(value)}")
        return int(value)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(cls.validate)


class ConstraintsSection(Section):
    """Budgets a network must meet, checked once it is built and before it trains; a trial that
    breaks one is pruned at once and the sampler learns that its region is infeasible."""

    max_parameters: Annotated[int | None, _Count] = None
    max_latency_ms: Annotated[float | None, POSITIVE_FLOAT.or_none()] = None  # one evaluation batch


def _check_options(registry: dict[str, reg.AlgorithmInfo], name: str, options: dict) -> None:
    """Options must be keyword arguments the Optuna class accepts, with values it accepts."""
    info = registry[name]
    factory = reg.resolve(info.cls)
    accepted = inspect.signature(factory).parameters
    for key in options:
        if key not in accepted or key == "seed":
            names = ", ".join(k for k in accepted if k != "seed")
            raise Problem(f"unknown option for {factory.__name__} (accepted: {names})", "options", str(key))
    try:
        factory(**options, **({"seed": 0} if info.seeded else {}))
    except (TypeError, ValueError) as e:
        raise Problem(f"{factory.__name__} rejected the options: {excerpt(str(e))}", "options") from None


class SamplerSection(Section):
    name: Annotated[str, one_of(reg.SAMPLERS)] = reg.DEFAULT_SAMPLER
    options: Annotated[dict[str, Any] | None, MAPPING.or_none()] = None

    @model_validator(mode="after")
    def _options(self) -> SamplerSection:
        if self.options is None:
            self.options = dict(reg.SAMPLERS[self.name].default_options)
        _check_options(reg.SAMPLERS, self.name, self.options)
        return self


class PrunerSection(Section):
    name: Annotated[str, one_of(reg.PRUNERS)] = reg.DEFAULT_PRUNER
    options: Annotated[dict[str, Any] | None, MAPPING.or_none()] = None

    @model_validator(mode="after")
    def _options(self) -> PrunerSection:
        if self.options is None:
            self.options = dict(reg.PRUNERS[self.name].default_options)
        _check_options(reg.PRUNERS, self.name, self.options)
        return self


class ModelSection(Section):
    family: Annotated[str | None, one_of(reg.FAMILIES).or_none()] = None
    builder: Any = None  # "file.py:Name", "package.module:Name" or the class/function itself
    params: dict[str, _p(ANY)] = Field(default_factory=dict)
    depth: _p(NON_NEGATIVE_INT) = _fixed(2)
    width: _p(POSITIVE_INT) = _fixed(128)
    activation: _p(one_of(reg.ACTIVATIONS)) = _fixed("relu")
    dropout: _p(FRACTION) = _fixed(0.0)
    batch_norm: _p(BOOL) = _fixed(False)
    blocks: _p(POSITIVE_INT) | None = None
    channels: _p(POSITIVE_INT) | None = None
    kernel_size: _p(ODD_INT) = _fixed(3)

    @model_validator(mode="after")
    def _family_or_builder(self, info: ValidationInfo) -> ModelSection:
        given = self.model_fields_set
        if self.family is None and self.builder is None:
            raise Problem(f"missing; expected one of {', '.join(reg.FAMILIES)} (or give model.builder)", "family")
        if self.family is not None and self.builder is not None:
            raise Problem("give model.family or model.builder, not both", "builder")
        if self.builder is None:
            if "params" in given:
                raise Problem("only for model.builder (a family takes its settings as model keys)", "params")
            for key in CNN_KEYS if self.family != "cnn" else ():
                if key in given:
                    raise Problem("only for model.family: cnn", key)
            return self
        for key in FAMILY_KEYS:
            if key in given:
                raise Problem("only for model.family; a builder takes its settings under model.params", key)
        for name in self.params:
            if name in RESERVED:
                raise Problem(f"{name!r} is also a training parameter's name; rename it", "params", name)
        self.builder = _builder_spec(self.builder, (info.context or {}).get("base_dir"), list(self.params))
        return self


def _builder_spec(builder: Any, base_dir: str | None, names: list[str]) -> str:
    """The builder's import path (a file made absolute), once it imports and takes `names`."""
    try:
        if isinstance(builder, str):
            spec = absolute_spec(builder, base_dir)
        else:
            spec = import_path_of(builder)
        check_param_names(spec, resolve_builder(spec), names)
    except BuilderError as e:
        raise Problem(str(e), "builder") from None
    return spec


def _options_model(owner: str, options: dict[str, reg.OptionInfo]) -> type[Section]:
    fields: dict[str, Any] = {
        key: (_p(OPTION_RULES[o.kind]), _fixed(o.default)) for key, o in options.items()
    }
    return create_model(f"{owner.title()}Options", __base__=Section, **fields)


LOSS_OPTIONS = {key: (loss, o) for loss, info in reg.LOSSES.items() for key, o in info.options.items()}
LossSection: type[Section] = create_model(
    "LossSection", __base__=Section,
    name=(_p(one_of(reg.LOSSES)) | None, None),  # default: the task's, set by Document
    **{key: (_p(OPTION_RULES[o.kind]), _fixed(o.default)) for key, (_, o) in LOSS_OPTIONS.items()},
)
OptimizerSection: type[Section] = create_model(
    "OptimizerSection", __base__=Section,
    name=(_p(one_of(reg.OPTIMIZERS)), _fixed("adam")),
    lr=(_p(POSITIVE_FLOAT), _fixed(1e-3)),
    weight_decay=(_p(NON_NEGATIVE_FLOAT), _fixed(0.0)),
    **{name: (model, Field(default_factory=model))
       for name, model in ((n, _options_model(n, i.options)) for n, i in reg.OPTIMIZERS.items())},
)


class TrainingSection(Section):
    batch_size: _p(POSITIVE_INT) = _fixed(128)
    schedule: _p(one_of(reg.SCHEDULES)) = _fixed("none")
    amp: Annotated[bool, BOOL] = True
    compile: Annotated[bool, BOOL] = False


class Document(Section):
    """A whole search space; only data.dataset and model.family (or model.builder) are required."""

    data: DataSection
    objective: ObjectiveSection = Field(default_factory=ObjectiveSection)
    budget: BudgetSection = Field(default_factory=BudgetSection)
    constraints: ConstraintsSection = Field(default_factory=ConstraintsSection)
    sampler: SamplerSection = Field(default_factory=lambda: SamplerSection.model_validate({}))
    pruner: PrunerSection = Field(default_factory=lambda: PrunerSection.model_validate({}))
    model: ModelSection
    loss: LossSection = Field(default_factory=lambda: LossSection())  # type: ignore[valid-type]
    optimizer: OptimizerSection = Field(default_factory=lambda: OptimizerSection())  # type: ignore[valid-type]
    training: TrainingSection = Field(default_factory=TrainingSection)
    final: FinalSection = Field(default_factory=FinalSection)

    @property
    def task(self) -> str:
        return reg.DATASETS[self.data.dataset].task or self.data.task or "classification"

    @model_validator(mode="after")
    def _across_sections(self) -> Document:
        self._objective()
        self._final()
        model, kind = self.model, reg.DATASETS[self.data.dataset].kind
        if model.family is not None and kind not in reg.FAMILIES[model.family]:
            raise Problem(f"{model.family} needs an image dataset, not {self.data.dataset!r}", "model", "family")
        for key in ("blocks", "channels") if model.family == "cnn" else ():
            if getattr(model, key) is None:
                raise Problem(f"missing; expected {POSITIVE_INT.expected} or a search range", "model", key)
        self._losses()
        for name in reg.OPTIMIZERS:
            if name in self.optimizer.model_fields_set and name not in self.optimizer.name.values():
                raise Problem(f"set, but {name!r} is not among the optimizers", "optimizer", name)
        return self

    def _final(self) -> None:
        final = self.final
        if final.top_k is None and final.seeds is None:
            return
        expected = "a whole number >= 2 (the trial's own run counts as one seed)"
        if final.seeds is None:
            raise Problem(f"missing; expected {expected}", "final", "seeds")
        if final.seeds < 2:
            raise Problem(f"expected {expected}, got {show(final.seeds)}", "final", "seeds")
        if self.objective.metrics and len(self.objective.metrics) > 1:
            raise Problem("the seed-robust final phase ranks one objective; a multi-objective search "
                          "picks its champion by objective.select", "final")

    def _objective(self) -> None:
        metrics = reg.METRICS[self.task]
        objective = self.objective
        if objective.metrics is not None:
            self._several_metrics()
            return
        if objective.select is not None:
            raise Problem("only with objective.metrics (a multi-objective search)", "objective", "select")
        if objective.metric is None:
            objective.metric = next(iter(metrics))
        elif objective.metric not in metrics:
            raise Problem(f"expected one of {', '.join(metrics)} for a {self.task} dataset, "
                          f"got {objective.metric!r}", "objective", "metric")
        direction = metrics[objective.metric]
        if objective.direction not in (None, direction):
            raise Problem(f"{objective.metric} is to {direction}, not to {objective.direction}",
                          "objective", "direction")
        objective.direction = direction
        self._goal(objective.metric)

    def _goal(self, metric: str) -> None:
        """`budget.goal` must be a value the (first) objective metric can take."""
        goal = self.budget.goal
        low, high = METRIC_RANGES.get(metric, (None, None))
        if goal is not None and ((low is not None and goal < low) or (high is not None and goal > high)):
            span = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
            raise Problem(f"{metric} lies in {span}, got {show(goal)}", "budget", "goal")

    def _several_metrics(self) -> None:
        """`objective.metrics`: the trained metric first, then costs known before training; the
        directions follow from them; `select` names only these metrics."""
        objective, trained = self.objective, reg.METRICS[self.task]
        names = objective.metrics or []
        if objective.metric is not None:
            raise Problem("give objective.metric (one) or objective.metrics (several), not both", "objective", "metric")
        if objective.direction is not None:
            raise Problem("the directions follow from objective.metrics; drop objective.direction",
                          "objective", "direction")
        if len(names) < 2:
            raise Problem(f"expected two or more metrics (for one, use objective.metric), got {show(names)}",
                          "objective", "metrics")
        if names[0] not in trained:
            raise Problem(f"the first metric is the one trained for: expected one of {', '.join(trained)} for a "
                          f"{self.task} dataset, got {show(names[0])}", "objective", "metrics", 0)
        for i, name in enumerate(names[1:], 1):
            if name in names[:i]:
                raise Problem(f"{show(name)} is listed twice", "objective", "metrics", i)
            if name not in reg.COST_METRICS:
                raise Problem(f"expected one of {', '.join(reg.COST_METRICS)} (measured before training), "
                              f"got {show(name)}", "objective", "metrics", i)
        objective.select = self._select(names)
        if "latency_ms" in names and self.constraints.max_latency_ms is not None:
            raise Problem("bounds one evaluation batch's latency, while the objective latency_ms is one input's; "
                          "drop one (objective.select.where can bound latency_ms among the Pareto front)",
                          "constraints", "max_latency_ms")
        if self.pruner.name not in MULTI_OBJECTIVE_PRUNERS:
            allowed = ", ".join(MULTI_OBJECTIVE_PRUNERS[:-1]) + f" or {MULTI_OBJECTIVE_PRUNERS[-1]}"
            raise Problem(f"a multi-objective search prunes with {allowed}, not {self.pruner.name}", "pruner", "name")
        self._goal(names[0])

    def _select(self, names: list[str]) -> SelectSection:
        """`objective.select` of a multi-objective search: `best` defaults to the first metric; `best`
        and `where` name the objective's metrics; conditions normalised (`"<=2"` -> `"<= 2"`)."""
        select = self.objective.select or SelectSection()
        if select.best is None:
            select.best = names[0]
        elif select.best not in names:
            raise Problem(f"expected one of the objective's metrics ({', '.join(names)}), got {show(select.best)}",
                          "objective", "select", "best")
        where = {}
        for key, condition in (select.where or {}).items():
            if key not in names:
                raise Problem(f"expected one of the objective's metrics ({', '.join(names)})",
                              "objective", "select", "where", str(key))
            try:
                op, value = parse_condition(condition)
            except Problem as e:
                raise Problem(e.message, "objective", "select", "where", key) from None
            where[key] = f"{op} {int(value) if value.is_integer() and abs(value) < 1e15 else value!r}"
        select.where = where
        return select

    def _losses(self) -> None:
        loss = self.loss
        if loss.name is None:
            loss.name = Param(fixed=reg.DEFAULT_LOSS[self.task])
        try:
            check_values(loss.name, one_of(reg.losses_for(self.task)))
        except Problem as e:
            raise Problem(e.message, "loss", "name", *e.path) from None
        for key, (owner, _) in LOSS_OPTIONS.items():
            if key in loss.model_fields_set and owner not in loss.name.values():
                raise Problem(f"set, but {owner!r} is not among the losses", "loss", key)
