"""User networks ("builders"): resolving, checking, sampling their params, wrapping and reloading."""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
import pytest
import torch
from torch import nn

from automl.builder import BuilderError, check_builder, import_path_of
from automl.config import ModelConfig
from automl.model import UserNetwork, build_model
from automl.space import Space, SpaceError, check_space_builder, load_space, suggest
from tests.conftest import ROOT

NETS = '''
import torch
from torch import nn

NOT_CALLABLE = 3


class Good(nn.Module):
    def __init__(self, input_shape, n_outputs, hidden=8, depth=1):
        super().__init__()
        size = 1
        for d in input_shape:
            size *= d
        layers = [nn.Flatten()]
        for _ in range(depth):
            layers += [nn.Linear(size, hidden), nn.ReLU()]
            size = hidden
        self.body = nn.Sequential(*layers, nn.Linear(size, n_outputs))

    def forward(self, x):
        return self.body(x)


class NoShapes(nn.Module):
    def __init__(self, hidden=8):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.Linear(hidden, 10))

    def forward(self, x):
        return self.body(x)


def from_kwargs(**kwargs):
    assert kwargs["input_shape"] == (1, 8, 8) and kwargs["n_outputs"] == 10
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def returns_list(hidden=8):
    return [hidden]


class FailsToBuild(nn.Module):
    def __init__(self, hidden=8):
        raise ValueError("hidden too small")


class BrokenForward(NoShapes):
    def forward(self, x):
        return self.body(x.reshape(2, 7))


class WrongShape(NoShapes):
    def forward(self, x):
        return self.body(x)[:, :3]
'''


@pytest.fixture
def nets(tmp_path: Path) -> Path:
    (tmp_path / "bad_nets.py").write_text(NETS)
    (tmp_path / "broken.py").write_text("def oops(:\n")
    return tmp_path


BAD_BUILDERS = [
    ("missing.py:Good", {}, "file not found"),
    ("no_such_module_xyz.nets:Good", {}, "module 'no_such_module_xyz.nets' not found"),
    ("bad_nets.py", {}, "expected `file.py:Name`"),
    ("bad_nets.py:Nope", {}, "no 'Nope' in bad_nets.py"),
    ("bad_nets.py:NOT_CALLABLE", {}, "is a int, not a class or function"),
    ("broken.py:oops", {}, "importing broken.py failed: SyntaxError"),
    ("bad_nets.py:Good", {"width": 3}, "unknown keyword 'width' (it takes: depth, hidden)"),
    ("bad_nets.py:Good", {"n_outputs": 3}, "'n_outputs' is given by the tool"),
    ("bad_nets.py:returns_list", {}, "returned a list, not a torch.nn.Module"),
    ("bad_nets.py:FailsToBuild", {}, "building failed: ValueError: hidden too small"),
    ("bad_nets.py:BrokenForward", {}, "forward failed on a batch of shape (2, 1, 8, 8): RuntimeError"),
    ("bad_nets.py:WrongShape", {}, "output shape (2, 3) for a batch of 2, expected (2, 10)"),
]


@pytest.mark.parametrize("spec,params,fragment", BAD_BUILDERS, ids=[f for _, _, f in BAD_BUILDERS])
def test_bad_builder_is_one_line_naming_it(nets: Path, spec: str, params: dict, fragment: str) -> None:
    with pytest.raises(BuilderError) as info:
        check_builder(spec, params, (1, 8, 8), 10, base_dir=nets)
    message = str(info.value)
    assert message.startswith(f"builder {spec}: ") and "\n" not in message, message
    assert fragment in message, (fragment, message)


def test_shapes_are_given_only_when_asked(nets: Path) -> None:
    for name in ("Good", "NoShapes", "from_kwargs"):
        out = check_builder(f"bad_nets.py:{name}", {}, (1, 8, 8), 10, base_dir=nets)
        assert isinstance(out, nn.Module)
    state = torch.random.get_rng_state()
    check_builder("bad_nets.py:Good", {"hidden": 4}, (1, 8, 8), 10, base_dir=nets)
    assert torch.equal(state, torch.random.get_rng_state())  # the check leaves the seed alone


SPACE = """\
data: {dataset: digits}
model:
  builder: "bad_nets.py:Good"
  params:
    hidden: {type: int, low: 4, high: 32, log: true}
    depth: {type: int, low: 1, high: 3}
optimizer: {name: sgd, lr: 0.05}
"""


def test_builder_space_samples_user_names_and_rebuilds(nets: Path, tmp_path: Path) -> None:
    (nets / "space.yaml").write_text(SPACE)
    space = load_space(nets / "space.yaml")
    assert space.family == "builder" and space.builder == f"{nets.resolve() / 'bad_nets.py'}:Good"
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    model_config, train = suggest(trial, space, (1, 8, 8), 10)
    assert {"hidden", "depth"} <= set(trial.params) and not {"width_0", "activation"} & set(trial.params)
    assert model_config.builder_params == {"hidden": trial.params["hidden"], "depth": trial.params["depth"]}
    model = build_model(model_config)
    assert isinstance(model, UserNetwork)
    model.set_statistics([3.0], [2.0])
    x = torch.randint(0, 16, (5, 1, 8, 8), dtype=torch.uint8)
    assert model(x).shape == (5, 10)
    assert torch.allclose(model(x), model.net((x.float() - 3.0) / 2.0))  # standardised, then the user's net
    config = ModelConfig.from_json(model_config.to_json())
    assert config == model_config
    rebuilt = build_model(config)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert torch.equal(rebuilt(x), model(x))
    again = Space.from_yaml(space.to_yaml())
    assert again == space and again.digest == space.digest


def test_reload_finds_a_moved_builder_file_in_search_dirs(nets: Path, tmp_path: Path) -> None:
    config = ModelConfig(family="builder", input_shape=(1, 8, 8), n_outputs=10,
                         builder=str(tmp_path / "gone" / "bad_nets.py") + ":NoShapes", builder_params={"hidden": 3})
    with pytest.raises(BuilderError, match="file not found"):
        build_model(config)
    assert isinstance(build_model(config, search_dirs=[nets]).net, nn.Module)


@pytest.mark.parametrize("params,fragments", [
    ("{width: 3}", ["s.yaml: model.builder: builder", "unknown keyword 'width'"]),
    ("{lr: 0.1}", ["s.yaml: model.params.lr", "training parameter"]),
])
def test_space_params_are_checked_against_the_builder(nets: Path, params: str, fragments: list[str]) -> None:
    text = f"data: {{dataset: digits}}\nmodel: {{builder: bad_nets.py:Good, params: {params}}}\n"
    with pytest.raises(SpaceError) as info:
        Space.from_yaml_text(text, "s.yaml", base_dir=nets)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def test_family_keys_are_refused_next_to_a_builder(nets: Path) -> None:
    text = "data: {dataset: digits}\nmodel: {builder: bad_nets.py:Good, depth: 2}\n"
    with pytest.raises(SpaceError, match="s.yaml: model.depth: only for model.family"):
        Space.from_yaml_text(text, "s.yaml", base_dir=nets)
    with pytest.raises(SpaceError, match="not both"):
        Space.from_yaml_text(text.replace("depth: 2", "family: mlp"), "s.yaml", base_dir=nets)


class TinyNet(nn.Module):
    """Importable as tests.test_builder:TinyNet."""

    def __init__(self, n_outputs: int, hidden: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.LazyLinear(hidden), nn.ReLU(), nn.LazyLinear(n_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_python_object_builder() -> None:
    space = Space.from_yaml("data: {dataset: digits}\nmodel: {family: mlp}\n").with_builder(TinyNet)
    assert space.builder == "tests.test_builder:TinyNet" and space.family == "builder"
    assert Space.from_yaml(space.text) == space  # the stored text names the builder
    model_section = {"builder": TinyNet, "params": {"hidden": {"type": "int", "low": 2, "high": 8}}}
    by_dict = Space.from_dict({"data": {"dataset": "digits"}, "model": model_section})
    model, _ = suggest(optuna.trial.FixedTrial({"hidden": 5}), by_dict, (1, 8, 8), 10)
    assert model.builder_params == {"hidden": 5}
    with pytest.raises(SpaceError, match="unknown keyword 'depth'"):
        Space.from_dict({"data": {"dataset": "digits"}, "model": {"builder": TinyNet, "params": {"depth": 2}}})


def test_builder_without_an_importable_home_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    class Local(nn.Module):
        pass

    with pytest.raises(SpaceError, match="must live in an importable module or file"):
        Space.from_yaml("data: {dataset: digits}\nmodel: {family: mlp}\n").with_builder(Local)
    notebook = type(sys)("__main__")  # an interactive session: no __file__
    Cell = type("Cell", (nn.Module,), {"__module__": "__main__"})
    monkeypatch.setitem(sys.modules, "__main__", notebook)
    with pytest.raises(BuilderError, match="notebook or interactive session"):
        import_path_of(Cell)


@pytest.mark.parametrize("name", ["tutorial_fixed.yaml", "tutorial_search.yaml"])
def test_example_spaces_load_and_their_builder_checks(name: str) -> None:
    space = Space.from_yaml(ROOT / "examples" / name)
    assert space.builder == f"{ROOT / 'examples' / 'nets.py'}:MLP"
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(3):
        trial = study.ask()
        model, train = suggest(trial, space, (1, 8, 8), 10)
        net = check_builder(model.builder, model.builder_params, (1, 8, 8), 10)
        assert [m.out_features for m in net.modules() if isinstance(m, nn.Linear)][-1] == 10
        study.tell(trial, 0.0)
    if name == "tutorial_fixed.yaml":
        assert (train.loss, train.optimizer, model.builder_params) == ("mse", "sgd", {"hidden_sizes": [128, 64]})


def test_space_builder_check_before_a_search(nets: Path) -> None:
    space = Space.from_yaml_text(SPACE, "s.yaml", base_dir=nets)
    check_space_builder(space, (1, 8, 8), 3)  # Good takes n_outputs
    text = SPACE.replace("Good", "NoShapes").replace("    depth: {type: int, low: 1, high: 3}\n", "")
    fixed_outputs = Space.from_yaml_text(text, "s.yaml", base_dir=nets)
    check_space_builder(fixed_outputs, (1, 8, 8), 10)
    with pytest.raises(SpaceError, match=r"^s.yaml: model.builder: builder .*\(2, 10\) .*expected \(2, 3\)"):
        check_space_builder(fixed_outputs, (1, 8, 8), 3)  # data with 3 classes: wrong output size
