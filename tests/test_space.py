"""Search-space loading, validation messages and sampling."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from automl.errors import UsageError
from automl.space import load_space, parse_space, suggest
from tests.conftest import ROOT, TINY_SPACE


@pytest.mark.parametrize("path", sorted((ROOT / "search_spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_spaces_load(path: Path) -> None:
    space = load_space(path)
    assert space.epochs >= 1 and space.metric.startswith("val_")


def test_required_spaces_ship() -> None:
    names = {p.name for p in (ROOT / "search_spaces").glob("*.yaml")}
    assert {"digits_mlp.yaml", "mnist_mlp.yaml", "mnist_cnn.yaml", "fashion_mnist_cnn.yaml"} <= names


def _replace(old: str, new: str) -> str:
    assert old in TINY_SPACE, old
    return TINY_SPACE.replace(old, new)


BAD_SPACES = [
    # (yaml text, expected message fragments)
    (_replace("depth: {type: int, low: 1, high: 2}", "depth: {type: int, low: 3, high: 1}"),
     ["model.depth", "`low <= high` must hold", "low=3, high=1"]),
    (_replace("lr: {type: float, low: 3.0e-3", "lr: {type: float, low: 0.0"),
     ["optimizer.lr", "`low > 0` must hold for `log=True`"]),
    (_replace("width: {type: int, low: 16, high: 64, log: true}", "width: {type: int, low: 0, high: 64, log: true}"),
     ["model.width", "`low >= 1` must hold for `log=True`"]),
    (_replace("choices: [relu, tanh]", "choices: []"), ["model.activation.choices", "non-empty list"]),
    (_replace("choices: [relu, tanh]", "choices: [relu, swish]"),
     ["model.activation.choices[1]", "expected one of", "'swish'"]),
    (_replace("choices: [adam, sgd]", "choices: [adam, lbfgs]"), ["optimizer.name.choices[1]", "'lbfgs'"]),
    (_replace("loss: {name: cross_entropy}", "loss: {name: hinge}"), ["loss.name", "'hinge'"]),
    (_replace("budget: {epochs: 2, trials: 3}", "budget: {epochs: two, trials: 3}"),
     ["budget.epochs", "an integer >= 1", "'two'"]),
    (_replace("family: mlp", "family: mlp\n  widht: 3"), ["model.widht", "unknown key"]),
    (TINY_SPACE + "extra: 1\n", ["extra", "unknown key"]),
    (_replace("data: {dataset: digits}", "data: {dataset: imagenet}"), ["data.dataset", "'imagenet'"]),
    (_replace("{type: int, low: 1, high: 2}", "{type: integer, low: 1, high: 2}"),
     ["model.depth.type", "expected type int, float or categorical"]),
    (_replace("objective: {metric: val_accuracy}", "objective: {metric: val_accuracy, direction: minimize}"),
     ["objective.direction", "maximize"]),
    (_replace("objective: {metric: val_accuracy}", "objective: {metric: val_rmse}"),
     ["objective.metric", "'val_rmse'"]),
    (_replace("family: mlp", "family: cnn"), ["model.blocks", "missing"]),
    (_replace("sampler: {name: random}", "sampler: {name: tpe, options: {n_startup: 3}}"),
     ["sampler.options.n_startup", "unknown option"]),
    (_replace("pruner: {name: none}", "pruner: {name: percentile}"), ["pruner.options", "percentile"]),
    (_replace("training: {batch_size: 64}", "training: {batch_size: -1}"), ["training.batch_size", "an integer >= 1"]),
    (_replace("model:\n", "model:\n  dropout: {type: float, low: 0.1, high: 1.5}\n"),
     ["model.dropout.high", "[0, 1)"]),
    (_replace("optimizer:\n", "optimizer:\n  rmsprop: {alpha: 0.9}\n"),
     ["optimizer.rmsprop", "not among the optimizers"]),
    ("data: [1, 2\n", ["invalid YAML", "line"]),
    ("", ["empty"]),
    ("- a\n- b\n", ["expected a mapping"]),
    (_replace("data: {dataset: digits}", "data: {dataset: csv}"), ["data.task", "missing"]),
    (_replace("data: {dataset: digits}", "data: {dataset: wine}").replace("family: mlp", "family: cnn"),
     ["model.family", "image dataset"]),
    (_replace("budget: {epochs: 2, trials: 3}", "budget: {epochs: 2, trials: 3, goal: 97}"),
     ["budget.goal", "val_accuracy lies in [0.0, 1.0]", "97.0"]),
    (_replace("budget: {epochs: 2, trials: 3}", "budget: {epochs: 2, trials: 3, patience: -2}"),
     ["budget.patience", "an integer >= 1"]),
    (TINY_SPACE + "constraints: {max_parameters: 1.5e0}\n", ["constraints.max_parameters", "a whole number >= 1"]),
    (TINY_SPACE + "constraints: {max_latency_ms: fast}\n", ["constraints.max_latency_ms", "a number > 0"]),
    (TINY_SPACE + "constraints: [1]\n", ["constraints", "expected a mapping"]),
]


@pytest.mark.parametrize("text,fragments", BAD_SPACES, ids=[f[0] for _, f in BAD_SPACES])
def test_bad_space_names_file_key_and_problem(text: str, fragments: list[str]) -> None:
    with pytest.raises(UsageError) as info:
        parse_space(text, "bad.yaml")
    message = str(info.value)
    assert message.startswith("bad.yaml"), message
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_missing_file() -> None:
    with pytest.raises(UsageError, match="nope.yaml: search space file not found"):
        load_space("nope.yaml")


def test_fixed_values_and_ranges() -> None:
    space = parse_space(TINY_SPACE, "tiny.yaml")
    assert space.training["batch_size"].fixed == 64
    assert space.model["depth"].distribution == optuna.distributions.IntDistribution(1, 2)
    assert space.name == "tiny" and space.direction == "maximize"


def test_width_per_existing_layer_only() -> None:
    space = parse_space(TINY_SPACE, "tiny.yaml")
    trial = optuna.trial.FixedTrial({"depth": 1, "width_0": 32, "activation": "relu",
                                     "optimizer": "adam", "lr": 0.005})
    model, train = suggest(trial, space, (1, 8, 8), 10)
    assert model.widths == (32,)
    assert train.batch_size == 64 and train.optimizer == "adam"


def test_conditional_optimizer_parameters_exist_only_for_their_optimizer() -> None:
    text = _replace(
        "lr: {type: float",
        "sgd: {momentum: {type: float, low: 0.5, high: 0.9}, nesterov: {type: categorical, choices: [true, false]}}\n"
        "  adam: {beta1: {type: float, low: 0.8, high: 0.9}}\n  lr: {type: float",
    )
    space = parse_space(text, "cond.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen: dict[str, set[str]] = {"adam": set(), "sgd": set()}
    for _ in range(30):
        trial = study.ask()
        _, train = suggest(trial, space, (1, 8, 8), 10)
        seen[train.optimizer].update(trial.params)
        study.tell(trial, 0.0)
    assert "sgd.momentum" in seen["sgd"] and "adam.beta1" not in seen["sgd"]
    assert "adam.beta1" in seen["adam"] and "sgd.momentum" not in seen["adam"]


def test_cnn_space_samples_blocks_and_channels() -> None:
    space = load_space(ROOT / "search_spaces" / "mnist_cnn.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    model, _ = suggest(trial, space, (1, 28, 28), 10)
    assert model.family == "cnn"
    assert len(model.channels) == trial.params["blocks"]
    assert all(f"channels_{i}" in trial.params for i in range(len(model.channels)))


# --- the declarative schema: defaults, digest, round trip, YAML hardening, data sources ----------

from automl.space import Space, SpaceError  # noqa: E402

MINIMAL = "data: {dataset: digits}\nmodel: {family: mlp}\n"
BILLION_LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)


def test_minimal_space_gets_documented_defaults() -> None:
    space = Space.from_yaml(MINIMAL)
    assert (space.metric, space.direction, space.epochs, space.trials) == ("val_accuracy", "maximize", 10, 20)
    assert (space.sampler, space.pruner, space.pruner_options) == ("tpe", "median", {"n_warmup_steps": 2})
    assert space.optimizer.fixed == "adam" and space.optimizer_common["lr"].fixed == 1e-3
    assert space.loss.fixed == "cross_entropy" and space.training["batch_size"].fixed == 128
    assert space.model["depth"].fixed == 2 and space.model["width"].fixed == 128
    model, train = suggest(optuna.trial.FixedTrial({}), space, (1, 8, 8), 10)
    assert model.widths == (128, 128) and train.optimizer == "adam" and train.epochs == 10


def test_budget_rules_and_constraints_default_to_none() -> None:
    space = Space.from_yaml(MINIMAL)
    assert (space.goal, space.patience, space.max_parameters, space.max_latency_ms) == (None, None, None, None)
    assert "constraints" not in space.to_dict()  # the digest of spaces written before the section existed
    text = MINIMAL + "budget: {goal: 0.97, patience: 5}\nconstraints: {max_parameters: 1e6, max_latency_ms: 2}\n"
    space = Space.from_yaml(text)
    assert (space.goal, space.patience, space.max_parameters, space.max_latency_ms) == (0.97, 5, 1_000_000, 2.0)
    assert Space.from_yaml(space.to_yaml()).digest == space.digest


def test_regression_defaults_follow_the_task() -> None:
    text = "data: {dataset: csv, path: d.csv, target: y, task: regression}\nmodel: {family: mlp}\n"
    space = Space.from_yaml(text)
    assert (space.metric, space.direction, space.loss.fixed) == ("val_rmse", "minimize", "mse")


def test_digest_ignores_comments_and_layout_but_not_content() -> None:
    base = Space.from_yaml(TINY_SPACE)
    edited = "# a comment\n" + TINY_SPACE.replace("budget: {epochs: 2, trials: 3}",
                                                  "budget:   # the budget\n  epochs: 2\n  trials: 3\n\n")
    assert Space.from_yaml(edited).digest == base.digest
    assert Space.from_yaml(TINY_SPACE.replace("epochs: 2", "epochs: 3")).digest != base.digest
    explicit = MINIMAL + "budget: {epochs: 10}\noptimizer: {name: adam, lr: 1.0e-3}\n"
    assert Space.from_yaml(explicit).digest == Space.from_yaml(MINIMAL).digest  # defaults are content


@pytest.mark.parametrize("path", sorted((ROOT / "search_spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_to_yaml_round_trips(path: Path) -> None:
    space = Space.from_yaml(path)
    again = Space.from_yaml(space.to_yaml())
    assert again == space and again.digest == space.digest
    assert Space.from_dict(space.to_dict()) == space


def test_key_given_twice_names_both_lines() -> None:
    text = TINY_SPACE.replace("  activation:", "  depth: 3\n  activation:")
    with pytest.raises(SpaceError) as info:
        parse_space(text, "tiny.yaml")
    assert str(info.value) == "tiny.yaml: model.depth: key given twice (lines 8 and 10)"


def test_alias_bomb_and_recursive_alias_are_refused() -> None:
    assert len(BILLION_LAUGHS) < 500
    with pytest.raises(SpaceError, match="expands to more than"):
        parse_space(BILLION_LAUGHS, "bomb.yaml")
    with pytest.raises(SpaceError, match="refers to a value that contains it"):
        parse_space("a: &a [1, *a]\n", "loop.yaml")


def test_messages_show_only_an_excerpt_of_large_values() -> None:
    huge = "x" * 10_000
    for text in (MINIMAL.replace("digits", huge), MINIMAL + f"{huge}: 1\n",
                 MINIMAL.replace("family: mlp", f"family: mlp, dropout: [{', '.join(['1'] * 3000)}]")):
        with pytest.raises(SpaceError) as info:
            parse_space(text, "big.yaml")
        assert len(str(info.value)) < 300 and "\n" not in str(info.value), str(info.value)[:400]


def test_new_data_sources(tmp_path: Path) -> None:
    (tmp_path / "spaces").mkdir()
    path = tmp_path / "spaces" / "images.yaml"
    path.write_text("data: {dataset: image_folder, path: ../pictures}\nmodel: {family: cnn, blocks: 1, channels: 4}\n")
    space = load_space(path)
    assert space.data_path == str(tmp_path / "pictures") and "../pictures" in space.text
    assert (space.task, space.image_size, space.color) == ("classification", (32, 32), "rgb")
    grey = Space.from_yaml("data: {dataset: image_folder, path: /p, image_size: [28, 24], color: grey}\n"
                           "model: {family: mlp}\n")
    assert (grey.image_size, grey.color) == ((28, 24), "grey")
    npz = Space.from_yaml("data: {dataset: npz, path: /a.npz}\nmodel: {family: cnn, blocks: 1, channels: 4}\n")
    assert npz.task == "classification" and npz.target is None
    arrays = Space.from_dict({"data": {"dataset": "arrays", "task": "regression"}, "model": {"family": "mlp"}})
    assert arrays.task == "regression" and arrays.data_path is None and arrays.metric == "val_rmse"
    parquet = Space.from_yaml("data: {dataset: parquet, path: /t.parquet, target: y, task: classification}\n"
                              "model: {family: mlp}\n")
    assert parquet.data_path == "/t.parquet" and parquet.target == "y"


@pytest.mark.parametrize("data,fragments", [
    ("{dataset: image_folder}", ["data.path", "missing"]),
    ("{dataset: parquet, path: t.parquet, task: regression}", ["data.target", "missing"]),
    ("{dataset: arrays}", ["data.task", "missing"]),
    ("{dataset: digits, path: x.csv}", ["data.path", "only for data.dataset: csv, parquet, image_folder, npz"]),
    ("{dataset: image_folder, path: p, image_size: [0, 3]}", ["data.image_size", "[height, width]"]),
    ("{dataset: image_folder, path: p, color: blue}", ["data.color", "grey, rgb", "'blue'"]),
    ("{dataset: csv, path: t.csv, target: y, task: classification, color: rgb}", ["data.color", "only for"]),
])
def test_bad_data_sources(data: str, fragments: list[str]) -> None:
    with pytest.raises(SpaceError) as info:
        parse_space(f"data: {data}\nmodel: {{family: mlp}}\n", "d.yaml")
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


def test_model_needs_a_family_or_a_builder() -> None:
    with pytest.raises(SpaceError, match=r"m.yaml: model.family: missing; expected one of mlp, cnn"):
        parse_space("data: {dataset: digits}\nmodel: {depth: 2}\n", "m.yaml")
    with pytest.raises(SpaceError, match=r"m.yaml: model: missing section"):
        parse_space("data: {dataset: digits}\n", "m.yaml")


def test_with_algorithms_keeps_the_digest_and_takes_registry_defaults() -> None:
    space = Space.from_yaml(TINY_SPACE)
    changed = space.with_algorithms("tpe", "median")
    assert (changed.sampler, changed.sampler_options) == ("tpe", {})
    assert (changed.pruner, changed.pruner_options) == ("median", {"n_warmup_steps": 2})
    assert changed.digest == space.digest and changed.text == space.text
    assert space.with_algorithms(None, None) is space
    with pytest.raises(SpaceError, match="pruner.options"):
        space.with_algorithms(None, "percentile")


def test_list_choices_are_sampled_as_lists(tmp_path: Path) -> None:
    space = Space.from_yaml(ROOT / "examples" / "tutorial_search.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    trial = study.ask()
    model, _ = suggest(trial, space, (1, 8, 8), 10)
    sizes = model.builder_params["hidden_sizes"]
    assert isinstance(sizes, list) and all(isinstance(s, int) for s in sizes)
    assert "hidden_sizes" in trial.params
