"""Use a trained detector: load it from any URI (``loading``), score image bytes (``scorer``),
the ``gendet predict`` verb (``predict``) and the MLflow pyfunc model (``pyfunc``)."""
