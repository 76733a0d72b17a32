"""The science: pure torch and numpy, no MLflow and no training. CKA (the estimator), the block
detector, PC1, probes, deletion, prediction statistics, and the metrics that explain the block."""
