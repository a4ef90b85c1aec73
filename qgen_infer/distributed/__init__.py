"""Past one process: reconstruction and training on torch.distributed, started by ``torchrun``.

* :func:`reconstruct_sharded`: the images split across the ranks in resumable shards, merged
  into the result a single-process run gives, bit for bit (:mod:`.sharded`; ``--backend auto``'s
  choices made once, by rank 0, for every rank: :mod:`.dispatch`);
* :class:`DistributedTrainer`: Algorithm 1 under DistributedDataParallel, the global batch
  split across the ranks (:mod:`.training`);
* :func:`join`, :func:`check_all`: the job's environment and agreed failures (:mod:`.env`).
"""

from qgen_infer.distributed.env import DistEnv, JobFailed, check_all, join, launched, leave
from qgen_infer.distributed.sharded import ShardedRun, ShardPlan, reconstruct_sharded

__all__ = [
    "DistEnv",
    "JobFailed",
    "ShardPlan",
    "ShardedRun",
    "check_all",
    "join",
    "launched",
    "leave",
    "reconstruct_sharded",
]
