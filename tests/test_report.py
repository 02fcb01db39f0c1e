"""The trials table: best first, and its first row is the trial the champion comes from."""

from __future__ import annotations

import optuna
from optuna.distributions import FloatDistribution

from automl.keys import FINAL_METRICS
from automl.report import format_table, select, trials_table


def _study() -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for value, val_loss in ((0.9, 0.5), (0.99, 0.4), (0.99, 0.1), (0.5, 1.0)):
        study.add_trial(optuna.trial.create_trial(
            params={"lr": 0.01}, distributions={"lr": FloatDistribution(1e-4, 1.0, log=True)}, value=value,
            user_attrs={FINAL_METRICS: {"val_loss": val_loss}}))
    return study


def test_equal_scores_are_listed_by_number_so_the_first_row_is_optunas_best_trial() -> None:
    study = _study()
    table = trials_table(study)
    assert list(table["number"]) == [1, 2, 0, 3]
    assert table.iloc[0]["number"] == study.best_trial.number
    assert list(table["val_loss"]) == [0.4, 0.1, 0.5, 1.0]


def test_columns_top_and_metric_name() -> None:
    table = trials_table(_study())
    shown = select(table, "val_accuracy", 2, "number,val_accuracy,lr", all_columns=False)
    assert list(shown.columns) == ["number", "value", "param.lr"] and len(shown) == 2
    text = format_table(shown, "val_accuracy")
    assert text.splitlines()[0].split() == ["number", "val_accuracy", "param.lr"]
    assert "0.9900" in text and "0.0100" in text


def test_an_unknown_column_is_one_clear_error() -> None:
    import pytest

    from automl.errors import UsageError

    with pytest.raises(UsageError, match="--columns: unknown column 'val_acc'"):
        select(trials_table(_study()), "val_accuracy", None, "number,val_acc", all_columns=False)
