"""`automl refine`: a narrower search space around a study's best trials, guided by parameter
importances, written as YAML with a comment above each changed range saying why.

The rules (constants below):

- The top trials: the best `--top` COMPLETE trials (default: the best 20%, at least 5), ranked by
  the study's (first) objective, equal values by trial number.
- Importances: PED-ANOVA (`optuna.importance`, the evaluator the study plots use) of reaching the
  top trials' quantile, summed per space key (`width_0`, `width_1` -> `model.width`). A key is
  important when its importance is at least half an equal share (0.5 / number of keys); when no
  importance can be computed (too few trials, all trials on top), every key counts as important.
- An important numeric range shrinks to span the top trials' values plus a margin on each side
  (10% of that span, at least 2% of the original range; in log space for log ranges), rounded
  outwards to two significant digits (int ranges and stepped ranges: to their grid), clipped to the
  original range; a range that shrinks to one value becomes that fixed value, one that would keep
  over 90% of its width stays as it was.
- An important categorical keeps the choices the top trials used (one left: fixed to it); an
  unimportant one is fixed when the top trials all chose the same value; other unimportant
  ranges are kept.
- A key used by fewer than 2 of the top trials (e.g. `optimizer.sgd.momentum` when few top trials
  chose sgd) is kept.

Everything else of the space (data, objective, budget, sampler, pruner, fixed values) is kept, so
`automl search --space narrower.yaml` runs a new study (named after the file) on the same data.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from automl import checks, keys
from automl import registries as reg
from automl.errors import FatalError, UsageError
from automl.space import Space, parse_space
from automl.space.schema import FAMILY_KEYS, LOSS_OPTIONS

TOP_FRACTION = 0.2
MIN_TOP = 5
MIN_USERS = 2  # top trials that must use a key before it is changed
MARGIN = 0.1  # of the top trials' span, on each side
MIN_MARGIN = 0.02  # of the original range, on each side
KEEP_ABOVE = 0.9  # a range that would keep more than this share of its width is kept as it was
PARAM_SECTIONS = ("model", "loss", "optimizer", "training")


@dataclass
class Change:
    """One changed range: its space key, the range before, what replaces it, and why."""

    key: str
    before: Any
    after: Any
    why: str

    def comment(self) -> str:
        return f"{self.key}: {_show(self.before)} -> {_show(self.after)}: {self.why}"


@dataclass
class Refinement:
    """What `refine_space` made: the narrowed space, its YAML (with comments) and the changes."""

    study: str
    space: Space
    text: str
    changes: list[Change]
    top: int  # top trials used
    complete: int  # complete trials of the study
    importances: dict[str, float] | None = None  # by space key; None when not computable
    output: Path | None = None


def refine_space(study: str, output: str | Path | None = None, *, storage: str | None = None,
                 top: int | None = None, force: bool = False) -> Refinement:
    """A narrower space around the best trials of `study` (see the module's rules); written to
    `output` when given (an existing file only with `force`). Nothing else is created."""
    from automl.best import check_output_path
    from automl.compare import open_study
    from automl.record import space_of

    path = None if output is None else check_output_path(Path(output), "--output")
    if top is not None and top < 1:
        raise UsageError(f"--top: must be at least 1, got {top}")
    loaded = open_study(study, checks.storage_url(storage))
    if path is not None and path.exists() and not force:
        source = Path(str(loaded.user_attrs.get(keys.SPACE_SOURCE, "")))
        own = source.is_file() and source.resolve() == path.resolve()
        what = f"is the space file study {study!r} was made from" if own else "exists"
        raise UsageError(f"--output: {path} {what}; pass --force to replace it (or give another file)")
    space = space_of(loaded)
    ranked = _ranked(loaded)
    if not ranked:
        raise UsageError(f"--study: study {study!r} has no complete trial to refine around")
    k = min(len(ranked), top or max(MIN_TOP, math.ceil(TOP_FRACTION * len(ranked))))
    doc = space.to_dict()
    importances = _importances(loaded, k, len(ranked), doc)
    changes = _apply(doc, ranked[:k], importances)
    _drop_unused_options(doc)
    refined = Space.from_dict(doc, source=str(path or "<refined>"))
    final = refined.normalised
    changes = [c for c in changes if _get(final, tuple(c.key.split("."))) is not None]
    result = Refinement(study, refined, "", changes, k, len(ranked),
                        None if importances is None else {".".join(p): v for p, v in importances.items()}, path)
    several = len(loaded.directions) > 1
    header = _header(result, space, str(path or "refined.yaml"), several)
    result.text = header + _emit(final, {c.key: c for c in changes})
    again = parse_space(result.text, str(path or "<refined>"), path.resolve().parent if path else None)
    if again.normalised != final:
        raise FatalError("refine: the narrowed space does not read back as written (a bug; please report it)")
    if path is not None:
        path.write_text(result.text, encoding="utf-8")
    return result


def _ranked(study: optuna.Study) -> list[FrozenTrial]:
    """COMPLETE trials, best first (first objective; equal values by trial number)."""
    sign = -1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(complete, key=lambda t: (sign * t.values[0], t.number))


def key_of(name: str, doc: dict[str, Any]) -> tuple[str, ...] | None:
    """The space key a trial parameter was sampled from (the names `automl.space.sampling` gives)."""
    model = doc["model"]
    if "builder" in model:
        if name in model.get("params", {}):
            return ("model", "params", name)
    else:
        layered = re.fullmatch(r"(width|channels)_\d+", name)
        if layered:
            return ("model", layered[1])
        if name in FAMILY_KEYS:
            return ("model", name)
    if name in ("loss", "optimizer"):
        return (name, "name")
    if name in ("lr", "weight_decay"):
        return ("optimizer", name)
    if name in ("batch_size", "schedule"):
        return ("training", name)
    optimizer, _, option = name.partition(".")
    if optimizer in reg.OPTIMIZERS and option in reg.OPTIMIZERS[optimizer].options:
        return ("optimizer", optimizer, option)
    for info in reg.LOSSES.values():
        for key, option_info in info.options.items():
            if (option_info.field or key) == name:
                return ("loss", key)
    return None


def _importances(study: optuna.Study, k: int, n: int, doc: dict[str, Any]) -> dict[tuple[str, ...], float] | None:
    """PED-ANOVA importances of reaching the top k of n trials, summed per space key; None when
    they cannot be told (fewer than 3 trials, all trials on top, an evaluator error, all zero)."""
    if n < 3 or k >= n:
        return None
    sign = -1.0 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1.0
    evaluator = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=k / n)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = optuna.importance.get_param_importances(study, evaluator=evaluator,
                                                          target=lambda t: sign * t.values[0])
    except (RuntimeError, ValueError, ZeroDivisionError):
        return None
    summed: dict[tuple[str, ...], float] = {}
    for name, importance in raw.items():
        path = key_of(name, doc)
        if path is not None:
            summed[path] = summed.get(path, 0.0) + float(importance)
    return summed if sum(summed.values()) > 0 else None


def _ranges(doc: dict[str, Any], path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    """(key path, range) of every range of the space's parameter sections."""
    found = []
    for key, value in doc.items():
        here = (*path, key)
        if not isinstance(value, dict) or (not path and key not in PARAM_SECTIONS):
            continue
        if path and value.get("type") in ("int", "float", "categorical"):
            found.append((here, value))
        else:
            found.extend(_ranges(value, here))
    return found


def _apply(doc: dict[str, Any], top: list[FrozenTrial],
           importances: dict[tuple[str, ...], float] | None) -> list[Change]:
    """Narrow the ranges of `doc` in place; returns the changes."""
    values: dict[tuple[str, ...], list[Any]] = {}
    users: dict[tuple[str, ...], int] = {}
    for trial in top:
        seen = set()
        for name, value in trial.params.items():
            path = key_of(name, doc)
            if path is not None:
                values.setdefault(path, []).append(value)
                seen.add(path)
        for path in seen:
            users[path] = users.get(path, 0) + 1
    threshold = 0.5 / len(importances) if importances else 0.0
    changes = []
    for path, spec in _ranges(doc):
        if users.get(path, 0) < MIN_USERS:
            continue
        importance = None if importances is None else importances.get(path, 0.0)
        who = f"the top {len(top)} trials" if users[path] == len(top) else f"{users[path]} of the top {len(top)} trials"
        told = "importance unknown" if importance is None else f"importance {importance:.2f}"
        important = importance is None or importance >= threshold
        if spec["type"] == "categorical":
            after, why = _categorical(spec, values[path], important, who)
        else:
            after, why = _numeric(spec, values[path], important, who)
        if why:
            _set(doc, path, after)
            changes.append(Change(".".join(path), spec, after, f"{why}; {told}"))
    return changes


def _drop_unused_options(doc: dict[str, Any]) -> None:
    """Drop the options of optimizers and losses no longer among the choices (the schema refuses them)."""
    for section, owners in (("optimizer", {name: name for name in reg.OPTIMIZERS}),
                            ("loss", {key: loss for key, (loss, _) in LOSS_OPTIONS.items()})):
        name = doc[section].get("name")
        chosen = name["choices"] if isinstance(name, dict) else [name]
        for key, owner in owners.items():
            if owner not in chosen:
                doc[section].pop(key, None)


def _numeric(spec: dict[str, Any], values: list[Any], important: bool, who: str) -> tuple[Any, str]:
    if not important:
        return spec, ""
    low, high = spec["low"], spec["high"]
    new_low, new_high = narrow(spec, [float(v) for v in values])
    to = math.log10 if spec.get("log") else float
    if to(new_high) - to(new_low) > KEEP_ABOVE * (to(high) - to(low)):
        return spec, ""
    spread = min(values) != max(values)
    why = f"{who} span {_num(min(values))}..{_num(max(values))}" if spread else f"{who} all used {_num(values[0])}"
    if new_low == new_high:
        return new_low, why
    return {**spec, "low": new_low, "high": new_high}, why


def narrow(spec: dict[str, Any], values: list[float]) -> tuple[Any, Any]:
    """(low, high) spanning `values` with the margin, rounded, clipped to the range `spec`."""
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    to, back = (math.log10, lambda x: 10.0 ** x) if log else (float, float)
    values = [min(max(v, low), high) for v in values]
    a, b, full = to(min(values)), to(max(values)), to(high) - to(low)
    margin = max(MARGIN * (b - a), MIN_MARGIN * full)
    lo, hi = back(a - margin), back(b + margin)
    if spec["type"] == "int" or step:  # a grid that holds the values: round inwards onto it
        grid = step or 1
        lo = low + math.ceil((lo - low) / grid - 1e-6) * grid
        hi = low + math.floor((hi - low) / grid + 1e-6) * grid
        if spec["type"] == "float":
            lo, hi = round(lo, 12), round(hi, 12)
    elif log:
        lo, hi = _significant(lo, up=False), _significant(hi, up=True)
    elif full > 0:
        exponent = math.floor(math.log10(full)) - 1
        lo = float(f"{math.floor(lo / 10.0 ** exponent + 1e-9)}e{exponent}")
        hi = float(f"{math.ceil(hi / 10.0 ** exponent - 1e-9)}e{exponent}")
    lo, hi = max(lo, low), min(hi, high)
    lo, hi = min(lo, min(values)), max(hi, max(values))  # the values themselves always stay in
    return (int(lo), int(hi)) if spec["type"] == "int" else (lo, hi)


def _significant(x: float, up: bool) -> float:
    """`x` rounded to two significant digits, up or down (a clean decimal)."""
    exponent = math.floor(math.log10(x)) - 1
    mantissa = x / 10.0 ** exponent
    whole = math.ceil(mantissa - 1e-9) if up else math.floor(mantissa + 1e-9)
    return float(f"{whole}e{exponent}")


def _categorical(spec: dict[str, Any], values: list[Any], important: bool, who: str) -> tuple[Any, str]:
    choices = spec["choices"]
    encoded = any(not isinstance(c, (type(None), bool, int, float, str)) for c in choices)
    # a choice as the trial recorded it (lists and mappings as JSON text), typed so that True != 1
    chosen = {json.dumps(v) for v in values}
    used = [c for c in choices if json.dumps(json.dumps(c, sort_keys=True) if encoded else c) in chosen]
    if len(choices) == 1 or not used:
        return spec, ""
    if len(used) == 1:
        return used[0], f"{who} all chose it"
    if important and len(used) < len(choices):
        return {"type": "categorical", "choices": used}, f"{who} chose only these"
    return spec, ""


def _get(doc: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(doc, dict) or key not in doc:
            return None
        doc = doc[key]
    return doc


def _set(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        doc = doc[key]
    doc[path[-1]] = value


def _num(x: Any) -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    return str(x) if isinstance(x, int) else f"{x:.3g}"


def _show(value: Any) -> str:
    """A range or value, short: `1..3`, `0.0001..0.03 (log)`, `[relu, gelu]`, `relu`."""
    if isinstance(value, dict) and value.get("type") in ("int", "float"):
        return f"{_num(value['low'])}..{_num(value['high'])}" + (" (log)" if value.get("log") else "")
    if isinstance(value, dict) and value.get("type") == "categorical":
        return "[" + ", ".join(_flow(c) for c in value["choices"]) + "]"
    return _flow(value) if not isinstance(value, float) else _num(value)


def _flow(value: Any) -> str:
    """One value as inline YAML."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, allow_unicode=True, sort_keys=False)
    return text.removesuffix("\n...\n").strip()


def _emit(doc: dict[str, Any], changes: dict[str, Change], path: tuple[str, ...] = ()) -> str:
    """YAML of the document: sections and nested options as blocks, ranges and values inline;
    each changed key preceded by its comment."""
    lines: list[str] = []
    pad = "  " * len(path)
    for key, value in doc.items():
        here = (*path, key)
        change = changes.get(".".join(here))
        if not path and lines:
            lines.append("")
        if change is not None:
            lines.append(f"{pad}# {change.comment()}")
        if isinstance(value, dict) and value and "type" not in value:
            lines.append(f"{pad}{_flow(key)}:")
            lines.append(_emit(value, changes, here).rstrip("\n"))
        else:
            lines.append(f"{pad}{_flow(key)}: {_flow(value)}")
    return "\n".join(lines) + "\n"


def _header(result: Refinement, original: Space, name: str, several: bool) -> str:
    objective = f"{original.metric} ({original.direction})" + (", the first of its objectives" if several else "")
    lines = [f"# Refined by `automl refine` from study {result.study!r} ({original.source}): around the best "
             f"{result.top} of {result.complete} complete trials by {objective}.",
             f"# {len(result.changes)} range(s) changed, each with a comment saying why; everything else as the "
             "study had it."]
    if result.importances is None:
        lines.append("# Importances could not be computed (too few trials, or all of them on top): every range "
                     "counted as important.")
    else:
        ranked = sorted(result.importances.items(), key=lambda kv: -kv[1])
        lines.append("# Importances (PED-ANOVA, reaching the top trials): "
                     + ", ".join(f"{k} {v:.2f}" for k, v in ranked) + ".")
        lines.append(f"# Important: at least {0.5 / len(ranked):.2f} (half an equal share); the others keep "
                     "their range (a categorical all top trials agree on is fixed).")
    lines.append(f"# Search it as a new study: automl search --space {name}")
    return "\n".join(lines) + "\n"
