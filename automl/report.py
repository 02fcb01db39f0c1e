"""Tables of a study's trials and of the studies in a storage (Optuna + pandas only)."""

from __future__ import annotations

from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from automl.budget import unopened
from automl.errors import UsageError
from automl.keys import FAIL_REASON, FINAL_METRICS, METRIC, N_PARAMETERS, PRUNED_REASON, RUN_ID, SECONDS
from automl.pruning import curve_of
from automl.selection import champion_trial, is_multi_objective, metric_names, pareto_numbers, primary_value

HIDDEN = ("mlflow_run_id", "reason")  # shown with --all-columns


def _objectives(study: optuna.Study, t: FrozenTrial, front: set[int]) -> dict[str, Any]:
    """Multi-objective columns: each objective after the first (from the trial's values, or for an
    unfinished trial from its attributes, measured before training) and `pareto` ("*" on the front)."""
    names = metric_names(study)
    row = {m: t.values[i] if t.values is not None else t.user_attrs.get(m) for i, m in enumerate(names) if i}
    return {**row, "pareto": "*" if t.number in front else ""}


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, value, epochs run, seconds, final validation loss,
    parameters, run id, reason; sorted best first: complete trials by value, equal values by trial
    number (so the first row is Optuna's best trial, the one the champion comes from), then pruned,
    failed, running and queued trials.

    Multi-objective studies: `value` is the first metric, a column per further objective and
    `pareto` ("*": on the Pareto front); the champion (automl.selection) comes first, then the
    rest of the front, then the other complete trials, each group by the first metric."""
    multi = is_multi_objective(study)
    front = pareto_numbers(study)
    champion = champion_trial(study).number if front else None
    rows = []
    for t in study.get_trials(deepcopy=False):
        objectives = _objectives(study, t, front) if multi else {}
        rows.append({
            "number": t.number,
            "state": t.state.name,
            "value": primary_value(t),
            **objectives,
            "epochs": len(curve_of(t)),
            "seconds": t.user_attrs.get(SECONDS),
            "n_parameters": t.user_attrs.get(N_PARAMETERS, objectives.get(N_PARAMETERS)),
            "val_loss": (t.user_attrs.get(FINAL_METRICS) or {}).get("val_loss"),
            **{f"param.{k}": v for k, v in t.params.items()},
            "mlflow_run_id": t.user_attrs.get(RUN_ID),
            "reason": t.user_attrs.get(FAIL_REASON) or t.user_attrs.get(PRUNED_REASON, ""),
            "_rank": 0 if t.number == champion or not multi else 1 if t.number in front else 2,
        })
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    order = {"COMPLETE": 0, "PRUNED": 1, "FAIL": 2, "RUNNING": 3, "WAITING": 4}
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    table["value"] = table["value"].astype(float)
    table["_state"] = table["state"].map(order)
    table["_value"] = -table["value"] if maximize else table["value"]
    table["val_loss"] = table["val_loss"].astype(float)
    if study.user_attrs.get(METRIC) == "val_loss" or table["val_loss"].isna().all():
        table = table.drop(columns=["val_loss"])
    table = table.sort_values(["_state", "_rank", "_value", "number"], na_position="last")
    return table.drop(columns=["_state", "_rank", "_value"]).reset_index(drop=True)


def studies_table(storage: optuna.storages.BaseStorage) -> pd.DataFrame:
    """One row per study: name, direction, trial counts by state, best value and trial, state.
    A multi-objective study lists its directions and metrics (comma-separated) and its champion
    (automl.selection) with the value of its first metric."""
    rows = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=True):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        counts = {s.name: 0 for s in TrialState}
        for t in study.get_trials(deepcopy=False):
            counts[t.state.name] += 1
        counts["WAITING"] += unopened(study)  # the budget not queued yet
        multi = is_multi_objective(study)
        best = (champion_trial(study) if pareto_numbers(study) else None) if multi else summary.best_trial
        state = "running" if counts["RUNNING"] else "queued" if counts["WAITING"] else "finished"
        rows.append({
            "study": summary.study_name,
            "direction": ", ".join(d.name.lower() for d in summary.directions),
            "metric": ", ".join(metric_names(study)) if multi else study.user_attrs.get(METRIC, ""),
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


def select(table: pd.DataFrame, metric: str, top: int | None, columns: str | None,
           all_columns: bool) -> pd.DataFrame:
    """The rows and columns `report` shows: the best `top` rows; the named `columns` (parameters
    with or without `param.`; the study's `metric` stands for `value`); run ids and reasons only
    with `all_columns`."""
    if top is not None:
        table = table.head(top)
    if columns:
        wanted = [c.strip() for c in columns.split(",") if c.strip()]
        names = {c: c for c in table.columns} | {c.removeprefix("param."): c for c in table.columns}
        names[metric] = "value"
        unknown = [c for c in wanted if c not in names]
        if unknown:
            raise UsageError(f"--columns: unknown column {unknown[0]!r} (columns: {', '.join(names)})")
        return table[[names[c] for c in wanted]]
    if not all_columns:
        table = table.drop(columns=[c for c in HIDDEN if c in table.columns])
    return table


def _format_value(value: Any, column: str) -> str:
    """Numbers by type: whole numbers without decimals, scores with 4, small or large floats in
    scientific notation, nothing for missing values."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or (float(value).is_integer() and column in ("epochs", "n_parameters", "number")):
        return str(int(value))
    if column == "seconds":
        return f"{value:.1f}"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.3g}"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.4f}"


def format_table(table: pd.DataFrame, metric: str | None = None) -> str:
    """The table as aligned text; the `value` column is named after the study's metric."""
    if table.empty:
        return "(nothing yet)"
    shown = table.rename(columns={"value": metric} if metric else {})
    cells = {c: [_format_value(v, c) for v in table[o]] for c, o in zip(shown.columns, table.columns, strict=True)}
    widths = {c: max(len(str(c)), *(len(v) for v in cells[c])) for c in shown.columns}
    lines = ["  ".join(str(c).rjust(widths[c]) for c in shown.columns)]
    for i in range(len(shown)):
        lines.append("  ".join(cells[c][i].rjust(widths[c]) for c in shown.columns))
    return "\n".join(lines)
