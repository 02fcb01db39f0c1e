"""Tables of a study's trials and of the studies in a storage (Optuna + pandas only)."""

from __future__ import annotations

import optuna
import pandas as pd
from optuna.trial import TrialState

from automl.keys import FAIL_REASON, METRIC, N_PARAMETERS, PRUNED_REASON, RUN_ID, SECONDS


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, value, epochs run, seconds, parameters, run id, reason;
    sorted best first (complete trials by value, then pruned, failed, running and queued)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            "epochs": len(t.intermediate_values),
            "seconds": t.user_attrs.get(SECONDS),
            "n_parameters": t.user_attrs.get(N_PARAMETERS),
            **{f"param.{k}": v for k, v in t.params.items()},
            "mlflow_run_id": t.user_attrs.get(RUN_ID),
            "reason": t.user_attrs.get(FAIL_REASON) or t.user_attrs.get(PRUNED_REASON, ""),
        })
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    order = {"COMPLETE": 0, "PRUNED": 1, "FAIL": 2, "RUNNING": 3, "WAITING": 4}
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    table["value"] = table["value"].astype(float)
    table["_state"] = table["state"].map(order)
    table["_value"] = -table["value"] if maximize else table["value"]
    table = table.sort_values(["_state", "_value", "number"], na_position="last")
    return table.drop(columns=["_state", "_value"]).reset_index(drop=True)


def studies_table(storage: optuna.storages.BaseStorage) -> pd.DataFrame:
    """One row per study: name, direction, trial counts by state, best value and trial, state."""
    rows = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=True):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        counts = {s.name: 0 for s in TrialState}
        for t in study.get_trials(deepcopy=False):
            counts[t.state.name] += 1
        best = summary.best_trial
        state = "running" if counts["RUNNING"] else "queued" if counts["WAITING"] else "finished"
        rows.append({
            "study": summary.study_name,
            "direction": summary.direction.name.lower(),
            "metric": study.user_attrs.get(METRIC, ""),
            "trials": sum(counts.values()),
            "complete": counts["COMPLETE"],
            "pruned": counts["PRUNED"],
            "failed": counts["FAIL"],
            "running": counts["RUNNING"],
            "queued": counts["WAITING"],
            "best_value": best.value if best else None,
            "best_trial": best.number if best else None,
            "state": state,
            "started": summary.datetime_start,
        })
    return pd.DataFrame(rows)
