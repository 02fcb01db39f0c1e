"""The champion as MLflow serves it: `mlflow models serve` over real HTTP answers labels and
probabilities for inputs of several shapes and dtypes, like `automl predict`; the pytorch flavor
still loads as a plain nn.Module; networks torch.export cannot trace fall back to pickle + code."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
import torch
import yaml

from automl.data import load_dataset
from automl.tracking import Tracker
from tests.conftest import PYTHON, TINY_SPACE, Stores, cli, make_stores

STUDY = "served"
CLASSES = [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory, mlflow_template: Path) -> Stores:
    folder = tmp_path_factory.mktemp("serving")
    stores = make_stores(folder, mlflow_template)
    (folder / "tiny.yaml").write_text(TINY_SPACE)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        assert cli("search", "--space", folder / "tiny.yaml", "--study", STUDY, "--trials", "2",
                   *stores.flags(), "--quiet") == 0
    return stores


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """Twelve test digits, (12, 1, 8, 8) float in the training units 0..16."""
    return load_dataset("digits", seed=0).test.x[:12].numpy().astype(np.float64)


def _expected_labels(stores: Stores, x: np.ndarray, folder: Path) -> list[str]:
    """What `automl predict --json` answers for `x` (run through the real CLI)."""
    path = folder / "expected.npy"
    np.save(path, x.astype(np.float32))
    out = subprocess.run([PYTHON, "-m", "automl", "predict", "--study", STUDY, "--json", str(path),
                          "--tracking-uri", stores.tracking_uri], capture_output=True, text=True, check=True)
    return [row["prediction"] for row in json.loads(out.stdout)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.fixture(scope="module")
def server(searched: Stores):
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": searched.tracking_uri, "MLFLOW_REGISTRY_URI": searched.tracking_uri,
           "PATH": os.pathsep.join([str(Path(PYTHON).parent), os.environ.get("PATH", "")])}  # its uvicorn
    log = (searched.folder / "serve.log").open("w")
    process = subprocess.Popen(
        [PYTHON, "-m", "mlflow", "models", "serve", "-m", f"models:/{STUDY}@champion", "--env-manager", "local",
         "-p", str(port), "-h", "127.0.0.1"], cwd=searched.folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("mlflow models serve did not answer /ping: "
                                + (searched.folder / "serve.log").read_text()[-2000:])
                time.sleep(0.5)
        yield url
    finally:
        process.kill()
        process.wait(timeout=30)
        log.close()


def _check(predictions: list[dict], expected: list[str]) -> None:
    assert [p["prediction"] for p in predictions] == expected
    for p in predictions:
        probabilities = [p[f"p_{c}"] for c in CLASSES]
        assert abs(sum(probabilities) - 1) < 1e-6 and min(probabilities) >= 0
        assert CLASSES[int(np.argmax(probabilities))] == p["prediction"]


def test_served_champion_answers_labels_for_many_input_shapes(server, searched, digits, tmp_path) -> None:
    expected = _expected_labels(searched, digits, tmp_path)
    n = len(digits)
    pixels = np.round(digits * 255 / 16).astype(np.uint8)  # an 8-bit image batch, 0..255
    bodies = {
        "flat float64 (N, 64)": {"inputs": digits.reshape(n, 64).tolist()},
        "(N, 8, 8)": {"inputs": digits.reshape(n, 8, 8).tolist()},
        "(N, 1, 8, 8)": {"inputs": digits.tolist()},
        "uint8 0-255 (N, 8, 8)": {"inputs": pixels.reshape(n, 8, 8).tolist()},
        "dataframe_split": {"dataframe_split": {"columns": [f"px{i}" for i in range(64)],
                                                "data": digits.reshape(n, 64).tolist()}},
    }
    for name, body in bodies.items():
        status, answer = _post(f"{server}/invocations", body)
        assert status == 200, (name, answer)
        _check(answer["predictions"], expected)


def test_served_champion_refuses_bad_inputs_with_400(server, digits) -> None:
    bad = digits.reshape(len(digits), 64).tolist()
    bad[3][5] = None  # null -> NaN
    status, answer = _post(f"{server}/invocations", {"inputs": bad})
    assert status == 400 and "NaN or infinite values in row 3" in answer["message"]
    status, answer = _post(f"{server}/invocations", {"inputs": [[1.0, 2.0, 3.0]]})
    assert status == 400 and "expected an array of shape (N, 1, 8, 8), got (1, 3)" in answer["message"]


def test_champion_has_both_flavors_and_a_label_signature(searched, digits) -> None:
    client = searched.client()
    version = client.get_model_version_by_alias(STUDY, "champion")
    parent = client.get_run(version.tags["study_run_id"])
    assert parent.data.tags["automl.model_format"] == "pt2"
    mlflow.set_tracking_uri(searched.tracking_uri)
    mlflow.set_registry_uri(searched.tracking_uri)
    uri = f"models:/{STUDY}@champion"
    network = mlflow.pytorch.load_model(uri)
    assert isinstance(network, torch.nn.Module)
    logits = network(torch.from_numpy(digits.astype(np.float32)))
    assert tuple(logits.shape) == (len(digits), 10)
    local = Path(mlflow.artifacts.download_artifacts(uri))
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    assert mlmodel["flavors"]["python_function"]["loader_module"] == "automl.serving"
    assert mlmodel["flavors"]["pytorch"]["model_data"] == "data"
    assert (local / "data" / "model.pt2").is_file() and (local / "automl" / "model.safetensors").is_file()
    assert not list(local.rglob("*.pth")) and not list(local.rglob("*.pkl"))
    outputs = json.loads(mlmodel["signature"]["outputs"])
    assert [o["name"] for o in outputs] == ["prediction", *(f"p_{c}" for c in CLASSES)]
    table = mlflow.pyfunc.load_model(uri).predict(digits.astype(np.float32))
    assert list(table["prediction"]) == [CLASSES[i] for i in logits.argmax(1).tolist()]


NETS = '''
import torch
from torch import nn


class Gate(nn.Module):
    """Data-dependent Python control flow: torch.export cannot trace it."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(64, 3)
        self.b = nn.Linear(64, 3)

    def forward(self, x):
        x = x.flatten(1)
        if x.sum() > 0:
            return self.a(x)
        return self.b(x)
'''


def test_network_that_cannot_be_exported_falls_back_to_pickle_with_its_code(tmp_path, mlflow_template) -> None:
    stores = make_stores(tmp_path / "stores", mlflow_template)
    code = tmp_path / "code" / "gate_nets.py"
    code.parent.mkdir()
    code.write_text(NETS)
    sys.path.insert(0, str(code.parent))
    try:
        import gate_nets

        net = gate_nets.Gate().eval()
    finally:
        sys.path.remove(str(code.parent))
    net.config = SimpleNamespace(builder=f"{code}:Gate")  # as a user-built network records it
    with pytest.raises(Exception):  # noqa: B017 - the premise: pt2 cannot take this network
        torch.export.export(net, (torch.ones(2, 1, 8, 8),))
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "preprocessing.json").write_text(json.dumps({"input_shape": [1, 8, 8], "class_names": ["a", "b", "c"]}))
    tracker = Tracker(stores.tracking_uri)
    run_id = tracker.start_study_run(tracker.experiment_id("gate"), "gate", {}, "space")
    example = np.ones((4, 1, 8, 8), np.float32)
    uri, version = tracker.log_model(run_id, net, example, "gate", {}, weights=weights)
    assert version == "1" and tracker.tags(run_id)["automl.model_format"] == "pickle"
    code.unlink()  # the logged model must carry its own copy of the network's code
    del sys.modules["gate_nets"]
    script = ("import mlflow, torch; m = mlflow.pytorch.load_model('models:/gate/1'); "
              "print(type(m).__name__, m(torch.ones(2, 1, 8, 8)).shape[1], m(-torch.ones(2, 1, 8, 8)).shape[1])")
    env = {**os.environ, "MLFLOW_TRACKING_URI": stores.tracking_uri, "MLFLOW_REGISTRY_URI": stores.tracking_uri,
           "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true"}
    out = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["Gate", "3", "3"]
