"""How the training processes were launched, and the Lightning strategy chosen for it."""

from __future__ import annotations

import pytest

from components.contracts.config import TrainConfig
from components.contracts.errors import ParameterError
from components.ml.distributed import Launch, choose_strategy, detect_launch

#: What torchrun sets in the process of rank 5 of 2 nodes x 4 processes (node 1, local rank 1).
TORCHRUN = {"TORCHELASTIC_RUN_ID": "job-1", "RANK": "5", "LOCAL_RANK": "1", "GROUP_RANK": "1",
            "LOCAL_WORLD_SIZE": "4", "WORLD_SIZE": "8", "MASTER_ADDR": "trainer-node-0", "MASTER_PORT": "29500"}


def test_a_plain_process_is_not_externally_launched():
    assert detect_launch({"PATH": "/usr/bin", "WORLD_SIZE": "4"}) == Launch()  # WORLD_SIZE alone is not a launch
    assert Launch().writes


def test_torchrun_environment_gives_the_global_rank():
    launch = detect_launch(TORCHRUN)
    assert launch == Launch(external=True, rank=5, world_size=8)
    assert not launch.writes
    assert detect_launch({**TORCHRUN, "RANK": "0"}).writes


def test_a_launcher_without_rank_gives_it_from_node_and_local_rank():
    environ = {"WORLD_SIZE": "4", "LOCAL_RANK": "1", "NODE_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert detect_launch(environ) == Launch(external=True, rank=3, world_size=4)


def test_a_malformed_rank_names_the_variable():
    with pytest.raises(ParameterError, match="RANK='x'"):
        detect_launch({**TORCHRUN, "RANK": "x"})


@pytest.mark.parametrize(("devices", "strategy"), [(1, "auto"), (2, "ddp_spawn"), (8, "ddp_spawn")])
def test_one_node_spawns_its_own_ranks(devices, strategy):
    assert choose_strategy(devices, 1, Launch()) == strategy


def test_torchrun_ranks_join_with_plain_ddp():
    assert choose_strategy(4, 2, detect_launch(TORCHRUN)) == "ddp"
    # one node, processes started by torchrun --nproc-per-node 2: not spawned a second time
    assert choose_strategy(2, 1, Launch(external=True, rank=1, world_size=2)) == "ddp"
    assert choose_strategy(1, 1, Launch(external=True, rank=0, world_size=1)) == "auto"


def test_several_nodes_need_a_launcher():
    with pytest.raises(ParameterError, match="--num-nodes 2: .*torchrun"):
        choose_strategy(1, 2, Launch())


def test_the_launcher_must_start_devices_times_nodes_processes():
    with pytest.raises(ParameterError, match=r"--devices 2 x --num-nodes 2 = 4 .* WORLD_SIZE=8"):
        choose_strategy(2, 2, detect_launch(TORCHRUN))


def test_num_nodes_is_a_checked_config_field():
    assert TrainConfig().num_nodes == 1
    assert TrainConfig.from_dict({"num_nodes": 3}).num_nodes == 3
    with pytest.raises(ParameterError, match="num_nodes"):
        TrainConfig(num_nodes=0)
