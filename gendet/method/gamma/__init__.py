"""GAMMA: a classification head and two segmentation heads over an image's token grid, with reverse
cross-attention: the config (``config``), the network (``networks``), targets and losses
(``losses``), the resumable epoch loop on token rows (``trainer``), the saved model (``detector``) and
per-subset scoring with pixel metrics (``eval``)."""
