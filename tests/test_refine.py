"""`automl refine`: a narrower space around a study's best trials, with a comment per changed range;
its rules on a study whose score depends on the learning rate only; refusals create nothing; the
refined space of a real search searches."""

from __future__ import annotations

import math
import random
from pathlib import Path

import optuna
import pytest

import automl
from automl import record
from automl.refine import key_of, narrow, refine_space
from automl.space import suggest
from automl.storage import open_storage
from tests.conftest import ROOT, TINY_SPACE, cli, make_stores

SPACE = """\
data: {dataset: digits}
budget: {epochs: 2, trials: 40}
sampler: {name: random}
pruner: {name: none}
model:
  family: mlp
  depth: {type: int, low: 1, high: 3}
  width: {type: int, low: 16, high: 256, log: true}
  activation: {type: categorical, choices: [relu, tanh, gelu]}
  dropout: {type: float, low: 0.0, high: 0.5}
optimizer:
  name: {type: categorical, choices: [adam, sgd]}
  lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
  sgd: {momentum: {type: float, low: 0.5, high: 0.99}}
training:
  batch_size: {type: categorical, choices: [32, 64, 128]}
"""


def _lr_study(folder: Path, trials: int = 40) -> tuple[str, Path]:
    """A study of SPACE on a real SQLite storage whose trials are sampled by `suggest` (the search's
    own parameter names) and scored by the learning rate alone (best near 3e-3), no training."""
    path = folder / "space.yaml"
    path.write_text(SPACE)
    url = f"sqlite:///{folder / 'optuna.db'}"
    storage = open_storage(url)
    study, _ = record.create_or_load("lr", storage, automl.Space.from_yaml(path), 0, {})
    study = optuna.load_study(study_name="lr", storage=storage, sampler=optuna.samplers.RandomSampler(seed=3))
    noise = random.Random(0)
    for _ in range(trials):
        trial = study.ask()
        _, train = suggest(trial, record.space_of(study), (64,), 10)
        study.tell(trial, 1.0 - abs(math.log10(train.lr) + 2.5) / 3 + noise.uniform(0, 1e-3))
    return url, path


def _ranges(doc: dict, path: tuple = ()) -> dict[tuple, object]:
    out = {}
    for key, value in doc.items():
        if isinstance(value, dict) and "type" not in value:
            out.update(_ranges(value, (*path, key)))
        else:
            out[(*path, key)] = value
    return out


def test_narrows_the_important_range_around_the_top_trials(tmp_path: Path) -> None:
    url, source = _lr_study(tmp_path)
    out = tmp_path / "narrower.yaml"
    result = refine_space("lr", out, storage=url)
    text = out.read_text()
    refined = automl.Space.from_yaml(out)
    assert refined == result.space
    study = optuna.load_study(study_name="lr", storage=url)
    ranked = sorted(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)), key=lambda t: (-t.value, t.number))
    top = ranked[:max(3, math.ceil(0.2 * len(ranked)))]
    assert result.top == len(top) == 8 and result.complete == 40

    lr = refined.to_dict()["optimizer"]["lr"]
    lrs = [t.params["lr"] for t in top]
    assert 1e-4 <= lr["low"] <= min(lrs) and max(lrs) <= lr["high"] <= 1e-1 and lr["log"] is True
    assert math.log10(lr["high"] / lr["low"]) < 1.5  # from three decades to less than half of that
    lines = text.splitlines()
    at = lines.index(next(line for line in lines if line.startswith("  lr: ")))
    assert lines[at - 1].startswith("  # optimizer.lr: 0.0001..0.1 (log) -> ")
    assert f"the top {len(top)} trials span" in lines[at - 1] and "importance 0." in lines[at - 1]
    assert result.importances is not None and max(result.importances, key=result.importances.get) == "optimizer.lr"

    # every change has its comment; unimportant numeric ranges are kept; everything stays inside the original
    original = _ranges(automl.Space.from_yaml(source).to_dict())
    now = _ranges(refined.to_dict())
    changed = {c.key for c in result.changes}
    assert sum(line.lstrip().startswith("# ") and ": " in line and " -> " in line for line in lines) == len(changed)
    threshold = 0.5 / len(result.importances)
    for key, before in original.items():
        name = ".".join(key)
        if key not in now:  # options of an optimizer no longer among the choices
            chosen = now[("optimizer", "name")]
            assert key[0] == "optimizer" and key[1] not in (chosen["choices"] if isinstance(chosen, dict) else [chosen])
            continue
        after = now[key]
        assert (after != before) == (name in changed), name
        if not isinstance(before, dict) or after == before:
            continue
        if before["type"] == "categorical":
            choices = after["choices"] if isinstance(after, dict) else [after]
            assert set(choices) < set(before["choices"])
        else:
            assert result.importances.get(name, 0.0) >= threshold, name
            low, high = (after["low"], after["high"]) if isinstance(after, dict) else (after, after)
            assert before["low"] <= low <= high <= before["high"], name


def test_narrowing_rules() -> None:
    lr = {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}
    assert narrow(lr, [1e-3, 1e-2]) == (7.9e-4, 0.013)  # a tenth of the span on each side, in log space
    assert narrow(lr, [1e-4, 2e-4])[0] == 1e-4  # clipped to the original range
    assert narrow({"type": "int", "low": 1, "high": 3, "log": False, "step": 1}, [2, 2]) == (2, 2)
    assert narrow({"type": "int", "low": 16, "high": 256, "log": True, "step": 1}, [32, 64]) == (30, 68)
    assert narrow({"type": "float", "low": 0.0, "high": 1.0, "log": False, "step": 0.1}, [0.3, 0.5]) == (0.3, 0.5)
    assert narrow({"type": "float", "low": 0.0, "high": 0.5, "log": False}, [0.1, 0.2]) == (0.09, 0.21)


def test_every_sampled_parameter_maps_to_its_range() -> None:
    space = automl.Space.from_yaml(ROOT / "search_spaces" / "digits_mlp.yaml")
    doc = space.to_dict()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    names = set()
    for _ in range(40):
        trial = study.ask()
        suggest(trial, space, (64,), 10)
        names |= set(trial.params)
    assert {"width_0", "sgd.momentum", "label_smoothing", "batch_size"} <= names
    for name in names:
        path = key_of(name, doc)
        assert path is not None, name
        node = doc
        for part in path:
            node = node[part]
        assert isinstance(node, dict) and node["type"] in ("int", "float", "categorical"), name


def test_few_trials_fall_back_without_importances(tmp_path: Path) -> None:
    url, _ = _lr_study(tmp_path, trials=3)
    result = refine_space("lr", storage=url)
    assert result.importances is None and result.top == 3
    assert "# Importances could not be computed" in result.text
    assert all("importance unknown" in c.why for c in result.changes)
    assert automl.Space.from_yaml(result.text) == result.space


@pytest.fixture
def lr_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    monkeypatch.chdir(tmp_path)
    url, source = _lr_study(tmp_path, trials=6)
    optuna.create_study(study_name="plain", storage=url).add_trial(optuna.trial.create_trial(value=1.0))
    record.create_or_load("empty", open_storage(url), automl.Space.from_yaml(source), 0, {})
    (tmp_path / "taken.yaml").write_text("keep me\n")
    return url, source


BAD = [
    (["--study", "nope", "--output", "n.yaml"], "--study: no study named 'nope' in",
     "(studies there: empty, lr, plain)"),
    (["--study", "empty", "--output", "n.yaml"], "--study: study 'empty' has no complete trial to refine around", ""),
    (["--study", "plain", "--output", "n.yaml"], "study 'plain' was not created by automl", ""),
    (["--study", "lr", "--output", "missing/n.yaml"], "--output: folder", "missing does not exist"),
    (["--study", "lr", "--output", "taken.yaml"], "--output: taken.yaml exists; pass --force to replace it", ""),
    (["--study", "lr", "--output", "space.yaml"], "--output: space.yaml is the space file study 'lr' was made from; "
                                                  "pass --force", ""),
    (["--study", "lr", "--output", "n.yaml", "--top", "0"], "--top: must be at least 1, got 0", ""),
]


@pytest.mark.parametrize("args,message,tail", BAD, ids=[b[1] for b in BAD])
def test_bad_input_is_one_line_and_writes_nothing(lr_store, tmp_path: Path, capsys, args: list[str],
                                                  message: str, tail: str) -> None:
    url, _ = lr_store
    before = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and not p.name.startswith("optuna.db")}
    capsys.readouterr()
    assert cli("refine", *args, "--storage", url) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("automl: error: ") and message in err and tail in err, err
    after = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and not p.name.startswith("optuna.db")}
    assert after == before


def test_force_replaces_an_existing_file(lr_store, tmp_path: Path, capsys) -> None:
    url, _ = lr_store
    assert cli("refine", "--study", "lr", "--output", "taken.yaml", "--force", "--storage", url) == 0
    assert automl.Space.from_yaml(tmp_path / "taken.yaml").dataset == "digits"
    out = capsys.readouterr().out
    assert out.startswith("wrote taken.yaml: ") and "search it: automl search --space taken.yaml" in out


def test_the_refined_space_of_a_real_search_searches(tmp_path: Path, mlflow_template: Path,
                                                     monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    stores = make_stores(tmp_path, mlflow_template)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(TINY_SPACE)
    assert cli("search", "--space", "tiny.yaml", "--study", "wide", "--trials", "5", "--quiet", *stores.flags()) == 0
    capsys.readouterr()
    assert cli("refine", "--study", "wide", "--output", "narrower.yaml", "--top", "3", *stores.flags()) == 0
    printed = capsys.readouterr().out
    text = (tmp_path / "narrower.yaml").read_text()
    assert text.startswith("# Refined by `automl refine` from study 'wide' (tiny.yaml): around the best 3 of 5")
    refined = automl.Space.from_yaml(tmp_path / "narrower.yaml")
    assert printed.count("\n  ") == text.count(" -> ")
    assert cli("search", "--space", "narrower.yaml", "--trials", "1", "--quiet", *stores.flags()) == 0
    study = optuna.load_study(study_name="narrower", storage=stores.storage_url)
    (trial,) = study.get_trials()
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert record.space_of(study) == refined
    depth = refined.to_dict()["model"]["depth"]
    allowed = range(depth["low"], depth["high"] + 1) if isinstance(depth, dict) else [depth]
    assert len([k for k in trial.params if k.startswith("width_")] or [1]) in allowed
