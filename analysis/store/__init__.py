"""The tracking store: its contract (tag keys, metric names, artifact layout), the registry
(lookup, torch-free; model files), queries over runs (API and SQL), runs as this project opens
them, Optuna studies, and reading logged results back."""
