"""Frozen image encoders: one interface (``base``), one name registry (``registry``), the
open_clip image towers (``openclip``) and the weight-free forensic encoder (``spectrum``).
Architectures shipped as data live in ``model_configs/``."""
