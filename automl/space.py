"""Search spaces: YAML -> a validated `SearchSpace`; `suggest(trial, space)` -> plain configs.

A parameter in the YAML is either a fixed value (`dropout: 0.1`) or a searchable range:

    depth: {type: int, low: 1, high: 3}
    lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
    activation: {type: categorical, choices: [relu, gelu]}

Ranges become Optuna distributions, which check their own invariants (`low <= high`, log needs
`low > 0`, ...). Any problem is reported at load time as one `UsageError` line naming the file,
the key path and what was expected, before any study or run exists.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from automl.config import (
    ACTIVATIONS,
    CLASSIFICATION_LOSSES,
    FAMILIES,
    OPTIMIZERS,
    REGRESSION_LOSSES,
    SCHEDULES,
    ModelConfig,
    TrainConfig,
)
from automl.errors import UsageError

DATASETS = {
    # name: (task, kind) -- kind "image" datasets may use the CNN family
    "digits": ("classification", "image"),
    "mnist": ("classification", "image"),
    "fashion_mnist": ("classification", "image"),
    "kmnist": ("classification", "image"),
    "cifar10": ("classification", "image"),
    "breast_cancer": ("classification", "tabular"),
    "wine": ("classification", "tabular"),
    "csv": (None, "tabular"),  # task given in the YAML
}
METRICS = {
    "classification": {"val_accuracy": "maximize", "val_loss": "minimize"},
    "regression": {
        "val_rmse": "minimize",
        "val_mae": "minimize",
        "val_r2": "maximize",
        "val_loss": "minimize",
    },
}
SAMPLERS: dict[str, Callable[..., optuna.samplers.BaseSampler]] = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "qmc": optuna.samplers.QMCSampler,
    "gp": optuna.samplers.GPSampler,
}
PRUNERS: dict[str, Callable[..., optuna.pruners.BasePruner]] = {
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "none": optuna.pruners.NopPruner,
}
# Parameters each optimizer and loss understands; they are sampled only when that one is chosen.
OPTIMIZER_OPTIONS = {
    "sgd": ("momentum", "nesterov"),
    "adam": ("beta1", "beta2"),
    "adamw": ("beta1", "beta2"),
    "rmsprop": ("momentum", "alpha"),
}
LOSS_OPTIONS = {"label_smoothing": "label_smoothing", "huber": "huber_delta"}


@dataclass(frozen=True)
class Rule:
    """What a parameter's values must be: a Python type, a predicate and their description."""

    kind: str  # "int", "float", "bool" or "str"
    check: Callable[[Any], bool]
    expected: str

    def accepts(self, value: Any) -> bool:
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


def _one_of(names: tuple[str, ...] | list[str]) -> Rule:
    return Rule("str", lambda v: v in names, "one of " + ", ".join(names))


POSITIVE_INT = Rule("int", lambda v: v >= 1, "an integer >= 1")
NON_NEGATIVE_INT = Rule("int", lambda v: v >= 0, "an integer >= 0")
ODD_INT = Rule("int", lambda v: v >= 1 and v % 2 == 1, "an odd integer >= 1")
FRACTION = Rule("float", lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")
POSITIVE_FLOAT = Rule("float", lambda v: v > 0, "a number > 0")
NON_NEGATIVE_FLOAT = Rule("float", lambda v: v >= 0, "a number >= 0")
BOOL = Rule("bool", lambda v: True, "true or false")


@dataclass(frozen=True)
class Param:
    """A fixed value, or an Optuna distribution to sample from."""

    fixed: Any = None
    distribution: BaseDistribution | None = None

    def sample(self, trial: optuna.trial.BaseTrial, name: str) -> Any:
        d = self.distribution
        if d is None:
            return self.fixed
        if isinstance(d, IntDistribution):
            return trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
        if isinstance(d, FloatDistribution):
            return trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log)
        return trial.suggest_categorical(name, d.choices)  # type: ignore[attr-defined]

    def values(self) -> list[Any]:
        """Every value a categorical or fixed parameter can take (for cross-checks)."""
        if self.distribution is None:
            return [self.fixed]
        return list(getattr(self.distribution, "choices", []))


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space. `text` is the YAML itself, stored with the study."""

    source: str
    text: str
    dataset: str
    task: str
    validation_fraction: float
    test_fraction: float
    csv_path: str | None
    target: str | None
    metric: str
    direction: str
    epochs: int
    trials: int
    timeout: float | None
    sampler: str
    sampler_options: dict[str, Any]
    pruner: str
    pruner_options: dict[str, Any]
    family: str
    model: dict[str, Param]
    loss: Param
    loss_options: dict[str, Param]
    optimizer: Param
    optimizer_common: dict[str, Param]
    optimizer_options: dict[str, dict[str, Param]]
    training: dict[str, Param]
    flags: dict[str, bool] = field(default_factory=dict)  # augment, amp, compile

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]

    @property
    def name(self) -> str:
        """Default study name: the file name without its extension."""
        return Path(self.source).stem


class _Loader(yaml.SafeLoader):
    """Safe YAML loading that also reads 1e-4 and 1.0e12 as numbers (YAML 1.2), not strings."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


class _Reader:
    """Walks the YAML mapping, turning each problem into one `UsageError` line."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, problem: str) -> UsageError:
        where = f"{self.source}: {path}" if path else self.source
        return UsageError(f"{where}: {problem}")

    def section(self, doc: dict, key: str, allowed: set[str], required: bool = True) -> dict:
        if key not in doc:
            if required:
                raise self.fail(key, "missing section")
            return {}
        value = doc[key]
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a mapping, got {_show(value)}")
        self.no_unknown(value, key, allowed)
        return value

    def no_unknown(self, mapping: dict, path: str, allowed: set[str]) -> None:
        for key in mapping:
            if key not in allowed:
                raise self.fail(
                    f"{path}.{key}" if path else str(key),
                    f"unknown key (expected one of: {', '.join(sorted(allowed))})",
                )

    def mapping(self, mapping: dict, key: str, path: str) -> dict:
        """An optional nested mapping (empty when absent)."""
        value = mapping.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(f"{path}.{key}", f"expected a mapping, got {_show(value)}")
        return value

    def value(self, mapping: dict, key: str, path: str, rule: Rule, default: Any = ...) -> Any:
        if key not in mapping or mapping[key] is None:
            if default is ...:
                raise self.fail(f"{path}.{key}", f"missing; expected {rule.expected}")
            return default
        value = mapping[key]
        if rule.kind == "float" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not rule.accepts(value):
            raise self.fail(f"{path}.{key}", f"expected {rule.expected}, got {_show(value)}")
        return value

    def param(self, mapping: dict, key: str, path: str, rule: Rule, default: Any = ...) -> Param:
        """A fixed value or a `{type: ...}` range whose every value satisfies `rule`."""
        where = f"{path}.{key}"
        if key not in mapping:
            if default is ...:
                raise self.fail(where, f"missing; expected {rule.expected} or a search range")
            return Param(fixed=default)
        spec = mapping[key]
        if not isinstance(spec, dict):
            return Param(fixed=self.value(mapping, key, path, rule))
        kind = spec.get("type")
        if kind == "categorical":
            self.no_unknown(spec, where, {"type", "choices"})
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise self.fail(f"{where}.choices", "expected a non-empty list of choices")
            for i, choice in enumerate(choices):
                if rule.kind == "float" and isinstance(choice, int) and not isinstance(choice, bool):
                    choices[i] = choice = float(choice)
                if not rule.accepts(choice):
                    raise self.fail(
                        f"{where}.choices[{i}]", f"expected {rule.expected}, got {_show(choice)}"
                    )
            if len(set(map(repr, choices))) != len(choices):
                raise self.fail(f"{where}.choices", "choices must be distinct")
            return Param(distribution=CategoricalDistribution(choices))
        if kind in ("int", "float"):
            if rule.kind != kind and not (rule.kind == "float" and kind == "int"):
                expected = "categorical" if rule.kind in ("bool", "str") else rule.kind
                raise self.fail(f"{where}.type", f"expected {expected!r} for this key, got {kind!r}")
            self.no_unknown(spec, where, {"type", "low", "high", "log", "step"})
            number = Rule(kind, lambda v: True, f"a{'n' if kind == 'int' else ''} {kind}")
            low = self.value(spec, "low", where, number)
            high = self.value(spec, "high", where, number)
            log = self.value(spec, "log", where, BOOL, default=False)
            step = self.value(spec, "step", where, number, default=1 if kind == "int" else None)
            try:
                if kind == "int":
                    dist: BaseDistribution = IntDistribution(low, high, log=log, step=step)
                else:
                    dist = FloatDistribution(low, high, log=log, step=step)
            except ValueError as e:
                raise self.fail(where, str(e)) from None
            for bound, name in ((low, "low"), (high, "high")):
                if not rule.accepts(bound):
                    raise self.fail(f"{where}.{name}", f"expected {rule.expected}, got {bound!r}")
            return Param(distribution=dist)
        raise self.fail(
            f"{where}.type" if "type" in spec else where,
            f"expected type int, float or categorical, got {_show(kind)}",
        )


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_options(
    reader: _Reader, path: str, factory: Callable[..., Any], options: dict, seeded: bool
) -> None:
    """Options must be keyword arguments the Optuna class accepts, with values it accepts."""
    accepted = inspect.signature(factory).parameters
    for key in options:
        if key not in accepted or key == "seed":
            raise reader.fail(
                f"{path}.options.{key}",
                f"unknown option for {factory.__name__} "
                f"(accepted: {', '.join(k for k in accepted if k != 'seed')})",
            )
    try:
        factory(**options, **({"seed": 0} if seeded else {}))
    except (TypeError, ValueError) as e:
        raise reader.fail(f"{path}.options", f"{factory.__name__} rejected the options: {e}") from None


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a YAML search space file."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: search space file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: cannot read the search space: {e}") from None
    return parse_space(text, str(path))


def parse_space(text: str, source: str) -> SearchSpace:
    """Validate YAML text (`source` names it in messages)."""
    reader = _Reader(source)
    try:
        doc = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UsageError(f"{source}: invalid YAML{where}: {problem}") from None
    if doc is None:
        raise UsageError(f"{source}: the search space is empty")
    if not isinstance(doc, dict):
        raise UsageError(f"{source}: expected a mapping of sections, got {_show(doc)}")
    reader.no_unknown(
        doc,
        "",
        {"data", "objective", "budget", "sampler", "pruner", "model", "loss", "optimizer",
         "training"},
    )

    data = reader.section(
        doc, "data", {"dataset", "validation_fraction", "test_fraction", "path", "target",
                      "task", "augment"}
    )
    dataset = reader.value(data, "dataset", "data", _one_of(list(DATASETS)))
    task, kind = DATASETS[dataset]
    if dataset == "csv":
        task = reader.value(data, "task", "data", _one_of(["classification", "regression"]))
        csv_path = reader.value(data, "path", "data", Rule("str", bool, "a CSV file path"))
        target = reader.value(data, "target", "data", Rule("str", bool, "a column name"))
    else:
        for key in ("path", "target", "task"):
            if key in data:
                raise reader.fail(f"data.{key}", "only for data.dataset: csv")
        csv_path = target = None
    split = Rule("float", lambda v: 0.0 < v <= 0.5, "a number in (0, 0.5]")
    validation_fraction = reader.value(data, "validation_fraction", "data", split, default=0.15)
    test_fraction = reader.value(data, "test_fraction", "data", split, default=0.15)
    augment = reader.value(data, "augment", "data", BOOL, default=False)
    if augment and kind != "image":
        raise reader.fail("data.augment", f"augmentation needs an image dataset, not {dataset!r}")

    objective = reader.section(doc, "objective", {"metric", "direction"})
    metrics = METRICS[task]
    metric = reader.value(objective, "metric", "objective", _one_of(list(metrics)))
    direction = reader.value(
        objective, "direction", "objective", _one_of(["maximize", "minimize"]),
        default=metrics[metric],
    )
    if direction != metrics[metric]:
        raise reader.fail(
            "objective.direction", f"{metric} is to {metrics[metric]}, not to {direction}"
        )

    budget = reader.section(doc, "budget", {"epochs", "trials", "timeout"})
    epochs = reader.value(budget, "epochs", "budget", POSITIVE_INT)
    trials = reader.value(budget, "trials", "budget", POSITIVE_INT, default=20)
    timeout = reader.value(budget, "timeout", "budget", POSITIVE_FLOAT, default=None)

    sampler_doc = reader.section(doc, "sampler", {"name", "options"}, required=False)
    sampler = reader.value(sampler_doc, "name", "sampler", _one_of(list(SAMPLERS)), default="tpe")
    sampler_options = reader.mapping(sampler_doc, "options", "sampler")
    _check_options(reader, "sampler", SAMPLERS[sampler], sampler_options, seeded=True)

    pruner_doc = reader.section(doc, "pruner", {"name", "options"}, required=False)
    pruner = reader.value(pruner_doc, "name", "pruner", _one_of(list(PRUNERS)), default="median")
    pruner_options = reader.mapping(pruner_doc, "options", "pruner")
    _check_options(reader, "pruner", PRUNERS[pruner], pruner_options, seeded=False)

    model_doc = reader.section(
        doc, "model", {"family", "depth", "width", "activation", "dropout", "batch_norm",
                       "blocks", "channels", "kernel_size"}
    )
    family = reader.value(model_doc, "family", "model", _one_of(list(FAMILIES)))
    if family == "cnn" and kind != "image":
        raise reader.fail("model.family", f"cnn needs an image dataset, not {dataset!r}")
    model = {
        "depth": reader.param(model_doc, "depth", "model", NON_NEGATIVE_INT),
        "width": reader.param(model_doc, "width", "model", POSITIVE_INT, default=128),
        "activation": reader.param(model_doc, "activation", "model", _one_of(ACTIVATIONS),
                                   default="relu"),
        "dropout": reader.param(model_doc, "dropout", "model", FRACTION, default=0.0),
        "batch_norm": reader.param(model_doc, "batch_norm", "model", BOOL, default=False),
    }
    if family == "cnn":
        model["blocks"] = reader.param(model_doc, "blocks", "model", POSITIVE_INT)
        model["channels"] = reader.param(model_doc, "channels", "model", POSITIVE_INT)
        model["kernel_size"] = reader.param(model_doc, "kernel_size", "model", ODD_INT, default=3)
    else:
        for key in ("blocks", "channels", "kernel_size"):
            if key in model_doc:
                raise reader.fail(f"model.{key}", "only for model.family: cnn")

    losses = CLASSIFICATION_LOSSES if task == "classification" else REGRESSION_LOSSES
    loss_doc = reader.section(doc, "loss", {"name", *LOSS_OPTIONS}, required=False)
    loss = reader.param(loss_doc, "name", "loss", _one_of(losses), default=losses[0])
    loss_options = {
        "label_smoothing": reader.param(loss_doc, "label_smoothing", "loss", FRACTION,
                                        default=0.1),
        "huber": reader.param(loss_doc, "huber", "loss", POSITIVE_FLOAT, default=1.0),
    }
    for name in LOSS_OPTIONS:
        if name in loss_doc and name not in loss.values():
            raise reader.fail(f"loss.{name}", f"set, but {name!r} is not among the losses")

    optimizer_doc = reader.section(
        doc, "optimizer", {"name", "lr", "weight_decay", *OPTIMIZER_OPTIONS}
    )
    optimizer = reader.param(optimizer_doc, "name", "optimizer", _one_of(OPTIMIZERS))
    optimizer_common = {
        "lr": reader.param(optimizer_doc, "lr", "optimizer", POSITIVE_FLOAT),
        "weight_decay": reader.param(optimizer_doc, "weight_decay", "optimizer",
                                     NON_NEGATIVE_FLOAT, default=0.0),
    }
    option_rules = {  # (rule, default); rmsprop's momentum defaults to torch's 0, not 0.9
        "momentum": (FRACTION, 0.9),
        "nesterov": (BOOL, False),
        "beta1": (FRACTION, 0.9),
        "beta2": (FRACTION, 0.999),
        "alpha": (FRACTION, 0.99),
    }
    optimizer_options: dict[str, dict[str, Param]] = {}
    for name, keys in OPTIMIZER_OPTIONS.items():
        section = reader.mapping(optimizer_doc, name, "optimizer")
        if section and name not in optimizer.values():
            raise reader.fail(f"optimizer.{name}", f"set, but {name!r} is not among the optimizers")
        reader.no_unknown(section, f"optimizer.{name}", set(keys))
        optimizer_options[name] = {
            key: reader.param(section, key, f"optimizer.{name}", option_rules[key][0],
                              default=0.0 if (name, key) == ("rmsprop", "momentum") else option_rules[key][1])
            for key in keys
        }

    training_doc = reader.section(
        doc, "training", {"batch_size", "schedule", "amp", "compile"}, required=False
    )
    training = {
        "batch_size": reader.param(training_doc, "batch_size", "training", POSITIVE_INT,
                                   default=128),
        "schedule": reader.param(training_doc, "schedule", "training", _one_of(SCHEDULES),
                                 default="none"),
    }
    flags = {
        "augment": augment,
        "amp": reader.value(training_doc, "amp", "training", BOOL, default=True),
        "compile": reader.value(training_doc, "compile", "training", BOOL, default=False),
    }

    return SearchSpace(
        source=source, text=text, dataset=dataset, task=task,
        validation_fraction=validation_fraction, test_fraction=test_fraction,
        csv_path=csv_path, target=target, metric=metric, direction=direction,
        epochs=epochs, trials=trials, timeout=timeout,
        sampler=sampler, sampler_options=dict(sampler_options),
        pruner=pruner, pruner_options=dict(pruner_options),
        family=family, model=model, loss=loss, loss_options=loss_options,
        optimizer=optimizer, optimizer_common=optimizer_common,
        optimizer_options=optimizer_options, training=training, flags=flags,
    )


def suggest(
    trial: optuna.trial.BaseTrial,
    space: SearchSpace,
    input_shape: tuple[int, ...],
    n_outputs: int,
    seed: int = 0,
) -> tuple[ModelConfig, TrainConfig]:
    """Sample one trial's configs. Per-layer widths exist only for layers that exist."""
    m = space.model
    depth = m["depth"].sample(trial, "depth")
    widths = tuple(m["width"].sample(trial, f"width_{i}") for i in range(depth))
    channels: tuple[int, ...] = ()
    kernel_size = 3
    if space.family == "cnn":
        blocks = m["blocks"].sample(trial, "blocks")
        channels = tuple(m["channels"].sample(trial, f"channels_{i}") for i in range(blocks))
        kernel_size = m["kernel_size"].sample(trial, "kernel_size")
    model = ModelConfig(
        family=space.family,
        input_shape=tuple(input_shape),
        n_outputs=n_outputs,
        task=space.task,
        widths=widths,
        activation=m["activation"].sample(trial, "activation"),
        dropout=m["dropout"].sample(trial, "dropout"),
        batch_norm=m["batch_norm"].sample(trial, "batch_norm"),
        channels=channels,
        kernel_size=kernel_size,
    )

    loss = space.loss.sample(trial, "loss")
    extra: dict[str, Any] = {}
    if loss == "label_smoothing":
        extra["label_smoothing"] = space.loss_options["label_smoothing"].sample(
            trial, "label_smoothing"
        )
    if loss == "huber":
        extra["huber_delta"] = space.loss_options["huber"].sample(trial, "huber_delta")
    optimizer = space.optimizer.sample(trial, "optimizer")
    for key, param in space.optimizer_options[optimizer].items():
        extra[key] = param.sample(trial, f"{optimizer}.{key}")
    if optimizer == "sgd" and extra.get("nesterov") and extra.get("momentum", 0) == 0:
        extra["nesterov"] = False  # torch requires momentum > 0 for Nesterov
    train = TrainConfig(
        epochs=space.epochs,
        batch_size=space.training["batch_size"].sample(trial, "batch_size"),
        loss=loss,
        optimizer=optimizer,
        lr=space.optimizer_common["lr"].sample(trial, "lr"),
        weight_decay=space.optimizer_common["weight_decay"].sample(trial, "weight_decay"),
        schedule=space.training["schedule"].sample(trial, "schedule"),
        seed=seed,
        **space.flags,
        **extra,
    )
    return model, train
