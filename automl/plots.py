"""Study plots drawn by Optuna's visualisation module: PNG files (matplotlib) of the history, the
learning curves, the importances, parallel coordinates and a contour, and one interactive HTML page
(plotly, self-contained so it opens offline and inside the MLflow UI) with those plus slices and a
timeline. A multi-objective study adds its Pareto front (PNG and HTML); the other plots show its
first metric."""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from automl.pruning import curve_of
from automl.selection import SELECT, champion_trial, metric_names

logger = logging.getLogger(__name__)

# name: (plotly function, matplotlib function or None for HTML only, title)
PLOTS: dict[str, tuple[Callable[..., Any], Callable[..., Any] | None, str]] = {}
TOP_PARAMS = 6  # parameters shown in parallel coordinates and slices: the most important ones


def _register() -> None:
    import optuna.visualization as vp
    import optuna.visualization.matplotlib as vm

    PLOTS.update({
        "optimization_history": (vp.plot_optimization_history, vm.plot_optimization_history,
                                 "Optimisation history"),
        "learning_curves": (vp.plot_intermediate_values, vm.plot_intermediate_values,
                            "Learning curves (validation score per epoch; pruned trials dashed)"),
        "param_importances": (vp.plot_param_importances, vm.plot_param_importances,
                              "Parameter importances (PED-ANOVA)"),
        "parallel_coordinate": (vp.plot_parallel_coordinate, vm.plot_parallel_coordinate,
                                "Parallel coordinates of the most important parameters"),
        "contour": (vp.plot_contour, vm.plot_contour, "Contour of the two most important parameters"),
        "slice": (vp.plot_slice, None, "Slice plot of the most important parameters"),
        "timeline": (vp.plot_timeline, None, "Timeline of trials by state"),
        "pareto_front": (vp.plot_pareto_front, vm.plot_pareto_front,
                         "Pareto front of the complete trials (the star: the champion)"),
    })
# plots that take `target` (a multi-objective study must name the value to draw)
TARGETED = ("optimization_history", "param_importances", "parallel_coordinate", "contour", "slice")


def _evaluator() -> Any:
    # PED-ANOVA: milliseconds, where the default fANOVA forest takes seconds per call
    return optuna.importance.PedAnovaImportanceEvaluator()


def _target(study: optuna.Study) -> dict[str, Any]:
    """`target`/`target_name` for a multi-objective study: its first metric; nothing otherwise."""
    if len(study.directions) == 1:
        return {}
    return {"target": lambda t: t.values[0], "target_name": metric_names(study)[0]}


def _top_params(study: optuna.Study) -> list[str] | None:
    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < 2:
        return None  # nothing to rank yet (Optuna would log a warning per parameter)
    target = {k: v for k, v in _target(study).items() if k == "target"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "few trials" notes: the plot itself says as much
            return list(optuna.importance.get_param_importances(study, evaluator=_evaluator(),
                                                                **target))[:TOP_PARAMS]
    except (RuntimeError, ValueError, ZeroDivisionError):
        return None


def _mark_pruned_plotly(figure: Any, pruned: set[int]) -> None:
    for trace in figure.data:
        number = _trial_number(getattr(trace, "name", ""))
        if number in pruned:
            trace.line.dash = "dash"
            trace.name = f"Trial{number} (pruned)"


def _mark_pruned_matplotlib(axes: Any, pruned: set[int]) -> None:
    for line in axes.get_lines():
        number = _trial_number(line.get_label())
        if number in pruned:
            line.set_linestyle("--")
            line.set_label(f"Trial{number} (pruned)")
    if axes.get_legend() is not None:  # redraw it with the new labels
        axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0, fontsize="small")


def _label_epochs(figure: Any, axes: Any, metric: str) -> None:
    """Learning curves: x is the epoch, y the validation metric (not Optuna's "Step" and
    "Intermediate Value")."""
    from matplotlib.ticker import MaxNLocator

    figure.update_layout(xaxis_title="epoch", yaxis_title=metric)
    for ax in _all_axes(axes):
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _mark_champion(study: optuna.Study, figure: Any, axes: Any) -> None:
    """A star on the champion of a two-objective Pareto front (automl.selection's rule); the PNG's
    legend says "Pareto front" and "dominated" (Optuna's "Best Trial" and "Trial")."""
    ax = _all_axes(axes)[0]
    names = {"Best Trial": "Pareto front", "Trial": "dominated"}
    for collection in ax.collections:
        collection.set_label(names.get(collection.get_label(), collection.get_label()))
    if len(study.directions) == 2 and study.best_trials:
        number = champion_trial(study).number
        x, y = study.get_trials(deepcopy=False)[number].values
        label = f"champion (trial {number})"
        figure.add_scatter(x=[x], y=[y], mode="markers", name=label,
                           marker={"symbol": "star", "size": 18, "color": "gold", "line": {"width": 1}})
        ax.scatter([x], [y], marker="*", s=300, color="gold", edgecolors="black", zorder=5, label=label)
    ax.legend()


def _trial_number(label: str) -> int | None:
    digits = "".join(ch for ch in label if ch.isdigit())
    return int(digits) if digits and label.lower().startswith("trial") else None


def write_plots(study: optuna.Study, folder: Path) -> list[Path]:
    """Write `<name>.png` per plot and `study_plots.html` with all of them; skip what cannot be
    drawn yet (for example importances with a single complete trial). Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not PLOTS:
        _register()
    folder.mkdir(parents=True, exist_ok=True)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return []
    pruned = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))}
    top = _top_params(study)
    multi, names = len(study.directions) > 1, metric_names(study)
    written: list[Path] = []
    figures: list[tuple[str, Any]] = []
    for name, (plotly_fn, matplotlib_fn, title) in PLOTS.items():
        kwargs: dict[str, Any] = {}
        if name == "contour":
            if not top or len(top) < 2:
                continue
            kwargs["params"] = top[:2]
        if name in ("parallel_coordinate", "slice") and top:
            kwargs["params"] = top
        if name == "param_importances":
            if len(complete) < 2 or not top:
                continue
            kwargs["evaluator"] = _evaluator()
        if name == "pareto_front":
            if not multi:
                continue
            kwargs["target_names"] = names
        if name in TARGETED:
            kwargs.update(_target(study))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                figure = plotly_fn(study, **kwargs)
                axes = matplotlib_fn(study, **kwargs) if matplotlib_fn else None
        except (ValueError, RuntimeError, TypeError, ZeroDivisionError) as e:
            logger.warning("plot %s skipped: %s", name, e)
            continue
        if name == "learning_curves":
            _mark_pruned_plotly(figure, pruned)
            for ax in _all_axes(axes):
                _mark_pruned_matplotlib(ax, pruned)
            _label_epochs(figure, axes, names[0] if study.metric_names else "validation score")
        if name == "pareto_front":
            _mark_champion(study, figure, axes)
        figure.update_layout(title=title)
        figures.append((name, figure))
        if axes is None:
            continue
        path = folder / f"{name}.png"
        first = _all_axes(axes)[0]
        first.figure.set_size_inches(10, 6)
        first.figure.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(first.figure)
        written.append(path)
    if figures:
        page = folder / "study_plots.html"
        parts = [f"<html><head><meta charset='utf-8'><title>{study.study_name}</title></head><body>"
                 f"<h1>Study {study.study_name}</h1>"]
        for i, (name, figure) in enumerate(figures):
            parts.append(figure.to_html(full_html=False, include_plotlyjs=(i == 0), div_id=name))
        parts.append("</body></html>")
        page.write_text("\n".join(parts), encoding="utf-8")
        written.append(page)
    return written


def _all_axes(axes: Any) -> list[Any]:
    """Optuna's matplotlib plots return one Axes or an array of them."""
    try:
        return [ax for ax in axes.flatten()]
    except AttributeError:
        return [axes]


def plot_copy(study: optuna.Study) -> optuna.Study:
    """An in-memory copy of the study's finished trials for drawing: its metric names and champion
    rule, and in a multi-objective study each trial's learning curve as intermediate values (the
    search keeps it in an attribute there, automl.pruning)."""
    finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    copy = optuna.create_study(study_name=study.study_name, directions=study.directions)
    if study.metric_names:
        copy.set_metric_names(list(study.metric_names))
    if SELECT in study.user_attrs:  # the champion rule, to mark the champion on the Pareto front
        copy.set_user_attr(SELECT, study.user_attrs[SELECT])
    trials = study.get_trials(deepcopy=False, states=finished)
    if len(study.directions) > 1:
        trials = [optuna.trial.FrozenTrial(
            number=t.number, state=t.state, value=None, values=t.values, datetime_start=t.datetime_start,
            datetime_complete=t.datetime_complete, params=t.params, distributions=t.distributions,
            user_attrs=t.user_attrs, system_attrs=t.system_attrs, intermediate_values=curve_of(t),
            trial_id=t._trial_id) for t in trials]
    copy.add_trials(trials)
    return copy


class PlotJob:
    """Draws a study's plots in a child process, forked when the job is made: made as the search
    starts, the child imports matplotlib, plotly and Optuna's plotting and importance modules
    (seconds: scikit-learn comes with them) while the trials run, then waits for `draw`. The child
    gets an in-memory copy of the finished trials, never the parent's database connections, and
    leaves Ctrl-C to the parent. Drawn inline where fork does not exist."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="automl-plots-"))
        self.process: Any = None
        self.connection: Any = None
        self.drawing = False  # a study was given to `draw`
        if "fork" in multiprocessing.get_all_start_methods():
            context = multiprocessing.get_context("fork")
            self.connection, child_end = context.Pipe()
            try:
                self.process = context.Process(target=_serve, args=(child_end, self.folder, os.getpid()),
                                               daemon=True, name="automl-plots")
                self.process.start()
            except (OSError, AssertionError, ValueError) as e:  # e.g. inside a daemonic process
                logger.info("plots drawn in this process: %s", e)
                self.process = None
                self.connection.close()
            child_end.close()

    def draw(self, study: optuna.Study) -> None:
        """Draw the plots of the study's finished trials (in the child, when there is one)."""
        snapshot = plot_copy(study)
        self.drawing = True
        if self.process is None:
            write_plots(snapshot, self.folder)
            return
        try:
            self.connection.send(snapshot)
        except (OSError, ValueError) as e:  # the child is gone
            logger.warning("plots not drawn: the plotting process ended early (%s)", e)

    def result(self, timeout: float = 300) -> Path | None:
        """The folder of plot files once drawn (None if none could be drawn, or none asked for)."""
        if not self.drawing:
            return None
        if self.process is not None:
            self.process.join(timeout)
            if self.process.is_alive():
                self.process.kill()
                logger.warning("plots not drawn within %s s", timeout)
        return self.folder if self.folder.is_dir() and any(self.folder.iterdir()) else None

    def cleanup(self) -> None:
        if self.connection is not None:
            self.connection.close()
        if self.process is not None and self.process.is_alive():
            self.process.kill()
            self.process.join()
        shutil.rmtree(self.folder, ignore_errors=True)


def _serve(connection: Any, folder: Path, parent: int) -> None:
    """The plotting child: import and warm up the plotting libraries, wait for the study's copy
    (ending when the parent does), draw it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent ends us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the search's handler: just end
    gc.enable()  # forked while the search's start-up had the collector paused
    with contextlib.suppress(Exception):  # only a head start: drawing imports them again
        _warm_up()
    while not connection.poll(1.0):
        if os.getppid() != parent:
            return
    try:
        study = connection.recv()
    except (EOFError, OSError):
        return
    write_plots(study, folder)


def _warm_up() -> None:
    """Imports and first-use costs of the plots (fonts, importances), paid before they are needed."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.importance  # noqa: F401
    import plotly.io  # noqa: F401

    if not PLOTS:
        _register()
    figure, axes = plt.subplots()
    axes.plot([0, 1], [0, 1], label="warm-up")
    axes.legend()
    figure.savefig(io.BytesIO(), format="png")
    plt.close(figure)
