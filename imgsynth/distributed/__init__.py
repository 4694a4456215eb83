"""Scale-out: run generation and feature extraction on Ray (optional extra ``imgsynth[ray]``) or
across ``accelerate launch`` processes, with sets byte-identical to the local backend's.

Backends drive any :class:`~imgsynth.pipelines.sharding.SetJob` shard by shard: ``generate`` (local or a
Ray actor pool), ``ranks`` (the processes of one ``accelerate launch``), ``features`` (feature extraction
on Ray), ``tasks`` (parallel chains of the loop), ``accelerate_train`` (data-parallel training). They know
backends, not generator kinds.
"""

from imgsynth.distributed.backend import INSTALL_HINT, RayNotInstalled, ray_session, require_ray
from imgsynth.distributed.generate import BACKENDS, generate

__all__ = ["BACKENDS", "INSTALL_HINT", "RayNotInstalled", "generate", "ray_session", "require_ray"]
