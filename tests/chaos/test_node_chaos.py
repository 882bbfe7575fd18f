"""A node removed from a running cluster (``ray.cluster_utils.Cluster``): PPO's rollout workers
are spread over two rollout nodes; the node of one of them goes away mid-run. Ray moves that
worker's placement-group bundle to the node left, the fleet starts a replacement there, hands it
the weights the others serve (verified), re-sends its shards with the same seeds, and the run
is the uninterrupted run on the same cluster, bitwise."""
import pytest
import ray
from ray.cluster_utils import Cluster

from rayrlhf.driver.ppo_stage import run_ppo
from tests.chaos import runs, tally
from tests.chaos.test_ppo_chaos import FIRST_TRAIN_CALL, LAST_TRAIN_CALL, PROMPTS, STEPS, _cfg
from tests.driver import faults
from tests.driver.tiny import tiny_world
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

NODE_TYPES = {"trainer": "main_node", "critic": "main_node", "reference": "main_node", "rollout": "rollout_node"}
CALL = tally.pick("node-removed", FIRST_TRAIN_CALL, LAST_TRAIN_CALL)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head node for the trainer, critic and reference, and two small rollout nodes."""
    world = tiny_world(tmp_path_factory.mktemp("chaos_node_world"))
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "resources": {"main_node": 1}, "include_dashboard": False})
    for _ in range(2):
        c.add_node(num_cpus=1, resources={"rollout_node": 1})
    ray.init(address=c.address)
    try:
        yield c, world
    finally:
        ray.shutdown()
        c.shutdown()


def _node_of(actor) -> str:
    return ray.get(actor.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()), timeout=30)


def _remove_node_of(c: Cluster, removed: list):
    def remove(actor):
        node = _node_of(actor)
        [target] = [n for n in c.worker_nodes if n.node_id == node]  # a rollout node, never the head
        c.remove_node(target)
        wait_for(lambda: faults.is_dead(actor), 120, "the removed node's rollout worker to be gone")
        removed.append(node)
        tally.injected()
    return remove


@pytest.fixture(scope="module")
def full_run(cluster, tmp_path_factory):
    _, world = cluster
    run_dir = str(tmp_path_factory.mktemp("runs") / "full")
    faults.reset()
    run_ppo(_cfg(world, run_dir, node_types=NODE_TYPES))
    return run_dir


def test_a_removed_node_s_rollout_worker_is_replaced_on_the_node_left(cluster, full_run, tmp_path):
    c, world = cluster
    rollout_nodes = {n.node_id for n in c.worker_nodes}
    run_dir = str(tmp_path / "nd")
    removed = []
    faults.reset(kill_at=CALL, kill_actor="nd/rollout/1", kill_with=_remove_node_of(c, removed))
    summary = run_ppo(_cfg(world, run_dir, node_types=NODE_TYPES))
    assert faults.STATE["calls"] >= CALL and len(removed) == 1 and removed[0] in rollout_nodes
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert rollout_nodes & alive == rollout_nodes - set(removed)  # gone for good; the other serves
    assert summary["rollout/worker_restarts"] == 1
    runs.same_run(run_dir, full_run, STEPS * PROMPTS)
    tally.survived()
