"""GenDet (teacher-student discrepancy + adversarial feature augmentation) and its ablation ladder:
the config (``config``), the networks (``networks``), the losses of Eq. 1-4 (``losses``), the stage
plan (``schedule``), the trainer (``trainer``), stage checkpoints (``checkpoints``) and the saved,
loadable result (``detector``)."""
