"""Quality studies (held-out protocol, ablations, seeds, sweeps): run from the repo root as ``python -m experiments.<name>``."""
