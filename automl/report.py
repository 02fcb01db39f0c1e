"""Tables of a study's trials and of the studies in a storage (Optuna + pandas only)."""

from __future__ import annotations

from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState

from automl.errors import UsageError
from automl.keys import FAIL_REASON, FINAL_METRICS, METRIC, N_PARAMETERS, PRUNED_REASON, RUN_ID, SECONDS

HIDDEN = ("mlflow_run_id", "reason")  # shown with --all-columns


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, value, epochs run, seconds, final validation loss,
    parameters, run id, reason; sorted best first: complete trials by value, equal values by trial
    number (so the first row is Optuna's best trial, the one the champion comes from), then pruned,
    failed, running and queued trials."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            "epochs": len(t.intermediate_values),
            "seconds": t.user_attrs.get(SECONDS),
            "n_parameters": t.user_attrs.get(N_PARAMETERS),
            "val_loss": (t.user_attrs.get(FINAL_METRICS) or {}).get("val_loss"),
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
    table["val_loss"] = table["val_loss"].astype(float)
    if study.user_attrs.get(METRIC) == "val_loss" or table["val_loss"].isna().all():
        table = table.drop(columns=["val_loss"])
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
