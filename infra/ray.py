"""Ray connection: an embedded local Ray by default, a cluster by ``ray.address``."""

from __future__ import annotations

from persona4rec.config import RayConfig
from persona4rec.errors import StageUnavailable


def ensure_ray(cfg: RayConfig) -> None:
    """Start (or join) Ray once per process; a Ray that is already up is used as it is."""
    try:
        import ray
    except ImportError:
        raise StageUnavailable("this stage runs on Ray: pip install 'persona4rec[ray]'") from None
    if ray.is_initialized():
        return
    if cfg.address:
        ray.init(address=cfg.address, log_to_driver=True)
    else:
        ray.init(address="local", num_cpus=cfg.num_cpus, include_dashboard=False, log_to_driver=True)
