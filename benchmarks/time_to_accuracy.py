"""Time to accuracy: a shipped space as shipped (TPE, its pruner) against random search on the same
budget, side by side.

For each space, two `python -m automl search` processes start together, each with one CPU thread
(`--threads 1`) and the same `--timeout`: the space as shipped, and the same space with
`sampler: {name: random}` and no pruner (the common baseline). They share the machine's load, so
the comparison holds on a busy machine. Then `automl.compare_studies` draws the best validation
score so far against wall time and trial number, and the table gives each study's best, its trials
and the champion's test score (the summary line of each search).

    .venv/bin/python benchmarks/time_to_accuracy.py --seconds 120                      # digits, ~2.5 min
    .venv/bin/python benchmarks/time_to_accuracy.py --space search_spaces/mnist_cnn.yaml \\
        --data-dir data --seconds 300                           # real MNIST files under data/MNIST/raw

Writes `time_to_accuracy_<space>.png` and a JSON of the figures into `--out` (default: a
temporary folder, printed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
TEST_SCORE = re.compile(r"best trial (\d+): \S+=([0-9.]+); .*?test_(accuracy|r2|rmse)=([0-9.-]+)")


def random_variant(space: Path, folder: Path) -> Path:
    """The same space with random sampling and no pruning."""
    text = yaml.safe_load(space.read_text())
    text["sampler"] = {"name": "random"}
    text["pruner"] = {"name": "none"}
    path = folder / f"{space.stem}_random.yaml"
    path.write_text(yaml.safe_dump(text, sort_keys=False))
    return path


def start(space: Path, study: str, folder: Path, seconds: float, data_dir: str, trials: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "automl", "search", "--space", str(space), "--study", study,
               "--timeout", str(seconds), "--trials", str(trials), "--threads", "1", "--device", "cpu",
               "--data-dir", data_dir, "--storage", f"sqlite:///{folder / 'optuna.db'}",
               "--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}"]
    log = open(folder / f"{study}.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def champion_test_score(log: Path) -> dict:
    found = TEST_SCORE.search(log.read_text())
    if not found:
        return {}
    return {"champion_trial": int(found[1]), f"test_{found[3]}": float(found[4])}


def race(space: Path, seconds: float, data_dir: str, trials: int, out: Path) -> dict:
    """Shipped and random searches of `space` at once; the comparison table and plot."""
    from automl import compare_studies

    folder = Path(tempfile.mkdtemp(prefix=f"tta-{space.stem}-"))
    studies = {f"{space.stem}-shipped": space, f"{space.stem}-random": random_variant(space, folder)}
    # the MLflow store is created first, once (two processes creating it at once would race)
    subprocess.run([sys.executable, "-c", "import sys; from mlflow.tracking import MlflowClient; "
                    "MlflowClient(sys.argv[1]).search_experiments()", f"sqlite:///{folder / 'mlflow.db'}"],
                   check=True, capture_output=True)
    started = time.time()
    processes = {name: start(path, name, folder, seconds, data_dir, trials) for name, path in studies.items()}
    codes = {name: p.wait() for name, p in processes.items()}
    wall = time.time() - started
    for name, code in codes.items():
        if code != 0:
            tail = (folder / f"{name}.log").read_text()[-3000:]
            raise SystemExit(f"{name} exited {code}:\n{tail}")
    image = out / f"time_to_accuracy_{space.stem}.png"
    table = compare_studies(list(studies), storage=f"sqlite:///{folder / 'optuna.db'}", output=image)
    rows = []
    for row in table.to_dict("records"):
        rows.append({**{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()},
                     **champion_test_score(folder / f"{row['study']}.log")})
    return {"space": str(space.relative_to(ROOT) if space.is_relative_to(ROOT) else space),
            "seconds": seconds, "wall_seconds": round(wall, 1), "plot": str(image), "studies": rows,
            "folder": str(folder)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", type=Path, action="append", help="a space file (repeatable); "
                        "default: search_spaces/digits_mlp.yaml")
    parser.add_argument("--seconds", type=float, default=120.0, help="budget of each search (default 120)")
    parser.add_argument("--trials", type=int, default=500, help="trial cap, above what the budget allows")
    parser.add_argument("--data-dir", default="data", help="where file datasets are (MNIST: DIR/MNIST/raw)")
    parser.add_argument("--out", type=Path, help="folder for the plots and results.json")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="tta-out-"))
    out.mkdir(parents=True, exist_ok=True)
    spaces = [p.resolve() for p in (args.space or [ROOT / "search_spaces" / "digits_mlp.yaml"])]
    results = [race(space, args.seconds, str(Path(args.data_dir).resolve()), args.trials, out) for space in spaces]
    for result in results:
        print(f"\n{result['space']}: {result['seconds']:.0f} s each, side by side (plot: {result['plot']})")
        for row in result["studies"]:
            test = {k: v for k, v in row.items() if k.startswith("test_")}
            run = row["complete"] + row["pruned"] + row["failed"]
            print(f"  {row['study']:<24} best {row['best_value']:.4f} (trial {row['best_trial']}, reached at "
                  f"{row['time_to_best_s']:.0f} s); {run} trials run ({row['pruned']} pruned); "
                  + ", ".join(f"{k} {v:.4f}" for k, v in test.items()))
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"\nfigures: {out / 'results.json'}")


if __name__ == "__main__":
    main()
