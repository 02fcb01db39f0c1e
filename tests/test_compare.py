"""`automl compare`: two real tiny searches compared in one table and one plot; best-so-far curves
by trial number and by wall time; refusals (unknown study, other metric, bad output) create nothing."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState
from PIL import Image

from automl.compare import best_so_far, compare_studies
from automl.keys import METRIC, NOT_RUN
from tests.conftest import TINY_SPACE, cli, make_stores


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory, mlflow_template: Path):
    """Two tiny digits studies on one pair of stores: s1 (3 trials, seed 0) and s2 (4 trials, seed 1)."""
    folder = tmp_path_factory.mktemp("compare")
    stores = make_stores(folder, mlflow_template)
    (folder / "tiny.yaml").write_text(TINY_SPACE)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        for name, trials, seed in (("s1", 3, 0), ("s2", 4, 1)):
            assert cli("search", "--space", folder / "tiny.yaml", "--study", name, "--trials", trials,
                       "--seed", seed, "--quiet", *stores.flags()) == 0
    return stores


def _expected(storage_url: str, name: str) -> dict:
    """The table row of a study, computed from Optuna's own records."""
    study = optuna.load_study(study_name=name, storage=storage_url)
    trials = study.get_trials()
    origin = min(t.datetime_start for t in trials)
    return {"study": name, "trials": len(trials), "complete": len(study.get_trials(states=(TrialState.COMPLETE,))),
            "best_value": study.best_value, "best_trial": study.best_trial.number,
            "total_s": max(t.datetime_complete for t in trials).timestamp() - origin.timestamp()}


def test_two_studies_one_table_one_plot(searched, tmp_path: Path, capsys) -> None:
    png, html = tmp_path / "compare.png", tmp_path / "compare.html"
    capsys.readouterr()
    assert cli("compare", "s1", "s2", "--output", png, "--output", html, *searched.flags()) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("val_accuracy (maximize)")
    assert out[1].split() == ["study", "trials", "complete", "pruned", "failed", "best_value", "best_trial",
                              "time_to_best_s", "total_s"]
    for line, name in zip(out[2:], ("s1", "s2"), strict=True):
        expected = _expected(searched.storage_url, name)
        cells = line.split()
        assert cells[:3] == [name, str(expected["trials"]), str(expected["complete"])]
        assert cells[5] == f"{expected['best_value']:.4f}" and cells[6] == str(expected["best_trial"])
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] > 800 and image.size[1] > 300
    page = html.read_text()
    assert "Plotly.newPlot" in page and "by wall time" in page and "s1" in page and "s2" in page


def test_json_matches_optunas_records(searched, capsys) -> None:
    capsys.readouterr()
    assert cli("compare", "s2", "s1", "--json", *searched.flags()) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["study"] for r in rows] == ["s2", "s1"]
    for row in rows:
        expected = _expected(searched.storage_url, row["study"])
        assert row["trials"] == expected["trials"] and row["complete"] == expected["complete"]
        assert row["pruned"] == 0 and row["failed"] == 0
        assert row["best_value"] == expected["best_value"] and row["best_trial"] == expected["best_trial"]
        assert row["total_s"] == pytest.approx(expected["total_s"], abs=1e-3)
        assert 0 < row["time_to_best_s"] <= row["total_s"]


def test_the_python_function_returns_the_table_and_curves(searched, tmp_path: Path) -> None:
    table = compare_studies(["s1", "s2"], storage=searched.storage_url, output=tmp_path / "c.svg")
    assert list(table["study"]) == ["s1", "s2"] and table.attrs["metric"] == "val_accuracy"
    assert (tmp_path / "c.svg").read_text().lstrip().startswith("<?xml")
    curve = best_so_far(optuna.load_study(study_name="s2", storage=searched.storage_url))
    assert list(curve["number"]) == [0, 1, 2, 3]
    assert curve["best_by_number"].is_monotonic_increasing
    assert curve["best_by_number"].iloc[-1] == table["best_value"][1]


BAD = [
    (["s1", "nope"], "STUDY: no study named 'nope' in", "(studies there: s1, s2)"),
    (["s1", "s1"], "STUDY: 's1' is given twice", ""),
    (["s1", "../x"], "STUDY: invalid study name '../x'", ""),
    (["s1", "--output", "missing/c.png"], "--output: folder", "does not exist"),
    (["s1", "--output", "c.gif"], "--output: c.gif: expected a file ending in .png, .svg, .pdf, .html", ""),
    (["s1", "--storage", "sqlite:///none.db"], "--storage: no Optuna storage at sqlite:///none.db", ""),
]


@pytest.mark.parametrize("args,message,tail", BAD, ids=[b[1] for b in BAD])
def test_bad_input_is_one_line_and_creates_nothing(searched, tmp_path: Path, monkeypatch, capsys,
                                                   args: list[str], message: str, tail: str) -> None:
    monkeypatch.chdir(tmp_path)
    flags = ["--storage", searched.storage_url] if "--storage" not in args else []
    before = set(searched.folder.iterdir()), set(tmp_path.iterdir())
    capsys.readouterr()
    assert cli("compare", *args, *flags) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("automl: error: ") and message in err and tail in err, err
    assert (set(searched.folder.iterdir()), set(tmp_path.iterdir())) == before


def test_studies_of_another_metric_are_refused(searched, capsys) -> None:
    other = optuna.create_study(study_name="by_loss", storage=searched.storage_url, direction="minimize")
    other.set_user_attr(METRIC, "val_loss")
    other.add_trial(optuna.trial.create_trial(value=0.3))
    capsys.readouterr()
    assert cli("compare", "s1", "by_loss", *searched.flags()) == 2
    err = capsys.readouterr().err
    assert "do not share their metric and direction (s1 maximizes val_accuracy, by_loss minimizes val_loss)" in err
    optuna.delete_study(study_name="by_loss", storage=searched.storage_url)


def _trial(number: int, state: TrialState, value: float | None, start: float, end: float, **attrs) -> FrozenTrial:
    origin = datetime.datetime(2025, 1, 1, 12, 0, 0)
    return FrozenTrial(number=number, trial_id=number, state=state, value=value,
                       datetime_start=origin + datetime.timedelta(seconds=start),
                       datetime_complete=origin + datetime.timedelta(seconds=end),
                       params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)}, user_attrs=attrs,
                       system_attrs={}, intermediate_values={})


def test_parallel_trials_order_by_number_and_by_time_differ(tmp_path: Path) -> None:
    """Two workers: trial 1 finishes before trial 0; minimize; pruned, failed and never-run trials
    count apart, and only complete trials make the best."""
    study = optuna.create_study(study_name="par", storage=f"sqlite:///{tmp_path / 'o.db'}", direction="minimize")
    for trial in (_trial(0, TrialState.COMPLETE, 0.5, 0, 30), _trial(1, TrialState.COMPLETE, 0.8, 1, 10),
                  _trial(2, TrialState.PRUNED, 0.1, 10, 12), _trial(3, TrialState.COMPLETE, 0.4, 12, 40),
                  _trial(4, TrialState.FAIL, None, 30, 31),
                  _trial(5, TrialState.FAIL, None, 40, 40, **{NOT_RUN: "goal"})):
        study.add_trial(trial)
    curve = best_so_far(study)
    assert list(curve["number"]) == [0, 1, 3] and list(curve["seconds"]) == [30, 10, 40]
    assert list(curve["best_by_number"]) == [0.5, 0.5, 0.4]
    assert list(curve["best_by_time"]) == [0.5, 0.8, 0.4]  # at 10 s only trial 1 had finished
    row = compare_studies(["par"], storage=f"sqlite:///{tmp_path / 'o.db'}").iloc[0]
    assert (row["complete"], row["pruned"], row["failed"], row["trials"]) == (3, 1, 1, 6)
    assert (row["best_value"], row["best_trial"], row["time_to_best_s"], row["total_s"]) == (0.4, 3, 40.0, 40.0)


def test_curves_end_at_the_last_trial_that_ran_not_at_the_queue() -> None:
    """A search stopped by its timeout leaves queued trials; the lines end at the last trial run."""
    from automl.compare import _extended, _last_started, best_so_far, summary_row

    study = optuna.create_study(direction="maximize")
    for value in (0.5, 0.7, 0.6):
        study.optimize(lambda trial, v=value: v + 0 * trial.suggest_float("x", 0, 1), n_trials=1)
    for _ in range(5):
        study.enqueue_trial({"x": 0.5})
    assert len(study.trials) == 8 and _last_started(study) == 2
    curve = best_so_far(study)
    extended = _extended(curve, summary_row(study, curve), _last_started(study))
    assert extended["number"].tolist() == [0, 1, 2, 2]
    assert extended["best_by_number"].iloc[-1] == 0.7
