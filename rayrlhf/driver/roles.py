"""The actors of a PPO run, placed by ``rayrlhf.placement`` from the config's resources.

    policy      ModelWorker(kind=policy) x N, one torch.distributed group (DDP or FSDP)
    critic      ModelWorker(kind=critic) x N, its own group (ppo.advantage: gae only)
    reference   ModelWorker(kind=reference) x R (rows split across replicas)
    reward/<n>  RewardModelWorker x replicas per reward model; rule-based sources run here
    rollout     RolloutWorker x M, behind ``RolloutFleet``
"""
from __future__ import annotations

import ray
import torch

from rayrlhf.actors.batch import split_rows
from rayrlhf.actors.model_worker import ModelWorker
from rayrlhf.actors.judge_reward import JudgeRewardWorker
from rayrlhf.actors.reward import FunctionReward, RewardModelWorker
from rayrlhf.config.ppo import resolve_derived
from rayrlhf.driver.fleet import RolloutFleet, get
from rayrlhf.engine.settings import CriticLoss, EngineSettings, PolicyLoss, RoleSpec
from rayrlhf.placement import Leader
from rayrlhf.rollout.common import derive_seed
from rayrlhf.rollout.worker import RolloutWorker


class Roles:
    def __init__(self, cfg, run_name: str, *, policy: RoleSpec | None, critic: RoleSpec | None,
                 reference: RoleSpec | None, timeout: float, max_restarts: int):
        """Place and start the actors ``cfg`` asks for. Without ``policy`` there is no trainer
        (best-of-K at inference time), without ``critic`` no critic, without ``reference`` no
        reference model (rejection sampling needs neither)."""
        from rayrlhf.placement import RayActorGroup, create_placement_groups, plan_placement

        self.cfg = cfg
        res = cfg.resources
        wanted = ["rollout"] + (["trainer"] if policy else []) + (["critic"] if critic else [])
        wanted += ["reference"] if reference else []
        wanted += [f"reward/{r.name}" for r in cfg.rewards if not r.function]
        self.plan = plan_placement(res, roles=[r for r in res.roles() if r in wanted])
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        line, warning = thread_layout(res, [r for r in res.roles() if r in wanted],
                                      int(nodes[0]["Resources"].get("CPU", 0)) if len(nodes) == 1 else None)
        print(f"[rayrlhf] {line}" + (f"\n[rayrlhf] warning: {warning}" if warning else ""), flush=True)
        self.pgs = create_placement_groups(self.plan, run_name, timeout_s=timeout)
        self.run_name = run_name
        seed = cfg.run.seed

        def group(role, cls, kwargs_of_rank):
            # Frozen roles (reference, reward models) hold nothing a run changes: Ray restarts a
            # dead one in its bundle and retries its calls, with the same answers.
            frozen = role == "reference" or role.startswith("reward/")
            return RayActorGroup(cls, role, self.plan.roles[role], self.pgs[self.plan.group_of(role)],
                                 run_name, kwargs_of_rank=kwargs_of_rank, timeout_s=timeout,
                                 restarts=max_restarts if frozen else 0)

        def model_kwargs(kind, section, spec: RoleSpec, world):
            path = getattr(section, "name_or_path", None) or cfg.policy.name_or_path
            return lambda rank: dict(kind=kind, model_path=path, engine=spec.engine, loss=spec.loss, rank=rank,
                                     world=world, name=f"{run_name}/{kind}/{rank}",
                                     trust_remote_code=section.trust_remote_code, seed=seed,
                                     num_threads=_threads(res, kind))

        self.policy = (group("trainer", ModelWorker, model_kwargs("policy", cfg.policy, policy, res.trainer.num_workers))
                       if policy else None)
        self.critic = (group("critic", ModelWorker, model_kwargs("critic", cfg.critic, critic, res.critic.num_workers))
                       if critic else None)
        self.reference = (group("reference", ModelWorker, model_kwargs("reference", cfg.reference, reference, 1))
                          if reference else None)
        for g in (self.policy, self.critic):
            if g is not None:
                _join_group(g)
        # Rank 0 of the policy as one handle: calls that gather sharded weights reach every rank.
        self.policy_leader = Leader(self.policy, ModelWorker.COLLECTIVE) if policy else None
        self.sources: dict = {}
        from rayrlhf.engine.memory import reward_rows

        score_rows = reward_rows(cfg)  # what the memory plan counts
        for r in cfg.rewards:
            if r.function:
                self.sources[r.name] = FunctionReward(r.name, r.function, r.args)
                continue
            role = f"reward/{r.name}"

            def kwargs(rank, r=r, role=role):
                out = dict(name=f"{run_name}/reward/{r.name}/{rank}", model_path=r.model, dtype=cfg.policy.dtype,
                           quantization=r.quantization, micro_batch=score_rows, num_threads=_threads(res, role),
                           wants_gpu=res.rewards[r.name].gpus_per_worker > 0,
                           fake_gpus=res.fake_gpus, config_key=f"resources.rewards.{r.name}.gpus_per_worker")
                if r.judge:  # an AI judge (RLAIF) instead of a scalar reward model
                    return dict(out, template=r.judge, reference_field=r.reference_field, seed=seed)
                return dict(out, normalize=r.normalize)

            self.sources[r.name] = group(role, JudgeRewardWorker if r.judge else RewardModelWorker, kwargs)
        self.gold = dict(cfg.gold)
        rollout_role = self.plan.roles["rollout"]
        pg = self.pgs[self.plan.group_of("rollout")]
        rcfg = cfg.rollout
        self._rollout_factory = RayActorGroup.factory(RolloutWorker, "rollout", rollout_role, pg, run_name)
        self.fleet = RolloutFleet(
            lambda rank: self._rollout_factory(rank, dict(model_path=cfg.policy.name_or_path, cfg=rcfg,
                                                          trust_remote_code=cfg.policy.trust_remote_code,
                                                          name=f"{run_name}/rollout/{rank}",
                                                          threads=res.rollout.threads)),
            res.rollout.num_workers, rcfg.n_samples, seed, timeout, max_restarts, placement=self._rollout_factory)
        self.fleet.wait_ready()
        self._eval_seed = derive_seed(seed, 0xE7A1)

    def score_all(self, prompts, texts, meta, timeout: float) -> dict[str, torch.Tensor]:
        """Every source's raw scores (B,), reward-model replicas splitting the rows."""
        refs, local = {}, {}
        for name, src in self.sources.items():
            if isinstance(src, FunctionReward):
                local[name] = src.score(prompts, texts, meta)
                continue
            shards = split_rows(len(texts), src.world_size)
            refs[name] = (shards, [a.score.remote([prompts[i] for i in rows], [texts[i] for i in rows],
                                                  [meta[i] for i in rows])
                                   for a, rows in zip(src.actors, shards)])
        out = {name: torch.tensor(v, dtype=torch.float32) for name, v in local.items()}
        for name, (shards, rs) in refs.items():
            parts = get(rs, timeout, f"reward/{name} in phase reward")
            out[name] = torch.tensor([x for part in parts for x in part], dtype=torch.float32)
        return {name: out[name] for name in self.sources}

    def eval_generate(self, prompt_ids: list[list[int]], n: int = 1, purpose: int = 0) -> list[list]:
        """``n`` samples per prompt, seeded by (``purpose``, shard start): the same prompts on the
        same fleet give the same samples from the same weights, every evaluation. Each shard's
        samples, in prompt order; a rollout worker that dies meanwhile is replaced and its shard
        redone (``RolloutFleet.generate``)."""
        return self.fleet.generate(prompt_ids, n, lambda start: derive_seed(self._eval_seed, purpose, start))

    def shutdown(self) -> None:
        from rayrlhf.placement import RayActorGroup

        self.fleet.shutdown()
        groups = [self.policy, self.critic, self.reference] + list(self.sources.values())
        for g in groups:
            if isinstance(g, RayActorGroup):
                g.kill()
        self.pgs.remove()


def thread_layout(res, roles: list[str], node_cpus: int | None) -> tuple[str, str | None]:
    """The torch threads of each role's workers as one line, and a warning when the cluster is
    one node (``node_cpus`` given), the roles' threads together exceed its cores and some worker
    runs several (in async PPO every role can compute at once; one-thread workers only take
    turns, while a team of OpenMP threads on shared cores waits at each barrier for its slowest)."""
    every = res.roles()
    per = {role: (_threads(res, role), every[role].num_workers) for role in roles}
    line = "torch threads per worker: " + ", ".join(
        f"{role} {n}" + (f" (x{w} workers)" if w > 1 else "") for role, (n, w) in per.items())
    total = sum(n * w for n, w in per.values())
    if node_cpus and total > node_cpus and any(n > 1 for n, _ in per.values()):
        return line, (f"{total} threads over this node's {node_cpus} cores: roles that compute at the same time "
                      f"will wait for each other's threads; lower resources.<role>.threads (or cpus_per_worker)")
    return line, None


def _threads(res, role: str) -> int:
    """A worker's torch threads: ``resources.<role>.threads``, else its CPUs rounded (a rollout
    worker: rounded down, as its Ray reservation gives them), at least 1. ``role`` is a
    resources role or ``policy`` (the trainer)."""
    section = res.rewards.get(role.split("/", 1)[1]) if role.startswith("reward/") else getattr(
        res, {"policy": "trainer"}.get(role, role))
    cpus = int(section.cpus_per_worker) if role == "rollout" else int(round(section.cpus_per_worker))
    return section.threads or max(1, cpus)


def _join_group(group) -> None:
    if group.world_size == 1:
        return
    # Rank 0 starts the store first and keeps it: on one node it listens on 127.0.0.1.
    nodes = [w["node_id"] for w in group.where()]
    addr, port = ray.get(group.actors[0].host_group.remote("train", nodes))
    ray.get([a.setup_group.remote(addr, port) for a in group.actors])


def _engine(cfg, section, role: str, key: str, **kwargs) -> EngineSettings:
    res = cfg.resources.roles()[role]
    return EngineSettings.from_model(resolve_derived(section, cfg.policy), role=role, config_key=key,
                                     wants_gpu=res.gpus_per_worker > 0, fake_gpus=cfg.resources.fake_gpus, **kwargs)


def build_roles(cfg, run_name: str) -> Roles:
    """The actors of a PPO run: policy, critic (GAE only), reference, reward sources, rollout fleet."""
    p = cfg.ppo
    train = dict(max_grad_norm=p.max_grad_norm, micro_batch_size=p.per_worker_micro_batch_size,
                 forward_micro_batch_size=p.forward_micro_batch_size)
    policy = RoleSpec(_engine(cfg, cfg.policy, "trainer", "policy", lr=p.actor_lr, **train), PolicyLoss(
        objective="ppo", temperature=cfg.rollout.temperature or 1.0, clip_eps=p.clip_eps, clip_eps_high=p.clip_eps_high,
        dual_clip=p.dual_clip, kl_in=p.kl_in, kl_coef=p.kl_coef, kl_estimator=p.kl_estimator_used,
        entropy_coef=p.entropy_coef))
    critic = RoleSpec(_engine(cfg, cfg.critic, "critic", "critic", lr=p.critic_lr, **train),
                      CriticLoss(p.value_clip)) if p.uses_critic else None
    if critic is None and cfg.critic != type(cfg.critic)():
        print(f"[rayrlhf] ppo.advantage: {p.advantage} trains no critic; the critic section is not used", flush=True)
    # Under LoRA on the reference's weights, the policy computes reference logprobs itself.
    reference = None if cfg.reference_from_policy else RoleSpec(
        _engine(cfg, cfg.reference, "reference", "reference", forward_micro_batch_size=p.forward_micro_batch_size))
    return Roles(cfg, run_name, policy=policy, critic=critic, reference=reference,
                 timeout=p.call_timeout_s, max_restarts=p.max_worker_restarts)


def build_rs_roles(cfg, run_name: str, train: bool = True) -> Roles:
    """The actors of rounds of sampling: the trainer (when ``train``), the reference (objective
    dpo, unless the policy's LoRA base is the reference), reward sources, rollout fleet."""
    r = cfg.rs
    policy = RoleSpec(_engine(cfg, cfg.policy, "trainer", "policy", lr=r.lr, max_grad_norm=r.max_grad_norm,
                              micro_batch_size=r.per_worker_micro_batch_size,
                              forward_micro_batch_size=r.per_worker_micro_batch_size),
                      PolicyLoss(objective=r.objective, temperature=1.0, dpo=cfg.dpo, rrhf=cfg.rrhf))
    reference = RoleSpec(_engine(cfg, cfg.reference, "reference", "reference",
                                 forward_micro_batch_size=r.per_worker_micro_batch_size)) \
        if train and cfg.uses_reference else None
    return Roles(cfg, run_name, policy=policy if train else None, critic=None, reference=reference,
                 timeout=r.call_timeout_s, max_restarts=r.max_worker_restarts)
