"""Names of the attributes this tool stores on Optuna studies and trials (one place for all)."""

# study user attributes: how the study was created
SPACE_TEXT = "automl.space_yaml"  # a study *system* attribute (not shown among user attributes)
SPACE_SOURCE = "automl.space_source"
SPACE_DIGEST = "automl.space_digest"
METRIC = "automl.metric"
SAMPLER = "automl.sampler"  # the sampler and pruner in use (the YAML's, or --sampler/--pruner)
PRUNER = "automl.pruner"
BUDGET = "automl.n_trials"
SEED = "automl.seed"
DATA = "automl.data"  # name, source, rows, digest of the data the study searches on
TRACKING_URI = "automl.tracking_uri"
EXPERIMENT_ID = "automl.experiment_id"
PARENT_RUN_ID = "automl.parent_run_id"

# trial user attributes
RUN_ID = "mlflow_run_id"
WORKER = "worker"  # {"host", "pid", "started"} of the process running the trial
FAIL_REASON = "fail_reason"
PRUNED_REASON = "pruned_reason"
SECONDS = "seconds"
N_PARAMETERS = "n_parameters"
STOP = "automl.stop"  # study user attribute: {"reason", "mark"}: the trials numbered below mark are judged
NOT_RUN = "not_run"  # trial user attribute: why a queued trial never ran (closed by a stopping rule)
WARM_START = "warm_start"  # trial user attribute: "<study>#<trial number>" the parameters came from
LATENCY_MS = "latency_ms"  # trial user attribute and run metric
STOP_REASON_TAG = "automl.stop_reason"  # tag on the study's MLflow run
FINAL_SEEDS = "automl.final_seeds"  # study system attribute: the final phase's seeds, scores and winner
FINAL_METRICS = "final_metrics"  # the last epoch's metrics (val_loss breaks ties in reports)
FIXED_PARAMS = "fixed_params"  # Optuna's system attribute for the parameters of an enqueued trial
