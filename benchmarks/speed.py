"""Speed benchmark: this tool's search against the conventional way and against bare training.

One invocation runs, on the same MNIST-shaped data, search space, trial count, epochs and seed:

  (a) `automl search` (tensors on the device, index batches, MLflow child runs, pruning);
  (b) the conventional way: torchvision `ToTensor`/`Normalize` transforms, a per-sample
      `DataLoader`, Optuna with the same sampler and pruner, optuna-integration's `MLflowCallback`;
  (c) the trials of (a) trained again by a bare loop, no Optuna and no tracking at all;

and prints wall time and best validation accuracy of each, the ratios a/b and a/c, and the trial
throughput of `--workers 1` against `--workers 2` (on trials of equal cost). With CUDA it also
reports epoch times on 60,000 images and trials per minute with 1 and 4 workers on the GPU.

The data are scikit-learn's real digits, upscaled to 28x28 and shifted to make as many as MNIST
has (60,000 training and 10,000 test images), written as MNIST IDX files, so it runs offline.
Stores are created before the clocks start (a user's store is created once). Run:
`python benchmarks/speed.py` (about 45 minutes on 2 cores, most of it in the conventional
reference).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

SPACE = """\
data: {{dataset: mnist, validation_fraction: 0.1}}
objective: {{metric: val_accuracy}}
budget: {{epochs: {epochs}, trials: {trials}}}
sampler: {{name: tpe, options: {{n_startup_trials: 6}}}}
pruner: {{name: median, options: {{n_startup_trials: 4, n_warmup_steps: 2}}}}
model:
  family: mlp
  depth: {{type: int, low: 1, high: 2}}
  width: {{type: int, low: 32, high: 128, log: true}}
  activation: {{type: categorical, choices: [relu, gelu]}}
  dropout: {{type: float, low: 0.0, high: 0.2}}
loss: {{name: cross_entropy}}
optimizer:
  name: {{type: categorical, choices: [adam, adamw, sgd]}}
  lr: {{type: float, low: 1.0e-3, high: 1.0e-2, log: true}}
  sgd: {{momentum: 0.9, nesterov: true}}
training:
  batch_size: {{type: categorical, choices: [64, 128, 256]}}
"""


# For the throughput of --workers 1 against --workers 2: trials of equal cost (fixed architecture,
# batch size and optimizer; no pruning), so that trials per minute measures the workers and not
# which trials the sampler happened to draw or the pruner happened to stop.
WORKERS_SPACE = """\
data: {{dataset: mnist, validation_fraction: 0.1}}
objective: {{metric: val_accuracy}}
budget: {{epochs: {epochs}, trials: {trials}}}
sampler: {{name: tpe, options: {{n_startup_trials: 6}}}}
pruner: {{name: none}}
model:
  family: mlp
  depth: 2
  width: 128
  activation: {{type: categorical, choices: [relu, gelu]}}
  dropout: {{type: float, low: 0.0, high: 0.2}}
loss: {{name: cross_entropy}}
optimizer:
  name: adam
  lr: {{type: float, low: 1.0e-3, high: 1.0e-2, log: true}}
training:
  batch_size: 128
"""

def write_mnist_like(root: Path, n_train: int, n_test: int, seed: int = 0) -> tuple[float, float]:
    """Shifted, upscaled real digits as MNIST raw IDX files. Returns the training mean and std."""
    from sklearn.datasets import load_digits

    from automl.data import write_idx

    digits = load_digits()
    base = np.kron((digits.images * 255 / 16).astype(np.uint8), np.ones((3, 3), dtype=np.uint8))
    base = np.pad(base, ((0, 0), (2, 2), (2, 2)))  # 1797 x 28 x 28
    labels = digits.target.astype(np.uint8)
    rng = np.random.default_rng(seed)
    cut = 1500  # train variants come from the first 1,500 digits, test variants from the rest

    def variants(index: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        pick = rng.choice(index, n)
        shifts = rng.integers(-2, 3, (n, 2))
        images = np.stack([np.roll(base[i], tuple(s), axis=(0, 1)) for i, s in zip(pick, shifts, strict=False)])
        return images, labels[pick]

    train_x, train_y = variants(np.arange(cut), n_train)
    test_x, test_y = variants(np.arange(cut, len(base)), n_test)
    raw = root / "MNIST" / "raw"
    write_idx(raw / "train-images-idx3-ubyte", train_x)
    write_idx(raw / "train-labels-idx1-ubyte", train_y)
    write_idx(raw / "t10k-images-idx3-ubyte", test_x)
    write_idx(raw / "t10k-labels-idx1-ubyte", test_y)
    scaled = train_x / 255.0
    return float(scaled.mean()), float(scaled.std())


def fresh_stores(folder: Path) -> tuple[str, str]:
    """An MLflow store with its tables already created, and an Optuna storage URL."""
    from mlflow.tracking import MlflowClient

    folder.mkdir(parents=True, exist_ok=True)
    tracking = f"sqlite:///{folder / 'mlflow.db'}"
    MlflowClient(tracking).search_experiments()
    return tracking, f"sqlite:///{folder / 'optuna.db'}"


def run_tool(space: Path, data_dir: Path, folder: Path, trials: int, seed: int) -> dict:
    """(a): the tool's own search, in this process, through its CLI entry point."""
    import optuna

    from automl.cli import main

    tracking, storage = fresh_stores(folder)
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        started = time.perf_counter()
        code = main(["search", "--space", str(space), "--data-dir", str(data_dir), "--trials", str(trials),
                     "--seed", str(seed), "--device", "cpu", "--study", "bench", "--tracking-uri", tracking,
                     "--storage", storage, "--quiet"])
        seconds = time.perf_counter() - started
    finally:
        os.chdir(cwd)
    assert code == 0, f"automl search exited {code}"
    study = optuna.load_study(study_name="bench", storage=storage)
    return {"seconds": seconds, "best_val_accuracy": study.best_value, "storage": storage,
            "trials": len(study.trials)}


def run_conventional(space_path: Path, data_dir: Path, folder: Path, trials: int, seed: int,
                     mean: float, std: float) -> dict:
    """(b): transforms + per-sample DataLoader + Optuna + MLflowCallback, as tutorials do it."""
    import optuna
    import torch
    import torch.nn.functional as F
    from optuna_integration.mlflow import MLflowCallback
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    from automl.model import build_model
    from automl.space import load_space, suggest
    from automl.train import make_optimizer, make_schedule

    space = load_space(space_path)
    tracking, storage = fresh_stores(folder)
    started = time.perf_counter()
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((mean,), (std,))])
    full = datasets.MNIST(str(data_dir), train=True, transform=transform, download=False)
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = int(len(full) * space.validation_fraction)
    train_set, val_set = Subset(full, order[n_val:]), Subset(full, order[:n_val])

    def objective(trial: optuna.Trial) -> float:
        model_cfg, train_cfg = suggest(trial, space, (1, 28, 28), 10, seed + trial.number)
        torch.manual_seed(seed + trial.number)
        model = build_model(model_cfg)  # inputs arrive normalised: its own statistics stay 0/1
        optimizer = make_optimizer(model, train_cfg)
        schedule, per_batch = make_schedule(optimizer, train_cfg, len(train_set))
        loader = DataLoader(train_set, batch_size=train_cfg.batch_size, shuffle=True)
        val_loader = DataLoader(val_set, batch_size=1024)
        accuracy = 0.0
        for epoch in range(1, train_cfg.epochs + 1):
            model.train()
            for xb, yb in loader:
                optimizer.zero_grad()
                loss = F.cross_entropy(model(xb), yb)
                loss.backward()
                optimizer.step()
                if per_batch:
                    schedule.step()
            if schedule is not None and not per_batch:
                schedule.step()
            model.eval()
            correct = 0
            with torch.no_grad():
                for xb, yb in val_loader:
                    correct += (model(xb).argmax(1) == yb).sum().item()
            accuracy = correct / len(val_set)
            trial.report(accuracy, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return accuracy

    sampler = optuna.samplers.TPESampler(**space.sampler_options, seed=seed)
    pruner = optuna.pruners.MedianPruner(**space.pruner_options)
    study = optuna.create_study(study_name="bench", storage=storage, direction="maximize",
                                sampler=sampler, pruner=pruner)
    study.optimize(objective, n_trials=trials,
                   callbacks=[MLflowCallback(tracking_uri=tracking, metric_name="val_accuracy")])
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "best_val_accuracy": study.best_value, "trials": len(study.trials)}


def run_bare(tool_storage: str, space_path: Path, data_dir: Path, seed: int) -> dict:
    """(c): the trials of (a), each for the epochs it ran, trained with no Optuna and no tracking."""
    import optuna
    import torch

    from automl.data import load_dataset
    from automl.model import build_model
    from automl.space import load_space, suggest
    from automl.train import fit

    space = load_space(space_path)
    finished = [t for t in optuna.load_study(study_name="bench", storage=tool_storage).trials
                if t.intermediate_values]
    started = time.perf_counter()
    data = load_dataset("mnist", seed=seed, data_dir=data_dir, validation_fraction=space.validation_fraction)
    best = 0.0
    for t in finished:
        model_cfg, train_cfg = suggest(optuna.trial.FixedTrial(t.params, t.number), space,
                                       data.input_shape, data.n_outputs, seed + t.number)
        train_cfg = type(train_cfg)(**{**train_cfg.to_dict(), "epochs": len(t.intermediate_values)})
        torch.manual_seed(seed + t.number)
        model = build_model(model_cfg)
        model.set_statistics(data.input_mean, data.input_std)
        result = fit(model, data, train_cfg)
        if len(t.intermediate_values) == space.epochs:
            best = max(best, result.metrics["val_accuracy"])
    return {"seconds": time.perf_counter() - started, "best_val_accuracy": best, "trials": len(finished)}


def run_workers(space: Path, data_dir: Path, folder: Path, trials: int, seed: int, workers: int,
                device: str = "cpu") -> dict:
    """The CLI in a subprocess with `--workers N`: wall time and trials per minute of the trial phase."""
    import optuna

    tracking, storage = fresh_stores(folder)
    command = [sys.executable, "-m", "automl", "search", "--space", str(space), "--data-dir", str(data_dir),
               "--trials", str(trials), "--seed", str(seed), "--device", device, "--study", "bench",
               "--workers", str(workers), "--tracking-uri", tracking, "--storage", storage, "--quiet"]
    started = time.perf_counter()
    subprocess.run(command, cwd=folder, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    done = optuna.load_study(study_name="bench", storage=storage).trials
    first = min(t.datetime_start for t in done)
    last = max(t.datetime_complete for t in done)
    phase = (last - first).total_seconds()
    return {"wall_seconds": wall, "trial_phase_seconds": phase, "trials": len(done),
            "trials_per_minute": 60 * len(done) / phase}


def gpu_figures(folder: Path, seed: int) -> dict:
    """Epoch times on 60,000 images and trials per minute with 1 and 4 workers on one GPU."""
    import torch

    from automl.config import ModelConfig, TrainConfig
    from automl.data import load_dataset
    from automl.model import build_model
    from automl.train import fit

    data_dir = folder / "gpu-data"
    write_mnist_like(data_dir, 60000, 10000, seed)
    data = load_dataset("mnist", seed=seed, data_dir=data_dir, validation_fraction=1 / 6).to("cuda")
    figures: dict = {"device": torch.cuda.get_device_name()}
    for family, config in {
        "mlp": ModelConfig("mlp", (1, 28, 28), 10, widths=(512, 256)),
        "cnn": ModelConfig("cnn", (1, 28, 28), 10, channels=(32, 64), widths=(128,), batch_norm=True),
    }.items():
        model = build_model(config)
        model.set_statistics(data.input_mean, data.input_std)
        result = fit(model, data, TrainConfig(epochs=3, batch_size=256))
        figures[f"{family}_epoch_seconds"] = min(h["epoch_seconds"] for h in result.history)
    space = folder / "gpu.yaml"
    space.write_text(WORKERS_SPACE.format(epochs=5, trials=16))
    for workers in (1, 4):
        figures[f"workers_{workers}"] = run_workers(space, data_dir, folder / f"gpu-w{workers}", 16, seed,
                                                    workers, device="cuda")
    return figures


def _runs(result: dict) -> str:
    return "runs: " + ", ".join(f"{s:.1f}" for s in result["all_seconds"]) if "all_seconds" in result else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--train-size", type=int, default=60000, help="MNIST's own sizes by default")
    parser.add_argument("--test-size", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of (a) and (c) each, interleaved a c c a a c ...; the fastest counts")
    parser.add_argument("--worker-trials", type=int, default=24, help="trials of each --workers run")
    parser.add_argument("--worker-epochs", type=int, default=3, help="epochs of each --workers trial")
    parser.add_argument("--skip-workers", action="store_true", help="skip the --workers 1 vs 2 runs")
    parser.add_argument("--skip-conventional", action="store_true", help="skip (b), the slowest part")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()

    import optuna
    import torch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Warm the process once for every variant alike: the first optimizer step imports
    # torch._dynamo (seconds); whichever variant ran first would pay it alone.
    warm = torch.nn.Linear(2, 2)
    torch.optim.Adam(warm.parameters()).step()
    results: dict = {"torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                     "trials": args.trials, "epochs": args.epochs, "train_size": args.train_size}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data_dir = folder / "data"
        mean, std = write_mnist_like(data_dir, args.train_size, args.test_size, args.seed)
        space = folder / "bench.yaml"
        space.write_text(SPACE.format(epochs=args.epochs, trials=args.trials))

        # (a) and (c) run interleaved, a c c a a c ..., so that neither is favoured by a drift in
        # this machine's speed, and each keeps its fastest run (interference from the rest of the
        # machine only ever slows a run down). Every (c) replays the trials of the first (a); the
        # same seed gives every (a) the same trials.
        tool_runs, bare_runs = [], []
        first_storage = None
        for i in range(2 * args.repeat):
            if (i % 2 == 0) == (i // 2 % 2 == 0):
                print(f"(a) automl search, run {len(tool_runs) + 1} ...", flush=True)
                tool_runs.append(run_tool(space, data_dir, folder / f"a{i}", args.trials, args.seed))
                first_storage = first_storage or tool_runs[-1]["storage"]
            else:
                print(f"(c) bare training loop of the same trials, run {len(bare_runs) + 1} ...", flush=True)
                bare_runs.append(run_bare(first_storage, space, data_dir, args.seed))
        for key, runs in (("a_tool", tool_runs), ("c_bare", bare_runs)):
            results[key] = {k: v for k, v in runs[0].items() if k != "storage"}
            results[key]["all_seconds"] = [r["seconds"] for r in runs]
            results[key]["all_trials"] = [r["trials"] for r in runs]
            results[key]["seconds"] = min(r["seconds"] for r in runs)
        if args.skip_conventional:
            results["b_conventional"] = {"seconds": float("nan"), "best_val_accuracy": float("nan")}
        else:
            print("(b) conventional: transforms + DataLoader + Optuna + MLflowCallback ...", flush=True)
            results["b_conventional"] = run_conventional(space, data_dir, folder / "b", args.trials,
                                                         args.seed, mean, std)
        a, b, c = (results[k]["seconds"] for k in ("a_tool", "b_conventional", "c_bare"))
        results["ratio_a_over_b"] = a / b
        results["ratio_a_over_c"] = a / c
        results["accuracy_gap_points"] = 100 * (results["b_conventional"]["best_val_accuracy"]
                                               - results["a_tool"]["best_val_accuracy"])
        if not args.skip_workers:
            # interleaved 1 2 2 1, each keeping its faster run, as for (a) and (c)
            print("workers: --workers 1 and --workers 2, twice each ...", flush=True)
            equal = folder / "workers.yaml"
            equal.write_text(WORKERS_SPACE.format(epochs=args.worker_epochs, trials=args.worker_trials))
            runs: dict[int, list[dict]] = {1: [], 2: []}
            for i, workers in enumerate((1, 2, 2, 1)):
                runs[workers].append(run_workers(equal, data_dir, folder / f"w{i}", args.worker_trials,
                                                 args.seed, workers))
            one, two = (max(runs[w], key=lambda r: r["trials_per_minute"]) for w in (1, 2))
            for workers, best in ((1, one), (2, two)):
                best["all_trials_per_minute"] = [r["trials_per_minute"] for r in runs[workers]]
            results["workers_1"], results["workers_2"] = one, two
            results["workers_speedup"] = two["trials_per_minute"] / one["trials_per_minute"]
        if torch.cuda.is_available():
            print("GPU figures ...", flush=True)
            results["gpu"] = gpu_figures(folder, args.seed)

    print()
    print(f"{'run':<44}{'wall s':>9}{'best val acc':>14}")
    for key, label in (("a_tool", "(a) automl search"), ("b_conventional", "(b) DataLoader + MLflowCallback"),
                       ("c_bare", "(c) bare training, same trials")):
        r = results[key]
        print(f"{label:<44}{r['seconds']:>9.1f}{r['best_val_accuracy']:>14.4f}  {_runs(r)}")
    print(f"a/b = {results['ratio_a_over_b']:.3f}   (target <= 0.2; accuracy gap "
          f"{results['accuracy_gap_points']:+.2f} points, target <= 0.5)")
    print(f"a/c = {results['ratio_a_over_c']:.3f}   (target <= 1.15)")
    if "workers_speedup" in results:
        print(f"--workers 1: {results['workers_1']['trials_per_minute']:.1f} trials/min, "
              f"--workers 2: {results['workers_2']['trials_per_minute']:.1f} trials/min, "
              f"speed-up {results['workers_speedup']:.2f}x (target >= 1.6)")
    if "gpu" in results:
        print(json.dumps(results["gpu"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
