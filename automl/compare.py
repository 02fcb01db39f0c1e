"""`automl compare`: the best value so far of several studies against trial number and against wall
time, as one table and one plot (PNG/SVG/PDF through matplotlib, two panels; interactive HTML
through plotly). Read-only: it creates no storage, study or run.

Wall time is seconds since the study's first trial started, so studies run at different times
share one axis. Only COMPLETE trials count towards the best value (as for Optuna's best trial);
multi-objective studies are compared on their first objective.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState

from automl import checks, keys
from automl.budget import unopened
from automl.errors import UsageError

IMAGE_SUFFIXES = (".png", ".svg", ".pdf")
PLOT_SUFFIXES = (*IMAGE_SUFFIXES, ".html")
SHOWN_NAMES = 10  # existing studies named in an unknown-study message


def open_study(name: str, storage_url: str, flag: str = "--study") -> optuna.Study:
    """An existing study; an unknown name is one line naming the studies that exist (nothing is created)."""
    from automl.storage import open_storage, quiet_optuna

    quiet_optuna()
    try:
        checks.check_study_name(name)
    except UsageError as e:
        raise UsageError(str(e).replace("--study:", f"{flag}:", 1)) from None
    storage = open_storage(storage_url, create=False)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = sorted(optuna.get_all_study_names(storage))
        shown = ", ".join(names[:SHOWN_NAMES]) + (f" and {len(names) - SHOWN_NAMES} more" if len(names) > SHOWN_NAMES
                                                   else "")
        there = f"studies there: {shown}" if names else "it holds no study yet"
        raise UsageError(f"{flag}: no study named {name!r} in {checks.mask_url(storage_url)} ({there})") from None


def objective_of(study: optuna.Study) -> tuple[str, str]:
    """(metric name, direction) of a study's first objective."""
    metric = study.user_attrs.get(keys.METRIC) or (study.metric_names or ["value"])[0] or "value"
    return str(metric), study.directions[0].name.lower()


def best_so_far(study: optuna.Study) -> pd.DataFrame:
    """One row per COMPLETE trial, by trial number: `number`, `seconds` (when it finished, since the
    study's first trial started), `value`, `best_by_number` (the best value among trials numbered up
    to this one) and `best_by_time` (the best value among trials finished by `seconds`)."""
    columns = ["number", "seconds", "value", "best_by_number", "best_by_time"]
    trials = study.get_trials(deepcopy=False)
    started = [t.datetime_start for t in trials if t.datetime_start is not None]
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.datetime_complete is not None]
    if not complete or not started:
        return pd.DataFrame(columns=columns)
    origin = min(started)
    table = pd.DataFrame({
        "number": [t.number for t in complete],
        "seconds": [(t.datetime_complete - origin).total_seconds() for t in complete],  # type: ignore[operator]
        "value": [float(t.values[0]) for t in complete],
    }).sort_values("number")
    best = "cummax" if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else "cummin"
    table["best_by_number"] = getattr(table["value"], best)()
    by_time = table.sort_values(["seconds", "number"])
    table["best_by_time"] = getattr(by_time["value"], best)().reindex(table.index)
    return table[columns].reset_index(drop=True)


def summary_row(study: optuna.Study, curve: pd.DataFrame) -> dict[str, Any]:
    """A study's line of the table: trial counts, best value, the (first) trial that reached it,
    seconds until the best value was first reached, and seconds until the last trial finished."""
    trials = study.get_trials(deepcopy=False)
    counts = {s: 0 for s in ("COMPLETE", "PRUNED", "FAIL")}
    for t in trials:
        if t.state.name in counts and not (t.state == TrialState.FAIL and keys.NOT_RUN in t.user_attrs):
            counts[t.state.name] += 1
    started = [t.datetime_start for t in trials if t.datetime_start is not None]
    finished = [t.datetime_complete for t in trials if t.datetime_complete is not None and t.datetime_start]
    row: dict[str, Any] = {"study": study.study_name, "trials": len(trials) + unopened(study),
                           "complete": counts["COMPLETE"],
                           "pruned": counts["PRUNED"], "failed": counts["FAIL"], "best_value": None,
                           "best_trial": None, "time_to_best_s": None,
                           "total_s": (max(finished) - min(started)).total_seconds() if finished else None}
    if not curve.empty:
        maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
        best = curve["value"].max() if maximize else curve["value"].min()
        reached = curve[curve["value"] == best]
        row.update(best_value=float(best), best_trial=int(reached["number"].min()),
                   time_to_best_s=float(reached["seconds"].min()))
    return row


def check_outputs(outputs: Sequence[str | Path]) -> list[Path]:
    """Plot files to write: a known suffix and an existing folder (UsageError otherwise)."""
    from automl.best import check_output_path

    paths = [Path(p) for p in outputs]
    for path in paths:
        if path.suffix.lower() not in PLOT_SUFFIXES:
            raise UsageError(f"--output: {path}: expected a file ending in {', '.join(PLOT_SUFFIXES)}")
        check_output_path(path, "--output")
    return paths


def compare_studies(studies: Sequence[str], storage: str | None = None,
                    output: str | Path | Sequence[str | Path] | None = None) -> pd.DataFrame:
    """Compare studies of one metric and direction: one row per study (see `summary_row`), and,
    with `output`, the plot written to each file (.png, .svg, .pdf or interactive .html).
    The curves behind the plot are `best_so_far(study)`."""
    names = [studies] if isinstance(studies, str) else list(studies)
    if not names:
        raise UsageError("STUDY: name at least one study")
    twice = [n for i, n in enumerate(names) if n in names[:i]]
    if twice:
        raise UsageError(f"STUDY: {twice[0]!r} is given twice")
    outputs = [] if output is None else [output] if isinstance(output, (str, Path)) else list(output)
    paths = check_outputs(outputs)
    storage_url = checks.storage_url(storage)
    loaded = [open_study(n, storage_url, "STUDY") for n in names]
    objectives = {s.study_name: objective_of(s) for s in loaded}
    if len(set(objectives.values())) > 1:
        shown = ", ".join(f"{n} {d}s {m}" for n, (m, d) in objectives.items())
        raise UsageError(f"STUDY: the studies do not share their metric and direction ({shown}); "
                         "compare studies of one objective")
    curves = {s.study_name: best_so_far(s) for s in loaded}
    table = pd.DataFrame([summary_row(s, curves[s.study_name]) for s in loaded])
    table["best_trial"] = table["best_trial"].astype("Int64")
    metric, direction = objectives[names[0]]
    last = {s.study_name: _last_started(s) for s in loaded}
    curves = {name: _extended(curve, row, last[name])
              for (name, curve), row in zip(curves.items(), table.to_dict("records"), strict=True)}
    for path in paths:
        if path.suffix.lower() == ".html":
            write_html(curves, metric, direction, path)
        else:
            write_image(curves, metric, direction, path)
    table.attrs.update(metric=metric, direction=direction)
    return table


def _last_started(study: optuna.Study) -> int:
    """The number of the study's last trial that started (queued trials never run are left out)."""
    return max((t.number for t in study.get_trials(deepcopy=False) if t.datetime_start is not None), default=0)


def _extended(curve: pd.DataFrame, row: dict[str, Any], last: int) -> pd.DataFrame:
    """The curve with a last point (no value of its own) at the study's last started trial `last`
    and total time, so each best-so-far line runs to the end of its study."""
    if curve.empty:
        return curve
    end = {"number": max(last, int(curve["number"].max())),
           "seconds": max(row["total_s"] or 0.0, curve["seconds"].max()),
           "value": float("nan"), "best_by_number": curve["best_by_number"].iloc[-1],
           "best_by_time": curve.sort_values(["seconds", "number"])["best_by_time"].iloc[-1]}
    return pd.concat([curve, pd.DataFrame([end])], ignore_index=True)


def _y_limits(curves: dict[str, pd.DataFrame]) -> tuple[float, float] | None:
    """The best-so-far lines' range with some room; single trials far below it are left out."""
    values = pd.concat([c["best_by_number"] for c in curves.values() if not c.empty] or [pd.Series(dtype=float)])
    if values.empty:
        return None
    low, high = float(values.min()), float(values.max())
    room = 0.25 * (high - low) or 0.01 * (abs(high) or 1.0)
    return low - room, high + room


def _titles(metric: str) -> tuple[str, str, str, str]:
    return (f"best {metric} so far, by trial number", f"best {metric} so far, by wall time",
            "trial number", "seconds since the study's first trial started")


def write_image(curves: dict[str, pd.DataFrame], metric: str, direction: str, path: Path) -> None:
    """Two panels (by trial number, by wall time): a step line of the best value so far per study,
    a dot per trial that set a new best, and each other complete trial's value as a faint dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    left_title, right_title, left_x, right_x = _titles(metric)
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for i, (name, curve) in enumerate(curves.items()):
        color = f"C{i % 10}"
        by_time = curve.sort_values(["seconds", "number"])
        for axes, frame, x, best in ((left, curve, "number", "best_by_number"),
                                     (right, by_time, "seconds", "best_by_time")):
            axes.step(frame[x], frame[best], where="post", color=color, label=name)
            axes.scatter(frame[x], frame["value"], s=12, alpha=0.3, color=color)
            better = frame[(frame["value"] == frame[best]) & (frame[best] != frame[best].shift())]  # new bests
            axes.scatter(better[x], better["value"], s=18, color=color)
    for axes, title, xlabel in ((left, left_title, left_x), (right, right_title, right_x)):
        axes.set_title(title)
        axes.set_xlabel(xlabel)
        axes.set_ylabel(f"{metric} ({direction})")
        axes.grid(alpha=0.3)
        limits = _y_limits(curves)
        if limits:
            axes.set_ylim(*limits)
    right.set_xlim(left=0)
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.legend(loc="best", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_html(curves: dict[str, pd.DataFrame], metric: str, direction: str, path: Path) -> None:
    """The same two panels as an interactive, self-contained plotly page (opens offline)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    left_title, right_title, left_x, right_x = _titles(metric)
    figure = make_subplots(rows=1, cols=2, subplot_titles=(left_title, right_title))
    colors = [f"hsl({(i * 137) % 360},60%,45%)" for i in range(len(curves))]
    for (name, curve), color in zip(curves.items(), colors, strict=True):
        by_time = curve.sort_values(["seconds", "number"])
        for col, x, best, frame in ((1, "number", "best_by_number", curve), (2, "seconds", "best_by_time", by_time)):
            figure.add_trace(go.Scatter(x=frame[x], y=frame[best], mode="lines", line_shape="hv", name=name,
                                        legendgroup=name, showlegend=col == 1, line={"color": color}),
                             row=1, col=col)
            figure.add_trace(go.Scatter(x=frame[x], y=frame["value"], mode="markers", name=f"{name} trials",
                                        legendgroup=name, showlegend=False, opacity=0.35,
                                        marker={"color": color, "size": 6},
                                        customdata=frame["number"], hovertemplate="trial %{customdata}: %{y}"),
                             row=1, col=col)
    figure.update_xaxes(title_text=left_x, row=1, col=1)
    figure.update_xaxes(title_text=right_x, row=1, col=2)
    limits = _y_limits(curves)
    figure.update_yaxes(title_text=f"{metric} ({direction})", range=list(limits) if limits else None)
    figure.update_layout(title=f"{metric} ({direction}): {', '.join(curves)}")
    path.write_text(figure.to_html(full_html=True, include_plotlyjs=True), encoding="utf-8")


def format_summary(table: pd.DataFrame) -> str:
    """The table as aligned text under a line naming the metric; seconds with one decimal."""
    from automl.report import format_table

    shown = table.astype(object).where(table.notna(), None)
    for column in ("time_to_best_s", "total_s"):
        shown[column] = [f"{v:.1f}" if v is not None and not pd.isna(v) else "-" for v in table[column]]
    head = (f"{table.attrs.get('metric', 'value')} ({table.attrs.get('direction', '?')}); "
            "times in seconds since each study's first trial started")
    return head + "\n" + format_table(shown)
