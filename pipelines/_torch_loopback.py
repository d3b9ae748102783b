"""Ray Train's torch process group, kept on loopback on a one-machine Ray.

Ray Train sets up DDP with torch's TCPStore (``init_method`` env or tcp), whose server listens on
every interface (measured: ``*:<port>`` for the ~20 s a two-worker run lives), and gloo binds its
pairs to the address the host name resolves to. On a Ray that this job started, or one whose nodes
are all on 127.0.0.1 (a test or one-box cluster), neither is needed: the workers share this
machine, so they rendezvous through a file (torch's ``file://`` init: a FileStore, no listener)
and gloo talks over ``lo`` (``GLOO_SOCKET_IFNAME``). On a real cluster (``RAY_ADDRESS`` off
loopback) Ray Train's own setup runs: its workers must reach each other over the pod network.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from typing import Any

from pipelines._ray import cluster_address, on_loopback


def torch_config(use_gpu: bool) -> Any:
    """The ``TorchConfig`` for ``TorchTrainer``: loopback-only on a one-machine Ray (module
    docstring), Ray Train's default (None) elsewhere or with GPUs (NCCL)."""
    address = cluster_address()
    if use_gpu or (address and not on_loopback(address)):
        return None
    from ray.train.torch import TorchConfig
    from ray.train.torch.config import _TorchBackend

    class LoopbackTorchBackend(_TorchBackend):
        def on_start(self, worker_group: Any, backend_config: Any) -> None:
            import ray
            from ray.train._internal.worker_group import WorkerGroup as V1WorkerGroup
            from ray.train.torch.config import _set_torch_distributed_env_vars, _setup_torch_process_group

            worker_group.execute(_loopback_env)
            if not isinstance(worker_group, V1WorkerGroup):
                worker_group.execute(_set_torch_distributed_env_vars)
            self._remove_rendezvous()  # a restarted group (a worker failed) rendezvous afresh
            rendezvous = self._rendezvous = os.path.join(tempfile.gettempdir(), f"gendet-pg-{uuid.uuid4().hex}")
            ray.get([worker_group.execute_single_async(i, _setup_torch_process_group, backend="gloo", world_rank=i,
                                                       world_size=len(worker_group), init_method=f"file://{rendezvous}",
                                                       timeout_s=backend_config.timeout_s)
                     for i in range(len(worker_group))])

        def on_shutdown(self, worker_group: Any, backend_config: Any) -> None:
            try:
                super().on_shutdown(worker_group, backend_config)
            finally:
                self._remove_rendezvous()

        def _remove_rendezvous(self) -> None:
            path, self._rendezvous = getattr(self, "_rendezvous", None), None
            if path and os.path.exists(path):
                os.remove(path)

    class LoopbackTorchConfig(TorchConfig):
        @property
        def backend_cls(self):
            return LoopbackTorchBackend

    return LoopbackTorchConfig(backend="gloo")


def _loopback_env() -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
