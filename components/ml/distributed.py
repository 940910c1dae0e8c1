"""How the training processes were started, and the Lightning strategy that follows from it.

Two launches exist:

- **Spawned** (the default): the command runs once; with ``devices`` above 1 Lightning's
  ``ddp_spawn`` starts the ranks on this node from inside ``trainer.fit``.
- **External**: a launcher (``torchrun``, e.g. in a Kubeflow ``TrainJob``) started every rank of
  every node, each running the same command. torch elastic marks such a process with
  ``TORCHELASTIC_RUN_ID`` (plus ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``...); Lightning's plain
  ``ddp`` strategy then joins the processes that exist (``TorchElasticEnvironment``) instead of
  starting new ones. Only global rank 0 writes into the run folder.

The functions take the environment as a mapping, so they are pure and testable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from components.contracts.errors import ParameterError


@dataclass(frozen=True)
class Launch:
    """This process's place in the training job.

    Attributes:
        external: started by a launcher such as torchrun (one process per device, every node).
        rank: global rank (0 when not external).
        world_size: processes in the job as the launcher reports them (1 when not external).
    """

    external: bool = False
    rank: int = 0
    world_size: int = 1

    @property
    def writes(self) -> bool:
        """Whether this process writes into the run folder (global rank 0 only)."""
        return self.rank == 0


def _int(environ: Mapping[str, str], name: str, default: int) -> int:
    value = environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ParameterError(f"environment variable {name}={value!r}: expected an integer (set by torchrun)") from None


def detect_launch(environ: Mapping[str, str]) -> Launch:
    """The launch described by ``environ`` (pass ``os.environ``).

    External when torch elastic set ``TORCHELASTIC_RUN_ID``, or a launcher set both ``WORLD_SIZE``
    and ``LOCAL_RANK``. The global rank is ``RANK``, else ``GROUP_RANK`` (or ``NODE_RANK``) x
    ``LOCAL_WORLD_SIZE`` + ``LOCAL_RANK``.
    """
    external = "TORCHELASTIC_RUN_ID" in environ or ("WORLD_SIZE" in environ and "LOCAL_RANK" in environ)
    if not external:
        return Launch()
    local_rank = _int(environ, "LOCAL_RANK", 0)
    node_rank = _int(environ, "GROUP_RANK", _int(environ, "NODE_RANK", 0))
    rank = _int(environ, "RANK", node_rank * _int(environ, "LOCAL_WORLD_SIZE", 1) + local_rank)
    return Launch(external=True, rank=rank, world_size=_int(environ, "WORLD_SIZE", 1))


def choose_strategy(devices: int, num_nodes: int, launch: Launch) -> str:
    """Lightning's strategy for ``devices`` per node on ``num_nodes`` nodes.

    ``auto`` for one process; ``ddp_spawn`` for several devices on this node, started by Lightning
    (the launching process stays out of the process group, keeps its run-folder lock, and the
    command line is not re-run per rank); ``ddp`` when a launcher started the ranks.

    Raises:
        ParameterError: ``num_nodes`` above 1 without a launcher (nothing would start the other
            nodes' processes), or a launcher whose world size is not ``devices x num_nodes``.
    """
    if not launch.external:
        if num_nodes > 1:
            raise ParameterError(
                f"--num-nodes {num_nodes}: training on several nodes needs a launcher that starts "
                f"--devices {devices} process(es) on every node (torchrun, e.g. a Kubeflow TrainJob); "
                "without one, use --num-nodes 1")
        return "ddp_spawn" if devices > 1 else "auto"
    if launch.world_size != devices * num_nodes:
        raise ParameterError(
            f"--devices {devices} x --num-nodes {num_nodes} = {devices * num_nodes} process(es), but the "
            f"launcher started WORLD_SIZE={launch.world_size}; pass torchrun's --nproc-per-node as "
            "--devices and its --nnodes as --num-nodes")
    return "ddp" if launch.world_size > 1 else "auto"
