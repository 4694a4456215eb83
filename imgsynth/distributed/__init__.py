"""Scale-out: run generation and feature extraction on Ray (optional extra ``imgsynth[ray]``) or
across ``accelerate launch`` processes, with sets byte-identical to the local backend's.

Backends drive any :class:`ShardGenerator` shard by shard (see ``protocol``); ``generators`` adapts the
class-conditional and text-to-image pipelines to it.
"""

from imgsynth.distributed.backend import INSTALL_HINT, RayNotInstalled, ray_session, require_ray
from imgsynth.distributed.generate import BACKENDS, IncompleteGenerationError, generate
from imgsynth.pipelines.sharding import SetSpec, ShardGenerator, job_shards

__all__ = ["BACKENDS", "INSTALL_HINT", "IncompleteGenerationError", "RayNotInstalled", "SetSpec",
           "ShardGenerator", "generate", "job_shards", "ray_session", "require_ray"]
