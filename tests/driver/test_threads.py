"""Each role's torch threads: resources.<role>.threads, else its CPU reservation; the layout
line a run prints, and its warning when multi-thread workers oversubscribe one node."""
import pytest

from rayrlhf.config.resources import ResourcesSection, RoleResources
from rayrlhf.driver.roles import _threads, thread_layout

ROLES = ["trainer", "critic", "rollout", "reference"]


def test_threads_default_to_the_reservation_and_can_be_set_per_role():
    res = ResourcesSection(trainer=RoleResources(cpus_per_worker=2.0), critic=RoleResources(cpus_per_worker=0.25),
                           rollout=RoleResources(cpus_per_worker=1.9), reference=RoleResources(threads=3))
    assert [_threads(res, r) for r in ("policy", "critic", "reference")] == [2, 1, 3]
    line, warning = thread_layout(res, ROLES, node_cpus=8)
    assert line == "torch threads per worker: trainer 2, critic 1, rollout 1, reference 3" and warning is None
    res.trainer = RoleResources(num_workers=2, cpus_per_worker=0.5, threads=2)
    res.rollout.threads = 4
    line, warning = thread_layout(res, ROLES, node_cpus=8)
    assert line == "torch threads per worker: trainer 2 (x2 workers), critic 1, rollout 4, reference 3"
    assert warning.startswith("12 threads over this node's 8 cores")
    assert thread_layout(res, ROLES, node_cpus=None)[1] is None  # several nodes: roles may sit apart


def test_one_thread_workers_on_few_cores_take_turns_without_a_warning():
    res = ResourcesSection(trainer=RoleResources(cpus_per_worker=0.5), critic=RoleResources(cpus_per_worker=0.25),
                           rollout=RoleResources(cpus_per_worker=0.5), reference=RoleResources(cpus_per_worker=0.25))
    assert thread_layout(res, ROLES, node_cpus=2) == (
        "torch threads per worker: trainer 1, critic 1, rollout 1, reference 1", None)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_threads_must_be_a_whole_number_of_at_least_one(bad):
    msgs = RoleResources(threads=bad).validate()
    assert msgs == [f"threads: must be a whole number of at least 1 or null (from cpus_per_worker), got {bad!r}"]
