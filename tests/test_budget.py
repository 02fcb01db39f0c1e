"""The trial budget (automl.budget): a small pool of queued trials, refilled under the budget lock,
keeps the budget exact across processes; the trials not queued yet still count as queued."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import optuna
from optuna.trial import TrialState

from automl import budget, record
from automl.report import studies_table
from automl.storage import budget_lock, can_lock_budget, open_storage
from automl.worker import claim_trial

ROOT = Path(__file__).resolve().parent.parent

CLAIMER = """\
import json, sys
import optuna
from automl.storage import open_storage
from automl.worker import claim_trial
storage = open_storage(sys.argv[1])
study = optuna.load_study(study_name="b", storage=storage)
claimed, most_queued = [], 0
while (trial := claim_trial(study, storage)) is not None:
    claimed.append(trial.number)
    most_queued = max(most_queued, len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))))
    study.tell(trial, 0.5)
print(json.dumps({"claimed": claimed, "most_queued": most_queued}))
"""


def _study(tmp_path: Path) -> tuple[str, optuna.Study]:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    return url, optuna.create_study(study_name="b", storage=open_storage(url))


def test_three_processes_claim_exactly_the_budget_from_a_small_pool(tmp_path: Path) -> None:
    url, study = _study(tmp_path)
    assert budget.top_up_budget(study, 13, url) == 13
    assert [t.state for t in study.get_trials()] == [TrialState.WAITING] * budget.POOL_SIZE
    env = {"PYTHONPATH": str(ROOT)}
    workers = [subprocess.Popen([sys.executable, "-c", CLAIMER, url], stdout=subprocess.PIPE, text=True,
                                env={**env, "PATH": "/usr/bin:/bin"}) for _ in range(3)]
    results = [json.loads(w.communicate(timeout=300)[0]) for w in workers]
    assert all(w.returncode == 0 for w in workers)
    claimed = sorted(n for r in results for n in r["claimed"])
    assert claimed == list(range(13))  # each trial once, none beyond the budget
    assert max(r["most_queued"] for r in results) <= budget.POOL_SIZE
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 13
    assert budget.unopened(study) == 0 and budget.refill_pool(study, url) == 0


def test_the_budget_not_queued_yet_counts_as_queued(tmp_path: Path) -> None:
    url, study = _study(tmp_path)
    budget.top_up_budget(study, 10, url)
    assert budget.unopened(study) == 10 - budget.POOL_SIZE
    assert budget.pool(study).to_run == 10 and record.counts(study)["WAITING"] == 10
    row = studies_table(open_storage(url)).iloc[0]
    assert row["queued"] == 10 and row["state"] == "queued"
    # a larger budget on resume: it gains 2, the pool is not topped beyond its size, the rest waits
    assert budget.top_up_budget(study, 12, url) == 2 and budget.top_up_budget(study, 12, url) == 0
    assert len(study.get_trials()) == budget.POOL_SIZE and budget.pool(study).to_run == 12
    # a smaller one (another search of the study with its space's default) lowers nothing
    assert budget.top_up_budget(study, 5, url) == 0 and budget.budget_of(study) == 12


def test_a_retry_of_a_failed_trial_comes_on_top_of_the_budget(tmp_path: Path) -> None:
    url, study = _study(tmp_path)
    budget.top_up_budget(study, 6, url)
    trial = study.ask()  # takes the first queued trial
    study.tell(trial, state=TrialState.FAIL)
    optuna.storages.RetryFailedTrialCallback(max_retry=1)(study, study.trials[trial.number])
    assert len(study.get_trials()) == budget.POOL_SIZE + 1
    assert budget.unopened(study) == 6 - budget.POOL_SIZE


def test_a_storage_without_a_budget_lock_queues_the_whole_budget(tmp_path: Path) -> None:
    _, study = _study(tmp_path)
    mysql = "mysql+pymysql://automl@127.0.0.1/automl"
    assert not can_lock_budget(mysql) and can_lock_budget("postgresql://automl@127.0.0.1/automl")
    assert budget.top_up_budget(study, 7, mysql) == 7
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 7
    assert budget.refill_pool(study, mysql) == 7  # nothing added: all of it is queued


def test_a_warm_start_gets_a_pool_large_enough_for_its_trials(tmp_path: Path) -> None:
    url, study = _study(tmp_path)
    budget.top_up_budget(study, 20, url, at_least=6)
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 6


def _claims_within(seconds: float, study: optuna.Study, storage) -> list:
    """claim_trial in a thread; what it returned, or nothing if it was still waiting after `seconds`."""
    got: list = []
    thread = threading.Thread(target=lambda: got.append(claim_trial(study, storage)), daemon=True)
    thread.start()
    thread.join(seconds)
    return got


def test_claims_never_wait_for_another_searchs_summary_nor_for_a_spent_budget(tmp_path: Path) -> None:
    url, study = _study(tmp_path)
    storage = open_storage(url)
    study = optuna.load_study(study_name="b", storage=storage)
    budget.top_up_budget(study, budget.POOL_SIZE + 1, url)
    with budget_lock(url, "b", "summary"):  # another search publishing (its final phase may take hours)
        for _ in range(budget.POOL_SIZE + 1):  # the last claim refills the pool
            (trial,) = _claims_within(30, study, storage)
            study.tell(trial, 0.5)
    with budget_lock(url, "b"):  # held elsewhere: a spent budget is known without it
        assert _claims_within(30, study, storage) == [None]
