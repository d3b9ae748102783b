"""Detection methods, each in its own package: ``gendet`` (GenDet and its ablation ladder, on pooled
features) and ``gamma`` (GAMMA: token grids, masks and sources). Each is split by concern: config,
networks, losses, trainer, detector (the saved, loadable model) and, for GAMMA, eval. ``saved`` is
what both saved detectors share: the encoder they read, their calibration and their files."""
