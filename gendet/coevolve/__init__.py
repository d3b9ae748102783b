"""Co-evolution of generators and the detector (UniGenDet's analog at the zoo's scale).

``align``: fine-tune a zoo generator against the frozen champion (detector-informed generative
alignment, 1 − cos on the detector's representation φ, ``representation``); ``lineage``: its
weights as safetensors with a JSON lineage sidecar. The rounds (align -> shards -> extract -> fix
-> score) run on Ray in ``pipelines.coevolve``. Never imports Ray.
"""
