"""Comparing and inspecting a finished search: plots, report, studies, predict, the champion,
MLflow's own loaders, the UI server (and, where Chromium exists, a real browser)."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest
import torch
from PIL import Image

import automl
from automl.data import load_dataset
from automl.progress import Progress
from automl.worker import TrialOutcome
from tests.conftest import PYTHON, TINY_SPACE, cli, ctrl_c_enabled, make_stores

STUDY = "inspect"
SPACE = (TINY_SPACE.replace("budget: {epochs: 2, trials: 3}", "budget: {epochs: 3, trials: 6}")
         .replace("pruner: {name: none}", "pruner: {name: median, options: {n_startup_trials: 3}}"))


@pytest.fixture(scope="module")
def done(tmp_path_factory: pytest.TempPathFactory, mlflow_template: Path):
    folder = tmp_path_factory.mktemp("inspect")
    stores = make_stores(folder, mlflow_template)
    (folder / "inspect.yaml").write_text(SPACE)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        assert cli("search", "--space", folder / "inspect.yaml", *stores.flags()) == 0
    return stores


def _parent(stores):
    client = stores.client()
    experiment = client.get_experiment_by_name(STUDY)
    return next(r for r in client.search_runs([experiment.experiment_id])
                if r.data.tags.get("automl.role") == "study")


def test_plots_are_valid_image_and_html_artifacts(done) -> None:
    client = done.client()
    parent = _parent(done)
    names = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "plots")}
    pngs = {"optimization_history.png", "learning_curves.png", "param_importances.png",
            "parallel_coordinate.png", "contour.png"}
    assert pngs | {"study_plots.html"} <= names, names
    folder = Path(client.download_artifacts(parent.info.run_id, "plots", str(done.folder / "plots")))
    for name in pngs:
        with Image.open(folder / name) as image:
            assert image.format == "PNG" and image.size[0] > 300
    html = (folder / "study_plots.html").read_text()
    assert html.startswith("<html>") and "Plotly.newPlot" in html and "Learning curves" in html


def test_report_lists_every_trial_best_first(done, capsys, tmp_path: Path) -> None:
    capsys.readouterr()
    assert cli("report", "--study", STUDY, "--json", "--csv", tmp_path / "t.csv", *done.flags()) == 0
    rows = json.loads(capsys.readouterr().out)
    study = optuna.load_study(study_name=STUDY, storage=done.storage_url)
    assert len(rows) == len(study.trials) == 6
    assert rows[0]["number"] == study.best_trial.number and rows[0]["value"] == study.best_value
    complete = [r["value"] for r in rows if r["state"] == "COMPLETE"]
    assert complete == sorted(complete, reverse=True)
    assert {"epochs", "seconds", "param.lr", "param.depth"} <= set(rows[0])
    assert len((tmp_path / "t.csv").read_text().strip().splitlines()) == 7
    assert cli("report", "--study", STUDY, *done.flags()) == 0
    text = capsys.readouterr().out
    assert "COMPLETE" in text and "param.lr" in text


def test_studies_lists_counts_and_best(done, capsys) -> None:
    capsys.readouterr()
    assert cli("studies", "--json", "--storage", done.storage_url) == 0
    rows = json.loads(capsys.readouterr().out)
    study = optuna.load_study(study_name=STUDY, storage=done.storage_url)
    row = next(r for r in rows if r["study"] == STUDY)
    assert row["trials"] == 6 and row["state"] == "finished" and row["metric"] == "val_accuracy"
    assert row["complete"] + row["pruned"] + row["failed"] == 6
    assert row["best_value"] == study.best_value and row["best_trial"] == study.best_trial.number


def test_predict_npy_and_images_match_the_champion(done, capsys, tmp_path: Path) -> None:
    data = load_dataset("digits", seed=0)
    best = automl.load_best(STUDY, tracking_uri=done.tracking_uri)
    x = data.test.x[:5].float().numpy()
    np.save(tmp_path / "batch.npy", x)
    capsys.readouterr()
    assert cli("predict", "--study", STUDY, "--json", tmp_path / "batch.npy", "--tracking-uri", done.tracking_uri) == 0
    rows = json.loads(capsys.readouterr().out)
    expected = best.model(torch.from_numpy(x)).argmax(1).tolist()
    assert [r["prediction"] for r in rows] == [str(i) for i in expected]
    assert all(abs(sum(v for k, v in r.items() if k.startswith("p_")) - 1) < 1e-5 for r in rows)
    # the same digits as 8-bit grayscale PNG files (0..255), scaled back to the digits' 0..16
    paths = []
    for i in range(5):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray((data.test.x[i, 0].numpy().astype(np.int32) * 255 // 16).astype(np.uint8)).save(path)
        paths.append(path)
    out = tmp_path / "pred.csv"
    assert cli("predict", "--study", STUDY, *paths, "--output", out, "--tracking-uri", done.tracking_uri) == 0
    lines = out.read_text().strip().splitlines()
    assert lines[0].startswith("input,prediction,p_0") and len(lines) == 6
    assert [line.split(",")[1] for line in lines[1:]] == [str(i) for i in expected]


def test_predict_refuses_bad_input(done, capsys, tmp_path: Path) -> None:
    np.save(tmp_path / "wrong.npy", np.zeros((2, 3)))
    capsys.readouterr()
    assert cli("predict", "--study", STUDY, tmp_path / "wrong.npy", "--tracking-uri", done.tracking_uri) == 2
    assert "expected an array of shape (N, 1, 8, 8), got (2, 3)" in capsys.readouterr().err
    assert cli("predict", "--study", STUDY, tmp_path / "none.npy", "--tracking-uri", done.tracking_uri) == 2


def _predict_json(done, capsys, *inputs) -> tuple[int, list[dict], str]:
    capsys.readouterr()
    code = cli("predict", "--study", STUDY, "--json", *inputs, "--tracking-uri", done.tracking_uri)
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if code == 0 else [], captured.err


def test_predict_converts_0_255_and_inverted_digits_with_a_warning(done, capsys, tmp_path: Path) -> None:
    """17 real digits: as an 8-bit 0..255 array and as black-on-white PNGs they get the labels
    of the same digits in the training units 0..16, with one warning line saying what was done."""
    x = load_dataset("digits", seed=0).test.x[:17].numpy()  # uint8, 0..16
    np.save(tmp_path / "units.npy", x)
    code, rows, err = _predict_json(done, capsys, tmp_path / "units.npy")
    assert code == 0 and err == ""
    expected = [r["prediction"] for r in rows]
    pixels = np.round(x.astype(np.float64) * 255 / 16).astype(np.uint8)
    np.save(tmp_path / "pixels.npy", pixels[:, 0])  # (N, 8, 8), 0..255
    code, rows, err = _predict_json(done, capsys, tmp_path / "pixels.npy")
    assert code == 0 and [r["prediction"] for r in rows] == expected
    assert err.count("\n") == 1 and "0-255 pixels: rescaled to the training range 0-16" in err
    paths = []
    for i, image in enumerate(255 - pixels[:, 0]):  # black digits on white paper
        paths.append(tmp_path / f"ink{i:02d}.png")
        Image.fromarray(image).save(paths[-1])
    code, rows, err = _predict_json(done, capsys, *paths)
    assert code == 0 and [r["prediction"] for r in rows] == expected
    assert err.count("\n") == 1 and "17 of 17 image(s) have a light background: inverted" in err


def _huge_png(path: Path, width: int, height: int) -> Path:
    """A valid all-black grayscale PNG of width x height pixels, written without holding it in memory."""
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + data)))
    compressor, row, parts = zlib.compressobj(1), b"\x00" * (width + 1), []
    for _ in range(height):
        parts.append(compressor.compress(row))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts))
                     + chunk(b"IEND", b""))
    return path


def test_predict_refuses_unusable_inputs_in_one_line(done, capsys, tmp_path: Path) -> None:
    x = load_dataset("digits", seed=0).test.x[:8].numpy().astype(np.float32)
    x[2, 0, 3, 3], x[5, 0, 0, 0] = np.nan, np.inf
    np.save(tmp_path / "holes.npy", x)
    np.save(tmp_path / "text.npy", np.array([["1", "2"], ["3", "x"]]))
    cases = {
        tmp_path / "holes.npy": "NaN or infinite values in holes.npy[2], holes.npy[5]",
        tmp_path / "text.npy": "text.npy: holds <U1 values (text?); expected numbers",
        _huge_png(tmp_path / "huge.png", 20000, 10000): "huge.png: over the 64-megapixel limit",
        _huge_png(tmp_path / "big.png", 10000, 7000): "10000x7000 pixels is over the 64-megapixel limit",
    }
    for path, message in cases.items():
        code, _, err = _predict_json(done, capsys, path)
        assert code == 2 and err.count("\n") == 1 and message in err and "Traceback" not in err, err


def test_outputs_into_a_missing_folder_are_refused(done, capsys, tmp_path: Path) -> None:
    np.save(tmp_path / "one.npy", load_dataset("digits", seed=0).test.x[:1].numpy())
    missing = tmp_path / "no" / "such"
    capsys.readouterr()
    assert cli("predict", "--study", STUDY, tmp_path / "one.npy", "--output", missing / "p.csv",
               "--tracking-uri", done.tracking_uri) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--output: folder {missing} does not exist" in err
    assert cli("report", "--study", STUDY, "--csv", missing / "t.csv", *done.flags()) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--csv: folder {missing} does not exist" in err


def test_pyfunc_predicts_a_numpy_batch(done) -> None:
    mlflow.set_registry_uri(done.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{STUDY}@champion")
    x = load_dataset("digits", seed=0).test.x[:7].float().numpy()
    table = model.predict(x)  # the served answer: the label and one probability per class
    assert np.asarray(table.filter(like="p_")).shape == (7, 10)
    assert list(table["prediction"]) == [str(i) for i in automl.load_best(STUDY, tracking_uri=done.tracking_uri)
                                         .model(torch.from_numpy(x)).argmax(1).tolist()]


def test_progress_bar_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    progress = Progress(total=4, done=1, metric="val_accuracy", stream=screen)
    best = optuna.trial.create_trial(value=0.91, params={}, distributions={})
    progress.trial(TrialOutcome(1, optuna.trial.TrialState.COMPLETE, 0.91, 1.5, "", best))
    progress.close()
    text = screen.getvalue()
    assert "2/4 trials" in text and "best val_accuracy=0.9100" in text and "left" in text
    assert "trial    1  COMPLETE  val_accuracy=0.9100" in text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ui(done):
    port = _free_port()
    process = subprocess.Popen([PYTHON, "-m", "automl", "ui", "--port", str(port), "--tracking-uri", done.tracking_uri],
                               cwd=done.folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=ctrl_c_enabled)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("the UI server did not answer within 120 s: " + process.stderr.read())
    yield url
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def _get(url: str, data: dict | None = None, host: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(data).encode() if data else None,
                                     headers={"Content-Type": "application/json", **({"Host": host} if host else {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, {}


def test_ui_serves_the_parent_and_child_runs(ui, done) -> None:
    status, body = _get(f"{ui}/api/2.0/mlflow/experiments/get-by-name?experiment_name={STUDY}")
    assert status == 200
    experiment = body["experiment"]["experiment_id"]
    status, body = _get(f"{ui}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment], "max_results": 100})
    runs = body["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
    parents = [r for r, t in zip(runs, tags, strict=True) if t.get("automl.role") == "study"]
    children = [t for t in tags if t.get("automl.role") == "trial"]
    first_parent = parents[-1]["info"]["run_id"]  # the module's search
    assert len([c for c in children if c["mlflow.parentRunId"] == first_parent]) == 6
    child = next(r for r, t in zip(runs, tags, strict=True) if t.get("mlflow.parentRunId") == first_parent)
    assert {m["key"] for m in child["data"]["metrics"]} >= {"val_accuracy", "train_loss", "val_loss"}
    assert {p["key"] for p in child["data"]["params"]} >= {"lr", "depth", "n_parameters"}


def test_ui_refuses_a_foreign_host_header(ui) -> None:
    status, _ = _get(f"{ui}/api/2.0/mlflow/experiments/search?max_results=5", host="evil.example.com")
    assert status in (400, 403)


def test_ui_on_another_address_warns(done) -> None:
    process = subprocess.Popen([PYTHON, "-m", "automl", "ui", "--host", "0.0.0.0", "--port", str(_free_port()),
                                "--tracking-uri", done.tracking_uri], cwd=done.folder,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = process.stderr.readline()
    finally:
        process.kill()
        process.wait()
    assert "reachable from other machines" in first


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package (apt-get install chromium)")
def test_browser_shows_nested_trial_runs(ui, done, tmp_path: Path) -> None:
    """Headless Chromium (driven by Playwright) opens the experiment, expands the study run and
    sees its trial runs; the screenshot goes to $AUTOML_UI_SCREENSHOT when that is set."""
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    experiment = done.client().get_experiment_by_name(STUDY).experiment_id
    shot = Path(os.environ.get("AUTOML_UI_SCREENSHOT") or tmp_path / "ui.png")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 900})
            page.goto(f"{ui}/#/experiments/{experiment}/runs")
            page.wait_for_selector(f"text={STUDY}", timeout=90_000)
            page.locator("button[data-component-id*='runnamecellrenderer']").first.click()  # expand
            page.wait_for_selector("text=trial-0", timeout=30_000)
            # pruned and failed trial runs carry their state in the name (see worker.RUN_NAMES)
            assert page.locator("text=/^trial-\\d+( \\((pruned|failed)\\))?$/").count() >= 6
            close = page.get_by_role("button", name="Close")
            if close.count():
                close.first.click()  # the assistant side panel
            page.wait_for_timeout(1000)
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    with Image.open(shot) as image:
        assert image.size == (1500, 900)


def test_champion_moves_only_for_a_better_test_score(done, capsys, tmp_path: Path) -> None:
    """A later study of the same name (another Optuna storage, same MLflow store). Last in this
    module: it adds a second study run to the experiment the UI tests look at."""
    worse = tmp_path / "worse.yaml"
    worse.write_text(SPACE.replace("lr: {type: float, low: 3.0e-3, high: 1.0e-2, log: true}", "lr: 1.0e-6")
                     .replace("name: {type: categorical, choices: [adam, sgd]}", "name: sgd"))
    client = done.client()
    before = client.get_model_version_by_alias(STUDY, "champion").version
    capsys.readouterr()
    assert cli("search", "--space", worse, "--study", STUDY, "--trials", "1", "--storage",
               f"sqlite:///{tmp_path / 'other.db'}", "--tracking-uri", done.tracking_uri) == 0
    assert f"@champion stays on version {before}" in capsys.readouterr().out
    assert client.get_model_version_by_alias(STUDY, "champion").version == before
    assert len(client.search_model_versions(f"name='{STUDY}'")) == 2
