"""Every Ray API call fl_ray makes lives in this package: connecting, actors, placement, the
object store, deadlines, and translating Ray's failures into :class:`SiloFailure` values.

Keeping Ray behind this one package (as Ray Serve routes its calls through one wrapper) lets
silo, coordinator, strategies and receipts be tested with no cluster at all.
"""

from fl_ray.on_ray.connect import SILO_LABEL, connect, disconnect
from fl_ray.on_ray.coordinator_actor import CoordinatorClient, CoordinatorDied
from fl_ray.on_ray.silo_pool import RaySiloPool

__all__ = [
    "SILO_LABEL",
    "CoordinatorClient",
    "CoordinatorDied",
    "RaySiloPool",
    "connect",
    "disconnect",
]
