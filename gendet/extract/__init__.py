"""Shards in, Parquet features out: reader -> mapper -> writer (clip-retrieval's split), with
img2dataset's per-shard stats file as the done marker.

- ``reader.ShardReader``: one shard URL -> column batches of preprocessed images (decode and
  degradation on CPU) or quarantine rows with a reason, ending with an end-of-shard row.
- ``mapper.FeatureMapper``: a plain callable class that loads the encoder where it runs and turns
  image batches into feature batches (Ray Data builds it inside its actors).
- ``writer``: ``ShardAssembler`` gathers a shard's rows in any order; ``write_shard`` writes its
  Parquet, its quarantine table and, last, its stats file.
- ``manifest``: which shards are done, what to do, ``manifest.json`` rebuilt from the stats.
- ``runner``: ``prepare`` (all checks, before any work), ``run_local`` (the loop without Ray),
  ``finish``. ``pipelines/extract.py`` runs the same parts on Ray Data. (Nothing is imported here:
  ``import gendet.extract.reader`` loads the reader alone.)
"""
