"""The Parquet feature store: its layout and manifest (``store``) and the batch sources the
trainer reads it through (``sources``)."""
