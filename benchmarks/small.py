"""Small-search benchmark: what a whole `automl search` process costs beyond its trials' training.

Most searches are small, so fixed and per-trial costs (start-up, stores, sampling, tracking, the end
of the search) weigh more there than in `benchmarks/speed.py`. One invocation measures, each pair
side by side and interleaved (a b b a a b ...; every run printed, the fastest of each kept):

  (A) `python -m automl search` as a fresh process, 6 identical trials x 3 epochs of a fixed MLP
      (784-256-256-10, Adam, batch 128, no pruning) on 60,000 MNIST-shaped training images, against
      a bare loop of the same trials in a fresh process (imports, data loading and the best
      model's test evaluation included: what a hand-written script would do);
  (B) 20 trials of `search_spaces/mnist_mlp.yaml` (TPE, Hyperband) on 3,600 training images, against
      a bare loop of the same trials, each for the epochs it ran;
  (C) from (A)'s and (B)'s tool runs: the time from the command to the first trial's first batch and
      the end of the search (from the last trial's line to the process's exit); from tiny trials
      (a 784-16-10 MLP on 1,080 images, 20 trials of 1 epoch, then 20 of 11 epochs): what the tool
      spends per trial and per epoch beyond the bare loop's training.

Stores are created before the clocks start (a user's store is created once), as speed.py does. The
data are scikit-learn's real digits upscaled to 28x28 and shifted, written as MNIST IDX files, so it
runs offline. The first batch is seen by wrapping `automl.train.make_loss` in the measured process
(nothing in the tool is changed for the benchmark).

    .venv/bin/python benchmarks/small.py --json benchmarks/results-small-cpu.json   # ~10 min, 2 cores
    .venv/bin/python benchmarks/small.py --quick                                   # ~3 min
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import fresh_stores, write_mnist_like  # noqa: E402 - this folder's shared helpers

ROOT = Path(__file__).resolve().parent.parent
FIRST_BATCH = "small.py first batch at"  # the marker the wrapped tool prints

FIXED_MLP = """\
data: {{dataset: mnist, validation_fraction: 0.1}}
objective: {{metric: val_accuracy}}
budget: {{epochs: {epochs}, trials: {trials}}}
sampler: {{name: random}}
pruner: {{name: none}}
model: {{family: mlp, depth: 2, width: 256, activation: relu, dropout: 0.0}}
loss: {{name: cross_entropy}}
optimizer: {{name: adam, lr: 1.0e-3}}
training: {{batch_size: 128}}
"""

# Tiny trials of equal cost (fixed architecture and batch size) with a few sampled parameters, so
# that TPE's sampling is part of the per-trial cost; no pruning, so every trial runs every epoch.
TINY_MLP = """\
data: {{dataset: mnist, validation_fraction: 0.1}}
objective: {{metric: val_accuracy}}
budget: {{epochs: {epochs}, trials: {trials}}}
sampler: {{name: tpe, options: {{n_startup_trials: 5}}}}
pruner: {{name: none}}
model:
  family: mlp
  depth: 1
  width: 16
  activation: {{type: categorical, choices: [relu, gelu]}}
  dropout: {{type: float, low: 0.0, high: 0.2}}
loss: {{name: cross_entropy}}
optimizer:
  name: adam
  lr: {{type: float, low: 1.0e-3, high: 1.0e-2, log: true}}
training: {{batch_size: 256}}
"""


def note_first_batch(note: Callable[[float], None]) -> None:
    """Call `note(time.time())` at the first training batch of this process: `automl.train.fit`
    looks `make_loss` up in its module at each call, so the loss it makes is wrapped (nothing in
    the tool is changed for the benchmark). Where `automl.train` is not imported yet, it is wrapped
    as it is: importing it here would import torch before the tool does."""
    if "automl.train" in sys.modules:
        _wrap_make_loss(sys.modules["automl.train"], note)
        return

    class WrapOnImport(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
            if name != "automl.train":
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            run = spec.loader.exec_module

            def run_and_wrap(module: Any) -> None:
                run(module)
                _wrap_make_loss(module, note)

            spec.loader.exec_module = run_and_wrap
            return spec

    sys.meta_path.insert(0, WrapOnImport())


def _wrap_make_loss(train: Any, note: Callable[[float], None]) -> None:
    make_loss = train.make_loss
    noted: list[bool] = []

    def noting_make_loss(*args: Any, **kwargs: Any) -> Callable[..., Any]:
        loss = make_loss(*args, **kwargs)

        def first(*a: Any, **k: Any) -> Any:
            if not noted:
                noted.append(True)
                note(time.time())
            return loss(*a, **k)
        return first

    train.make_loss = noting_make_loss


# Runs inside the measured tool process: print the first batch's time, then run `python -m automl`
# unchanged.
TOOL_WRAPPER = f"""\
import runpy, sys
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
from small import note_first_batch
note_first_batch(lambda at: print("{FIRST_BATCH}", repr(at), flush=True))
sys.argv = ["automl", *sys.argv[1:]]
runpy.run_module("automl", run_name="__main__", alter_sys=True)
"""


# --- the tool, as a user runs it -----------------------------------------------------------------


THREADS: list[str] = []  # --threads N for both sides (set by main); default: torch's own choice


def _children_cpu() -> float:
    """CPU seconds (user + system) of the child processes that have ended so far: a steadier
    measure than wall time on a machine that other jobs share."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_tool(space: Path, data_dir: Path, folder: Path, trials: int, seed: int = 0) -> dict:
    """`python -m automl search` in a fresh process; every output line time-stamped on arrival."""
    tracking, storage = fresh_stores(folder)
    command = [sys.executable, "-c", TOOL_WRAPPER, "search", "--space", str(space), "--data-dir",
               str(data_dir), "--trials", str(trials), "--seed", str(seed), "--device", "cpu",
               "--study", "bench", "--tracking-uri", tracking, "--storage", storage, *THREADS]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    lines: list[tuple[float, str]] = []
    cpu = _children_cpu()
    started = time.time()
    with subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as process:
        for line in process.stdout:
            lines.append((time.time(), line.rstrip("\n")))
    ended = time.time()
    if process.returncode != 0:
        tail = "\n".join(text for _, text in lines[-30:])
        raise SystemExit(f"automl search exited {process.returncode}:\n{tail}")
    return {"seconds": ended - started, "cpu_seconds": _children_cpu() - cpu, **_timeline(started, ended, lines),
            "storage": storage}


def _timeline(started: float, ended: float, lines: list[tuple[float, str]]) -> dict:
    """First batch, trial phase and end of search from the tool's time-stamped lines.

    A trial line (`trial    3  COMPLETE ... 1.4s  best ...`) is printed once the trial is closed
    in both stores; its seconds count from claiming the trial to the end of its training."""
    first_batch = next(float(text.split()[-1]) for _, text in lines if text.startswith(FIRST_BATCH))
    trial_lines = [(t, text) for t, text in lines if text.startswith("trial ")]
    first_seconds = float(next(w for w in trial_lines[0][1].split() if w.endswith("s") and
                               w[:-1].replace(".", "", 1).isdigit())[:-1])
    first_start = trial_lines[0][0] - first_seconds
    last_end = trial_lines[-1][0]
    summary = next((t for t, text in lines if text.startswith("  view: ")), ended)  # its last line
    return {"to_first_batch": first_batch - started, "trial_phase": last_end - first_start,
            "end_of_search": ended - last_end, "to_summary": summary - last_end, "trials_run": len(trial_lines)}


# --- the same trials, by a bare loop -------------------------------------------------------------


def plan_trials(storage: str, space_path: Path, data_dir: Path, seed: int = 0) -> dict:
    """The configs of a tool run's trials and the epochs each ran, for the bare loop to replay."""
    import optuna

    from automl.data import load_dataset
    from automl.space import load_space, suggest

    space = load_space(space_path)
    data = load_dataset("mnist", seed=seed, data_dir=data_dir, validation_fraction=space.validation_fraction,
                        test_fraction=space.test_fraction)
    study = optuna.load_study(study_name="bench", storage=storage)
    trials = []
    for t in study.trials:
        model_cfg, train_cfg = suggest(optuna.trial.FixedTrial(t.params, t.number), space, data.input_shape,
                                       data.n_outputs, seed + t.number)
        trials.append({"model": model_cfg.to_dict(), "train": train_cfg.to_dict(),
                       "epochs_run": len(t.intermediate_values), "best": t.number == study.best_trial.number})
    return {"data_dir": str(data_dir), "seed": seed, "threads": int(THREADS[1]) if THREADS else None,
            "validation_fraction": space.validation_fraction,
            "test_fraction": space.test_fraction, "trials": trials}


class _Stop(Exception):
    """Ends a replayed trial after the epochs the tool's trial ran (where it was pruned)."""


def bare_child(plan_path: Path, out_path: Path) -> None:
    """The bare loop (run as `small.py --bare PLAN OUT` in a fresh process): load the data, train
    each trial for the epochs it ran, evaluate the best trial's network on the test split."""
    started = time.perf_counter()
    import torch

    from automl.config import ModelConfig, TrainConfig
    from automl.data import load_dataset
    from automl.model import build_model
    from automl.train import evaluate, fit

    first_batch: list[float] = []
    note_first_batch(first_batch.append)
    plan = json.loads(plan_path.read_text())
    if plan.get("threads"):
        torch.set_num_threads(plan["threads"])
    data = load_dataset("mnist", seed=plan["seed"], data_dir=plan["data_dir"],
                        validation_fraction=plan["validation_fraction"], test_fraction=plan["test_fraction"])
    ready = time.perf_counter()
    test_seconds = 0.0
    for trial in plan["trials"]:
        model_cfg, train_cfg = ModelConfig.from_dict(trial["model"]), TrainConfig.from_dict(trial["train"])
        torch.manual_seed(train_cfg.seed)
        model = build_model(model_cfg)
        model.set_statistics(data.input_mean, data.input_std, data.target_mean, data.target_std)

        def stop_after(epoch: int, metrics: dict, last: int = trial["epochs_run"]) -> None:
            if epoch >= last:
                raise _Stop

        try:
            fit(model, data, train_cfg, stop_after)
        except _Stop:
            pass
        if trial["best"]:
            mark = time.perf_counter()
            evaluate(model, data.test, data.task)
            test_seconds = time.perf_counter() - mark
    done = time.perf_counter()
    out_path.write_text(json.dumps({"start_up": ready - started, "training": done - ready - test_seconds,
                                    "test_evaluation": test_seconds, "first_batch_at": first_batch[0]}))


def run_bare(plan_path: Path, folder: Path) -> dict:
    """The bare loop in a fresh process, timed from its launch to its exit."""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "bare.json"
    cpu = _children_cpu()
    started = time.time()
    subprocess.run([sys.executable, __file__, "--bare", str(plan_path), str(out)], check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    seconds = time.time() - started
    result = json.loads(out.read_text())
    return {"seconds": seconds, "cpu_seconds": _children_cpu() - cpu,
            "to_first_batch": result.pop("first_batch_at") - started, **result}


# --- pairs, interleaved --------------------------------------------------------------------------


def interleaved(label: str, tool: Callable[[int], dict], bare: Callable[[int], dict],
                repeat: int) -> tuple[list[dict], list[dict]]:
    """Runs `tool` and `bare` `repeat` times each, a b b a a b ..., printing every run."""
    tool_runs: list[dict] = []
    bare_runs: list[dict] = []
    for i in range(2 * repeat):
        if (i % 2 == 0) == (i // 2 % 2 == 0):
            tool_runs.append(tool(len(tool_runs)))
            r = tool_runs[-1]
            print(f"  {label} tool run {len(tool_runs)}: {r['seconds']:6.1f} s, CPU {r['cpu_seconds']:5.1f} s  "
                  f"(first batch {r['to_first_batch']:.2f} s, trials {r['trial_phase']:.1f} s, "
                  f"summary {r['to_summary']:.2f} s, end {r['end_of_search']:.2f} s)", flush=True)
        else:
            bare_runs.append(bare(len(bare_runs)))
            r = bare_runs[-1]
            print(f"  {label} bare run {len(bare_runs)}: {r['seconds']:6.1f} s, CPU {r['cpu_seconds']:5.1f} s  "
                  f"(start-up {r['start_up']:.2f} s, first batch {r['to_first_batch']:.2f} s, "
                  f"training {r['training']:.1f} s, "
                  f"test {r['test_evaluation']:.2f} s)", flush=True)
    return tool_runs, bare_runs


def fastest(runs: list[dict], key: str = "seconds") -> dict:
    best = dict(min(runs, key=lambda r: r[key]))
    best.pop("storage", None)
    best[f"all_{key}"] = [round(r[key], 3) for r in runs]
    return best


def compare(name: str, folder: Path, space: Path, data_dir: Path, trials: int, repeat: int) -> dict:
    """A tool-vs-bare pair: the bare loop replays the trials of the first tool run."""
    plan_path = folder / f"{name}-plan.json"

    def tool(i: int) -> dict:
        result = run_tool(space, data_dir, folder / f"{name}-tool{i}", trials)
        if not plan_path.exists():
            plan_path.write_text(json.dumps(plan_trials(result["storage"], space, data_dir)))
        return result

    def bare(i: int) -> dict:
        return run_bare(plan_path, folder / f"{name}-bare{i}")

    tool_runs, bare_runs = interleaved(name, tool, bare, repeat)
    plan = json.loads(plan_path.read_text())
    return {"tool": fastest(tool_runs), "bare": fastest(bare_runs),
            # each part's fastest run (interference only ever slows a run down)
            "tool_min": {k: min(r[k] for r in tool_runs)
                         for k in ("to_first_batch", "end_of_search", "to_summary", "trial_phase")},
            "bare_min": {k: min(r[k] for r in bare_runs)
                         for k in ("start_up", "to_first_batch", "training", "test_evaluation")},
            "trials": len(plan["trials"]), "epochs": sum(t["epochs_run"] for t in plan["trials"]),
            "ratio": min(r["seconds"] for r in tool_runs) / min(r["seconds"] for r in bare_runs),
            "cpu_ratio": min(r["cpu_seconds"] for r in tool_runs) / min(r["cpu_seconds"] for r in bare_runs)}


def overheads(folder: Path, data_dir: Path, trials: int, long_epochs: int, repeat: int) -> dict:
    """Per-trial and per-epoch cost beyond training, from tiny trials of 1 and of `long_epochs`
    epochs: (tool trial phase - bare training) / trials at 1 epoch, and the growth of that gap per
    extra epoch."""
    gaps = {}
    for epochs in (1, long_epochs):
        space = folder / f"tiny{epochs}.yaml"
        space.write_text(TINY_MLP.format(epochs=epochs, trials=trials))
        result = compare(f"C{epochs}", folder, space, data_dir, trials, repeat)
        gaps[epochs] = {"tool_trial_phase": result["tool_min"]["trial_phase"],
                        "bare_training": result["bare_min"]["training"],
                        "pair": result}
        gaps[epochs]["gap"] = gaps[epochs]["tool_trial_phase"] - gaps[epochs]["bare_training"]
    per_trial = gaps[1]["gap"] / trials
    per_epoch = (gaps[long_epochs]["gap"] - gaps[1]["gap"]) / (trials * (long_epochs - 1))
    return {"per_trial_seconds": per_trial, "per_epoch_seconds": per_epoch, "trials": trials,
            "long_epochs": long_epochs, "runs": {str(k): v for k, v in gaps.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and trials (about 3 minutes)")
    parser.add_argument("--repeat", type=int, help="runs of each side per pair (default 3, quick 2)")
    parser.add_argument("--only", choices=["A", "B", "C"], action="append", help="run only these parts")
    parser.add_argument("--threads", type=int, help="torch threads of both sides (the tool's --threads); "
                        "1 gives steadier figures on a busy machine")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--bare", nargs=2, type=Path, metavar=("PLAN", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        bare_child(*args.bare)
        return
    repeat = args.repeat or (2 if args.quick else 3)
    if args.threads:
        THREADS[:] = ["--threads", str(args.threads)]
    parts = set(args.only or ["A", "B", "C"])
    a_trials, b_trials, c_trials = (3, 10, 10) if args.quick else (6, 20, 20)
    results: dict = {"cpus": os.cpu_count(), "threads": args.threads, "repeat": repeat, "quick": args.quick,
                     "python": sys.version.split()[0], "when": time.strftime("%Y-%m-%d %H:%M")}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if "A" in parts:
            write_mnist_like(folder / "data60k", 60000, 10000)
            space = folder / "fixed.yaml"
            space.write_text(FIXED_MLP.format(epochs=3, trials=a_trials))
            print(f"(A) {a_trials} trials x 3 epochs, fixed MLP, 54,000/6,000 images ...", flush=True)
            results["A"] = compare("A", folder, space, folder / "data60k", a_trials, repeat)
        if "B" in parts or "C" in parts:
            write_mnist_like(folder / "data4k", 4000, 1000)
        if "B" in parts:
            print(f"(B) {b_trials} trials of search_spaces/mnist_mlp.yaml, 3,600/400 images ...", flush=True)
            results["B"] = compare("B", folder, ROOT / "search_spaces" / "mnist_mlp.yaml", folder / "data4k",
                                   b_trials, repeat)
        if "C" in parts:
            write_mnist_like(folder / "data1k", 1200, 200)
            print(f"(C) tiny trials: {c_trials} x 1 epoch and {c_trials} x 11 epochs ...", flush=True)
            results["C"] = overheads(folder, folder / "data1k", c_trials, 11, repeat)
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def print_table(results: dict) -> None:
    print()
    print(f"{'measure':<58}{'measured':>12}  target")
    for key, label in (("A", "(A) {} x 3 epochs, 60,000 images"), ("B", "(B) {} trials mnist_mlp, 3,600 images")):
        if key not in results:
            continue
        r = results[key]
        label = label.format(r["trials"])
        print(f"{label + ': tool / bare loop':<58}{r['ratio']:>11.3f}x  <= 1.10")
        print(f"{'    tool, bare (fastest of ' + str(len(r['tool']['all_seconds'])) + ' each), s':<58}"
              f"{r['tool']['seconds']:>6.1f}{r['bare']['seconds']:>6.1f}  runs {r['tool']['all_seconds']} "
              f"{r['bare']['all_seconds']}")
        print(f"{'    CPU time (user + system): tool / bare loop':<58}{r['cpu_ratio']:>11.3f}x")
        print(f"{'    command -> first trial first batch, s':<58}{r['tool_min']['to_first_batch']:>12.2f}  <= 1.5")
        print(f"{'    the bare loop: launch -> first batch, s':<58}{r['bare_min']['to_first_batch']:>12.2f}")
        extra = r["tool_min"]["to_summary"] - r["bare_min"]["test_evaluation"]
        print(f"{'    end of search to the summary, beyond test evaluation, s':<58}{extra:>12.2f}  <= 1.0")
        print(f"{'    end of search to the exit (plots logged), s':<58}{r['tool_min']['end_of_search']:>12.2f}")
    if "C" in results:
        c = results["C"]
        print(f"{'(C) per trial beyond training, ms':<58}{1000 * c['per_trial_seconds']:>12.1f}  <= 20")
        print(f"{'(C) per epoch beyond training, ms':<58}{1000 * c['per_epoch_seconds']:>12.1f}  <= 2")


if __name__ == "__main__":
    main()
