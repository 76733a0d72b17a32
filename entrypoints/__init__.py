"""One thin module per MLproject entry point: parse the arguments, call one stage of analysis/stages."""

import os

# Runs before any entry point imports mlflow: offline machines must not wait on telemetry.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per download floods logs
