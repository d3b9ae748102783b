"""GenDet and its ablation ladder: the config (``config``), the networks (``networks``), the
losses of Eq. 1-4 (``losses``), the stage schedule (``trainer``), stage checkpoints
(``checkpoints``) and the saved, loadable result (``detector``)."""
