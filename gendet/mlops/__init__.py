"""MLflow: runs and their logging (``tracking``), the model registry with aliases and the promotion
gate (``registry``), and the tail of a training run (``training_report``)."""
