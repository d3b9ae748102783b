"""Batch scoring of unlabelled images (``gendet score``): ``inputs`` lists a source and reads a
partition into pixels (CPU tasks), ``scoring.BatchScorer`` scores them (the encoder and the heads,
an actor per device), ``store`` plans the run from what OUT holds and writes each partition with
its done marker. ``pipelines/score.py`` wires them on Ray Data; ``scoring.run_local`` in one process."""
