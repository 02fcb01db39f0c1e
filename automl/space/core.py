"""`Space`: a validated search space, read from YAML (a file or text) or a dict, written back as YAML."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from automl import registries as reg
from automl.errors import UsageError
from automl.space.params import Param
from automl.space.problems import Problem, show, space_error
from automl.space.schema import CNN_KEYS, FAMILY_KEYS, LOSS_OPTIONS, Document
from automl.space.yamlio import dump_yaml, load_yaml


def _annotation_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside `X`, `X | None` or `Annotated[X, ...]`, if any."""
    candidates = [annotation, *getattr(annotation, "__args__", ())]
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Document
    for part in loc:
        if model is None or part not in model.model_fields:
            return None
        model = _annotation_model(model.model_fields[part].annotation)
    return model


def _problem(error: dict[str, Any]) -> tuple[tuple[Any, ...], str]:
    """(key path, message) of one pydantic error."""
    loc, kind = tuple(error["loc"]), error["type"]
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, Problem):
        return loc + cause.path, cause.message
    if kind == "extra_forbidden":
        owner = _model_at(loc[:-1])
        allowed = ", ".join(sorted(owner.model_fields)) if owner else "?"
        return loc, f"unknown key (expected one of: {allowed})"
    if kind == "missing":
        owner, field = _model_at(loc[:-1]), loc[-1]
        info = owner.model_fields.get(field) if owner else None
        if info is not None and _annotation_model(info.annotation) is not None:
            return loc, "missing section"
        expected = getattr(info.metadata[0], "expected", None) if info and info.metadata else None
        return loc, f"missing; expected {expected}" if expected else "missing"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return loc, f"expected a mapping, got {show(error.get('input'))}"
    return loc, f"{error['msg']}, got {show(error.get('input'))}"


def validate_document(doc: Any, source: str, base_dir: str | Path | None = None) -> Document:
    """The schema's verdict on a parsed document; the first problem becomes a `SpaceError`."""
    if doc is None:
        raise space_error(source, (), "the search space is empty")
    if not isinstance(doc, dict):
        raise space_error(source, (), f"expected a mapping of sections, got {show(doc)}")
    try:
        return Document.model_validate(doc, context={"base_dir": str(base_dir) if base_dir else None})
    except ValidationError as e:
        errors = e.errors()
        path, message = _problem(errors[0])
        more = f" (and {len(errors) - 1} more problem{'s' * (len(errors) > 2)})" if len(errors) > 1 else ""
        raise space_error(source, path, message + more) from None
    except Problem as e:  # raised outside pydantic's own validation
        raise space_error(source, e.path, e.message) from None


def _normalise(document: Document) -> dict[str, Any]:
    """The canonical content: every default filled in, JSON values only, data paths absolute; keys
    that do not apply (another family's, an optimizer or loss not among the choices) left out."""
    doc = json.loads(json.dumps(document.model_dump(exclude_none=True)))
    if not doc.get("constraints"):  # no constraints: the digest of spaces written before they existed
        doc.pop("constraints", None)
    if not doc.get("final"):  # likewise without a final phase
        doc.pop("final", None)
    model = doc["model"]
    if document.model.family is None:
        doc["model"] = {"builder": model["builder"], "params": model["params"]}
    else:
        drop = {"params", *(CNN_KEYS if document.model.family != "cnn" else ())}
        doc["model"] = {k: v for k, v in model.items() if k not in drop}
    losses = document.loss.name.values()
    doc["loss"] = {k: v for k, v in doc["loss"].items() if k not in LOSS_OPTIONS or LOSS_OPTIONS[k][0] in losses}
    optimizers = document.optimizer.name.values()
    doc["optimizer"] = {k: v for k, v in doc["optimizer"].items() if k not in reg.OPTIMIZERS or k in optimizers}
    return doc


class Space:
    """A validated search space. `text` is the YAML as written (stored with the study); `digest`
    names its content, so comments and layout do not change it. Treat it as immutable: the
    `with_*` methods return new spaces."""

    def __init__(self, document: Document, source: str, text: str, base_dir: str | None = None) -> None:
        self.document, self.source, self.text, self.base_dir = document, source, text, base_dir
        self.normalised = _normalise(document)
        canonical = json.dumps(self.normalised, sort_keys=True, separators=(",", ":"))
        self.digest = hashlib.sha256(canonical.encode()).hexdigest()[:16]
        self._flatten(document)

    def _flatten(self, d: Document) -> None:
        data, m = d.data, d.model
        self.dataset, self.task, self.kind = data.dataset, d.task, reg.DATASETS[data.dataset].kind
        self.validation_fraction, self.test_fraction = data.validation_fraction, data.test_fraction
        self.data_path, self.target, self.color = data.path, data.target, data.color
        self.image_size: tuple[int, int] | None = tuple(data.image_size) if data.image_size else None  # type: ignore
        self._objective(d)
        self.epochs, self.trials, self.timeout = d.budget.epochs, d.budget.trials, d.budget.timeout
        self.goal, self.patience = d.budget.goal, d.budget.patience
        self.max_parameters = d.constraints.max_parameters
        self.max_latency_ms = d.constraints.max_latency_ms
        self.final_top_k, self.final_seeds = d.final.top_k or 3, d.final.seeds or 1
        self.sampler, self.sampler_options = d.sampler.name, dict(d.sampler.options or {})
        self.pruner, self.pruner_options = d.pruner.name, dict(d.pruner.options or {})
        self.family: str = m.family or reg.BUILDER_FAMILY
        self.builder: str | None = m.builder
        self.builder_params: dict[str, Param] = dict(m.params)
        keys = FAMILY_KEYS if m.family == "cnn" else tuple(k for k in FAMILY_KEYS if k not in CNN_KEYS)
        self.model: dict[str, Param] = {k: getattr(m, k) for k in keys} if m.family else {}
        self.loss: Param = d.loss.name
        self.loss_options: dict[str, Param] = {key: getattr(d.loss, key) for key in LOSS_OPTIONS}
        opt = d.optimizer
        self.optimizer: Param = opt.name
        self.optimizer_common = {"lr": opt.lr, "weight_decay": opt.weight_decay}
        self.optimizer_options: dict[str, dict[str, Param]] = {
            name: {key: getattr(getattr(opt, name), key) for key in info.options}
            for name, info in reg.OPTIMIZERS.items()
        }
        self.training = {"batch_size": d.training.batch_size, "schedule": d.training.schedule}
        self.flags = {"augment": data.augment, "amp": d.training.amp, "compile": d.training.compile}

    def _objective(self, d: Document) -> None:
        """`metrics`/`directions`: the objectives (one, or the trained metric then costs); `metric`
        and `direction` the first; `select_best`/`select_where`: the champion rule (automl.selection)."""
        objective = d.objective
        self.metrics: tuple[str, ...] = tuple(objective.metrics or (objective.metric,))  # type: ignore[arg-type]
        directions = reg.METRICS[d.task] | reg.COST_METRICS
        self.directions: tuple[str, ...] = tuple(directions[m] for m in self.metrics)
        self.metric: str = self.metrics[0]
        self.direction: str = self.directions[0]
        select = objective.select
        self.select_best: str = select.best if select and select.best else self.metric
        self.select_where: dict[str, str] = dict(select.where or {}) if select else {}

    @property
    def multi_objective(self) -> bool:
        """Whether the search optimises several metrics (a Pareto front, no single best)."""
        return len(self.metrics) > 1

    @property
    def name(self) -> str:
        """Default study name: the file name without its extension (dataset_family for dicts)."""
        if self.source.endswith((".yaml", ".yml")):
            return Path(self.source).stem
        return f"{self.dataset}_{self.family}"

    # --- reading and writing ---------------------------------------------------------------

    @classmethod
    def from_yaml(cls, path_or_text: str | Path, source: str | None = None) -> Space:
        """A space from a YAML file (a path to an existing file, or a name ending .yaml/.yml) or YAML text."""
        if isinstance(path_or_text, Path) or (
            "\n" not in path_or_text
            and (path_or_text.endswith((".yaml", ".yml")) or Path(path_or_text).is_file())
        ):
            return load_space(path_or_text)
        return parse_space(path_or_text, source or "<yaml>")

    @classmethod
    def from_yaml_text(cls, text: str, source: str = "<yaml>", base_dir: str | Path | None = None) -> Space:
        """A space from YAML text (`source` names it in messages; relative paths resolve in `base_dir`)."""
        return parse_space(text, source, base_dir)

    @classmethod
    def from_dict(cls, doc: dict[str, Any], source: str = "<dict>", base_dir: str | Path | None = None) -> Space:
        """A space from a dict shaped like the YAML; `model.builder` may be the class or function."""
        document = validate_document(copy.deepcopy(doc) if _plain(doc) else doc, source, base_dir)
        space = cls(document, source, "", str(base_dir) if base_dir else None)
        space.text = space.to_yaml()
        return space

    def to_dict(self) -> dict[str, Any]:
        """The normalised document (defaults filled in, paths absolute)."""
        return copy.deepcopy(self.normalised)

    def to_yaml(self) -> str:
        """YAML of the normalised document; `Space.from_yaml(s.to_yaml()) == s`, same digest."""
        return f"# automl search space (normalised from {self.source})\n" + dump_yaml(self.normalised)

    # --- variants ----------------------------------------------------------------------------

    def with_algorithms(self, sampler: str | None, pruner: str | None) -> Space:
        """The space with another sampler and/or pruner (the YAML's options apply only to their own;
        a replaced one gets its registry defaults). `text` and `digest` stay those of the space
        as written, so a study resumed with the same file still matches."""
        doc = self.to_dict()
        if sampler and sampler != self.sampler:
            doc["sampler"] = {"name": sampler}
        if pruner and pruner != self.pruner:
            doc["pruner"] = {"name": pruner}
        if doc == self.normalised:
            return self
        changed = Space(validate_document(doc, self.source, self.base_dir), self.source, self.text, self.base_dir)
        changed.digest = self.digest
        return changed

    def with_builder(self, builder: Any) -> Space:
        """The space with the user's network `builder` (a class or function in an importable module
        or file, or an import path) instead of its model; its model.params are kept and checked."""
        doc = self.to_dict()
        doc["model"] = {"builder": builder, "params": doc["model"].get("params", {})}
        document = validate_document(doc, self.source, self.base_dir)
        space = Space(document, self.source, "", self.base_dir)
        space.text = space.to_yaml()
        return space

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Space) and self.normalised == other.normalised

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:
        return f"Space(source={self.source!r}, dataset={self.dataset!r}, family={self.family!r}, digest={self.digest})"


def _plain(doc: Any) -> bool:
    """Whether a dict holds only JSON-like values (safe to deep-copy; a builder object may not be)."""
    try:
        json.dumps(doc)
    except (TypeError, ValueError):
        return False
    return True


SearchSpace = Space  # the former name; other modules import it


def load_space(path: str | Path) -> Space:
    """Read and validate a YAML search space file (relative data.path and builder files resolve
    against the file's folder)."""
    path = Path(path)
    if not path.is_file():
        raise space_error(str(path), (), "search space file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise space_error(str(path), (), f"cannot read the search space: {e}") from None
    return parse_space(text, str(path), path.resolve().parent)


def parse_space(text: str, source: str, base_dir: str | Path | None = None) -> Space:
    """Validate YAML text (`source` names it in messages; relative paths resolve in `base_dir`,
    default the working directory)."""
    try:
        doc = load_yaml(text)
    except Problem as e:
        raise space_error(source, e.path, e.message) from None
    base = str(base_dir) if base_dir is not None else None
    return Space(validate_document(doc, source, base), source, text, base)


__all__ = ["Space", "SearchSpace", "load_space", "parse_space", "validate_document", "UsageError"]
