"""The study record: creating or loading a study with its space, seed and tracking ids, its
sampler and pruner. The study's trial budget is automl.budget's.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from automl.budget import unopened
from automl.checks import absolute_sqlite, mask_url, without_password
from automl.errors import UsageError
from automl.keys import (
    DATA,
    EXPERIMENT_ID,
    METRIC,
    NOT_RUN,
    PARENT_RUN_ID,
    PRUNER,
    SAMPLER,
    SEED,
    SPACE_DIGEST,
    SPACE_SOURCE,
    SPACE_TEXT,
    TRACKING_URI,
)
from automl.registries import PRUNERS, SAMPLERS, resolve
from automl.selection import SELECT
from automl.space import SearchSpace, parse_space

if TYPE_CHECKING:
    from automl.tracking import Tracker


def make_sampler(space: SearchSpace, seed: int) -> optuna.samplers.BaseSampler:
    """The space's sampler, seeded."""
    info = SAMPLERS[space.sampler]
    seeded = {"seed": seed} if info.seeded else {}
    return resolve(info.cls)(**space.sampler_options, **seeded)


def lie_while_others_run(sampler: optuna.samplers.BaseSampler, others_running: bool) -> None:
    """Whether TPE's constant liar (on by default since Optuna 5, or as the space sets it) is used
    for the trial about to be sampled: only while another trial runs. The liar weighs the trials
    running elsewhere; with none it changes no value sampled, yet it reads the study's trials
    afresh for every value. Other samplers are left alone."""
    if isinstance(sampler, optuna.samplers.TPESampler) and hasattr(sampler, "_constant_liar"):
        configured = sampler.__dict__.setdefault("_automl_constant_liar", sampler._constant_liar)
        sampler._constant_liar = configured and others_running


def make_pruner(space: SearchSpace) -> optuna.pruners.BasePruner:
    """The space's pruner."""
    return resolve(PRUNERS[space.pruner].cls)(**space.pruner_options)



@dataclass
class StudyHandle:
    """A study with what the worker loop needs around it."""

    name: str
    storage: optuna.storages.RDBStorage
    space: SearchSpace
    sampler: optuna.samplers.BaseSampler
    pruner: optuna.pruners.BasePruner
    seed: int
    experiment_id: str
    parent_run_id: str

    def load(self) -> optuna.Study:
        """A fresh Study object (fresh trial cache for the sampler) on the shared storage."""
        return optuna.load_study(study_name=self.name, storage=self.storage,
                                 sampler=self.sampler, pruner=self.pruner)


def _space_text(study: optuna.Study) -> str | None:
    """The YAML of the study's space: a system attribute (readable, never shown as a user attribute)."""
    system = study._storage.get_study_system_attrs(study._study_id)
    return system.get(SPACE_TEXT) or study.user_attrs.get(SPACE_TEXT)


def space_of(study: optuna.Study) -> SearchSpace:
    """The search space a study was created with, with its --sampler/--pruner choices (workers
    need no YAML file)."""
    text = _space_text(study)
    if text is None:
        raise UsageError(f"study {study.study_name!r} was not created by automl (no search space stored)")
    attrs = study.user_attrs
    space = parse_space(text, attrs.get(SPACE_SOURCE, "stored search space"))
    return space.with_algorithms(attrs.get(SAMPLER), attrs.get(PRUNER))


def keep_algorithms(study: optuna.Study, space: SearchSpace, sampler: str | None, pruner: str | None) -> SearchSpace:
    """A resumed study keeps the sampler and pruner it began with; asking for others is refused."""
    attrs = study.user_attrs
    kept_sampler, kept_pruner = attrs.get(SAMPLER, space.sampler), attrs.get(PRUNER, space.pruner)
    if (sampler or kept_sampler) != kept_sampler or (pruner or kept_pruner) != kept_pruner:
        raise UsageError(f"--sampler/--pruner: study {study.study_name!r} uses sampler {kept_sampler!r} and "
                         f"pruner {kept_pruner!r}; a study keeps them (use another --study name)")
    return space.with_algorithms(kept_sampler, kept_pruner)


def _describe(identity: dict[str, Any]) -> str:
    return f"{identity.get('name')} ({identity.get('source')}, digest {identity.get('digest')})"


def create_or_load(
    name: str, storage: optuna.storages.RDBStorage, space: SearchSpace, seed: int, data: dict[str, Any]
) -> tuple[optuna.Study, bool]:
    """Create the study, or load it when it exists with the same space and data. Returns (study, created)."""
    try:
        directions = [optuna.study.StudyDirection[d.upper()] for d in space.directions]
        study = optuna.create_study(study_name=name, storage=storage, directions=directions)
        storage.set_study_system_attr(study._study_id, SPACE_TEXT, space.to_yaml())
        with warnings.catch_warnings():  # experimental in Optuna; the names label plots and `optuna studies`
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(space.metrics))
        select = ((SELECT, {"best": space.select_best, "where": space.select_where}),) if space.multi_objective else ()
        for key, value in ((SPACE_SOURCE, space.source), (SEED, seed), (METRIC, space.metric), *select,
                           (SAMPLER, space.sampler), (PRUNER, space.pruner), (DATA, data),
                           (SPACE_DIGEST, space.digest)):  # the digest last: it marks the study complete
            study.set_user_attr(key, value)
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage)
    stored = study.user_attrs.get(SPACE_DIGEST)
    if stored is None:
        # created by another process an instant ago: wait for its attributes
        for _ in range(50):
            time.sleep(0.1)
            stored = optuna.load_study(study_name=name, storage=storage).user_attrs.get(SPACE_DIGEST)
            if stored is not None:
                break
        study = optuna.load_study(study_name=name, storage=storage)
    if stored != space.digest:
        raise UsageError(
            f"--study: study {name!r} already exists with another search space "
            f"({study.user_attrs.get(SPACE_SOURCE, 'unknown')}); use another --study name"
        )
    stored_seed = study.user_attrs.get(SEED, seed)
    if stored_seed != seed:  # another process created it an instant ago, with another seed
        raise UsageError(f"--seed: study {name!r} was created with seed {stored_seed}, not {seed}")
    known = study.user_attrs.get(DATA)
    if known and known.get("digest") != data.get("digest"):
        raise UsageError(f"--study: study {name!r} was created on data {_describe(known)}, not on "
                         f"{_describe(data)}; use another --study name")
    return study, False


def stored_attrs(storage: optuna.storages.RDBStorage, name: str) -> dict[str, Any]:
    """The user attributes of an existing study (its seed, tracking URI without password, ...)."""
    return optuna.load_study(study_name=name, storage=storage).user_attrs


def _same_store(a: str, b: str) -> bool:
    return without_password(absolute_sqlite(a)) == without_password(absolute_sqlite(b))


def check_tracking(study: optuna.Study, tracker: Tracker) -> None:
    """A study is bound to the tracking store it began with: another one would split its records."""
    bound = study.user_attrs.get(TRACKING_URI)
    if bound and study.user_attrs.get(PARENT_RUN_ID) and not _same_store(bound, tracker.uri):
        raise UsageError(f"--tracking-uri: study {study.study_name!r} is recorded in {bound}, not in "
                         f"{mask_url(tracker.uri)}; give --tracking-uri {bound} (or use another --study name)")


def attach_tracking(study: optuna.Study, tracker: Tracker, params: dict[str, Any], data: Any,
                    say: Callable[[str], None]) -> tuple[str, str]:
    """The study's experiment and parent run, created once and remembered in the study; a study run
    deleted in MLflow is replaced by a new one (and said so)."""
    attrs = study.user_attrs
    experiment_id = tracker.experiment_id(study.study_name)
    parent = attrs.get(PARENT_RUN_ID)
    state = tracker.run_state(parent) if parent else None
    if state is None or state == "deleted":
        new = tracker.start_study_run(experiment_id, study.study_name, params, _space_text(study) or "", data)
        if state == "deleted":
            say(f"  the study run {parent} was deleted in MLflow; its trial runs stay there; "
                f"new study run {new}")
        parent = new
        study.set_user_attr(EXPERIMENT_ID, experiment_id)
        study.set_user_attr(PARENT_RUN_ID, parent)
        study.set_user_attr(TRACKING_URI, without_password(absolute_sqlite(tracker.uri)))
    return experiment_id, parent


def counts(study: optuna.Study) -> dict[str, int]:
    """Trials per state name; NOT_RUN counts queued trials closed by a stop rule (not failures);
    WAITING counts the budget not queued yet as well (automl.budget)."""
    result = {s.name: 0 for s in TrialState}
    result["NOT_RUN"] = 0
    for t in study.get_trials(deepcopy=False):
        key = "NOT_RUN" if t.state == TrialState.FAIL and NOT_RUN in t.user_attrs else t.state.name
        result[key] += 1
    result["WAITING"] += unopened(study)
    return result
