"""A champion that is not a lucky seed: the space's `final: {top_k, seeds}` section.

After the trials, the top-k complete trials' configurations are trained again with more seeds
(the trial's own run counts as its first seed). Each configuration is ranked by the mean minus one
standard deviation of its seeds' scores (mean plus one standard deviation for a metric to
minimize); the best-ranked one wins. Its weights are the best-scoring seed's, kept on its trial
run under `final_weights/`. The scores are stored on the study (a rerun of the same command does
not train them again), mean ± std are logged on each trial run, and `selection.champion_trial`
returns the winner.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from optuna.trial import FrozenTrial

from automl.checkpoint import save_checkpoint
from automl.data import Dataset
from automl.keys import FINAL_SEEDS, RUN_ID
from automl.model import build_model
from automl.registries import improves
from automl.selection import final_record, final_winner, top_trials
from automl.space import SearchSpace, suggest
from automl.tracking import FINAL_WEIGHTS_DIR, Tracker
from automl.train import NonFiniteLoss, fit

SEED_STRIDE = 1_000_003  # seed s of trial n trains with seed + n + s * SEED_STRIDE


@dataclass
class SeedScores:
    """One configuration's scores over its seeds (the first is the trial's own)."""

    trial: int
    scores: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.scores)

    @property
    def std(self) -> float:
        return statistics.stdev(self.scores) if len(self.scores) > 1 else 0.0

    def robust(self, direction: str) -> float:
        """Mean minus one standard deviation (plus, for a metric to minimize): the ranking score."""
        return self.mean - self.std if direction == "maximize" else self.mean + self.std


def rank(results: list[SeedScores], direction: str) -> list[SeedScores]:
    """Best first by the robust score; ties by the earlier trial."""
    ordered: list[SeedScores] = []
    for item in sorted(results, key=lambda r: r.trial):
        at = next((i for i, other in enumerate(ordered)
                   if improves(item.robust(direction), other.robust(direction), direction)), len(ordered))
        ordered.insert(at, item)
    return ordered


def train_seed(space: SearchSpace, data: Dataset, trial: FrozenTrial, seed: int,
               folder: Path) -> float | None:
    """Train the trial's configuration with `seed`; its weights go to `folder`. None: training failed."""
    fixed = optuna.trial.FixedTrial(trial.params, number=trial.number)
    model_config, train_config = suggest(fixed, space, data.input_shape, data.n_outputs, seed)
    torch.manual_seed(seed)
    model = build_model(model_config)
    model.set_statistics(data.input_mean, data.input_std, data.target_mean, data.target_std)
    try:
        result = fit(model, data, train_config)
    except NonFiniteLoss:
        return None
    value = float(result.metrics[space.metric])
    save_checkpoint(folder, model, model_config, train_config, data.preprocessing())
    return value


def run_final(study: optuna.Study, space: SearchSpace, data: Dataset, tracker: Tracker, seed: int,
              say: Callable[[str], None]) -> int | None:
    """Retrain the top-k configurations with `space.final_seeds` seeds; record and return the winner."""
    top_k, seeds = space.final_top_k, space.final_seeds
    top = top_trials(study, top_k)
    if not top or seeds < 2:
        return None
    record = final_record(study)
    if record.get("seeds") == seeds and final_winner(study) is not None:
        return final_winner(study)  # done by an earlier run of this command, on the same top-k
    say(f"final: training the top {len(top)} configuration(s) with {seeds} seeds each")
    results: list[SeedScores] = []
    kept: dict[int, tuple[float, Path]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for trial in top:
            scores = [float(trial.value)]  # type: ignore[arg-type]
            for s in range(1, seeds):
                folder = Path(tmp) / f"{trial.number}-{s}"
                value = train_seed(space, data, trial, seed + trial.number + s * SEED_STRIDE, folder)
                if value is None:  # a seed that diverges counts as the worst score seen
                    scores.append(min(scores) if space.direction == "maximize" else max(scores))
                    continue
                scores.append(value)
                if trial.number not in kept or improves(value, kept[trial.number][0], space.direction):
                    kept[trial.number] = (value, folder)
            results.append(SeedScores(trial.number, scores))
            _log_seeds(tracker, trial, space.metric, results[-1])
        # a configuration whose every extra seed diverged has no weights to register
        ranked = [r for r in rank(results, space.direction) if r.trial in kept]
        if not ranked:
            return None
        winner = ranked[0]
        run_id = next(t for t in top if t.number == winner.trial).user_attrs.get(RUN_ID)
        if winner.trial in kept and run_id:
            tracker.log_folder(run_id, kept[winner.trial][1], FINAL_WEIGHTS_DIR)
    study._storage.set_study_system_attr(study._study_id, FINAL_SEEDS, {
        "top_k": top_k, "seeds": seeds, "winner": winner.trial,
        "trials": {str(r.trial): r.scores for r in results},
    })
    for r in ranked:
        say(f"final: trial {r.trial}: {space.metric} {r.mean:.4f} ± {r.std:.4f} over {len(r.scores)} seeds"
            + ("  <- champion" if r is winner else ""))
    return winner.trial


def _log_seeds(tracker: Tracker, trial: FrozenTrial, metric: str, scores: SeedScores) -> None:
    """mean ± std of the seeds on the trial's run."""
    run_id = trial.user_attrs.get(RUN_ID)
    if run_id:
        tracker.log_metrics(run_id, {f"final_mean_{metric}": scores.mean, f"final_std_{metric}": scores.std,
                                     "final_seeds": float(len(scores.scores))})
