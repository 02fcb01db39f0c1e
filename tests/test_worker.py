"""The worker loop on its own: two in-process workers on one study keep the budget exact; a
claimed trial is closed in both stores."""

from __future__ import annotations

import threading

import optuna
from optuna.trial import TrialState

from automl import budget, record, storage
from automl.data import load_dataset
from automl.objective import Objective
from automl.space import parse_space
from automl.tracking import Tracker
from automl.worker import claim_trial, run_worker
from tests.conftest import TINY_SPACE, Stores


def _study(stores: Stores, trials: int) -> tuple:
    space = parse_space(TINY_SPACE.replace("epochs: 2", "epochs: 1"), "tiny.yaml")
    data = load_dataset("digits", seed=0)
    opened = storage.open_storage(stores.storage_url)
    tracker = Tracker(stores.tracking_uri)
    study, created = record.create_or_load("w", opened, space, 0, data.identity())
    experiment, parent = record.attach_tracking(study, tracker, {}, data.identity(), print)
    assert created and budget.top_up_budget(study, trials, stores.storage_url) == trials
    return space, data, opened, tracker, experiment, parent


def test_two_workers_in_threads_keep_the_budget_exact(stores: Stores) -> None:
    space, data, opened, tracker, experiment, parent = _study(stores, 5)
    done: list[int] = []

    def work(index: int) -> None:
        handle = record.StudyHandle("w", opened, space, record.make_sampler(space, index), record.make_pruner(space),
                                    0, experiment, parent)
        done.append(run_worker(handle, Objective(space, data, 0), tracker))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    trials = optuna.load_study(study_name="w", storage=stores.storage_url).trials
    assert sum(done) == 5 and len(trials) == 5
    assert sorted(t.number for t in trials) == list(range(5))
    assert all(t.state.is_finished() for t in trials)
    runs = stores.client().search_runs([experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    assert len(runs) == 5 and all(r.info.status != "RUNNING" for r in runs)


def test_claim_takes_each_waiting_trial_once(stores: Stores) -> None:
    _, _, opened, *_ = _study(stores, 2)
    first = claim_trial(optuna.load_study(study_name="w", storage=opened), opened)
    second = claim_trial(optuna.load_study(study_name="w", storage=opened), opened)
    third = claim_trial(optuna.load_study(study_name="w", storage=opened), opened)
    assert first is not None and second is not None and third is None
    assert first.number != second.number


class _Watching(optuna.samplers.RandomSampler):
    """Records, per trial, how many finished trials the sampler's view of the study holds: the
    per-trial snapshot that TPE and the other model-based samplers read."""

    def __init__(self) -> None:
        super().__init__(seed=0)
        self.seen: dict[int, int] = {}

    def sample_independent(self, study, trial, name, distribution):  # type: ignore[no-untyped-def]
        finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        self.seen.setdefault(trial.number, len(study._get_trials(deepcopy=False, states=finished, use_cache=True)))
        return super().sample_independent(study, trial, name, distribution)


def test_a_worker_keeps_one_study_and_its_sampler_sees_every_finished_trial(stores: Stores) -> None:
    space, data, opened, tracker, experiment, parent = _study(stores, 4)
    sampler = _Watching()
    handle = record.StudyHandle("w", opened, space, sampler, record.make_pruner(space), 0, experiment, parent)
    assert run_worker(handle, Objective(space, data, 0), tracker) == 4
    assert sampler.seen == {0: 0, 1: 1, 2: 2, 3: 3}


def test_tpe_lies_only_for_a_trial_claimed_while_another_runs(stores: Stores) -> None:
    _, _, opened, *_ = _study(stores, 3)
    space = parse_space(TINY_SPACE.replace("sampler: {name: random}", "sampler: {name: tpe}"), "tpe.yaml")
    sampler = record.make_sampler(space, 0)
    assert sampler._constant_liar is True  # Optuna 5's default: it weighs other workers' running trials
    study = optuna.load_study(study_name="w", storage=opened, sampler=sampler)
    first = claim_trial(study, opened)  # nothing else runs: the liar would change no value
    assert first is not None and sampler._constant_liar is False
    second = claim_trial(study, opened)  # the first still runs
    assert second is not None and sampler._constant_liar is True
    study.tell(first, 0.5)
    study.tell(second, 0.5)
    assert claim_trial(study, opened) is not None and sampler._constant_liar is False
    honest = record.make_sampler(parse_space(TINY_SPACE.replace(
        "sampler: {name: random}", "sampler: {name: tpe, options: {constant_liar: false}}"), "honest.yaml"), 0)
    record.lie_while_others_run(honest, True)
    assert honest._constant_liar is False  # a space that turns it off keeps it off
