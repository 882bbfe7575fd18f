"""The tables ``rayrlhf plan`` prints: placement (format_plan) and memory (format_memory)."""
from __future__ import annotations

from rayrlhf.engine.memory_model import CUDA_CONTEXT_BYTES, GIB
from rayrlhf.placement.plan import Plan, add_resources, format_resources, node_resources

SHORT_ID = 8


def format_plan(plan: Plan, nodes: dict[str, list[str]] | None = None,
                node_info: list[dict] | None = None) -> str:
    """One row per worker: placement group, strategy, bundle, bundle resources, (node),
    role/rank, what the actor asks for; then totals and, with ``nodes``, the node legend.

    ``nodes`` maps each group to the node id of each of its bundles (``locate_bundles`` or
    ``PlacementGroups.bundle_nodes``); ``node_info`` (``ray.nodes()``) adds IPs and sizes.
    """
    head = ["placement group", "strategy", "bundle", "bundle resources"]
    head += (["node"] if nodes else []) + ["role/rank", "actor asks for"]
    rows = []
    for g in plan.groups.values():
        for i, bundle in enumerate(g.bundles):
            first = True
            for role in g.roles:
                for w in plan.roles[role].workers:
                    if w.bundle_index != i:
                        continue
                    left = [g.name if i == 0 and first else "", g.strategy if i == 0 and first else "",
                            str(i) if first else "", format_resources(bundle) if first else ""]
                    if nodes:
                        node = (nodes.get(g.name) or [""] * len(g.bundles))[i]
                        left.append((node[:SHORT_ID] or "?") if first else "")
                    rows.append(left + [f"{role}/{w.rank}", format_resources(w.demand())])
                    first = False
    widths = [max(len(r[c]) for r in rows + [head]) for c in range(len(head))]

    def line(r: list[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip()

    out = [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]
    n_bundles = sum(len(g.bundles) for g in plan.groups.values())
    out.append("")
    out.append(f"total: {len(plan.groups)} placement group{'s' if len(plan.groups) != 1 else ''}, "
               f"{n_bundles} bundles, {sum(r.world_size for r in plan.roles.values())} actors; "
               f"{format_resources(plan.demand())}")
    if not nodes:
        out.append("nodes: not resolved (bundles only)")
        return "\n".join(out)
    info = {n.get("NodeID"): n for n in node_info or []}
    load = _per_node(plan, nodes)
    out.append("nodes (id, address, node resources; what the plan puts there):")
    for node_id, demand in load.items():
        n = info.get(node_id, {})
        extra = f"  {n.get('NodeManagerAddress', '')}  {format_resources(node_resources(n))}" if n else ""
        out.append(f"  {(node_id or '?')[:SHORT_ID]}  {node_id or 'not placed'}{extra};  "
                   f"plan: {format_resources(demand)}")
    return "\n".join(out)


def _per_node(plan: Plan, nodes: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name, ids in nodes.items():
        for bundle, node in zip(plan.groups[name].bundles, ids):
            out[node] = add_resources(out.get(node, {}), bundle)
    return out


def format_train_workers(scaling) -> str:
    """The placement of an sft/rm stage: Ray Train's workers, each a bundle of its own."""
    res = format_resources({"CPU": scaling.cpus_per_worker, "GPU": 1.0 if scaling.use_gpu else 0.0})
    return (f"Ray Train workers: {scaling.num_workers} x {{{res}}} (scaling.num_workers, scaling.use_gpu, "
            f"scaling.cpus_per_worker); "
            f"total {format_resources({'CPU': scaling.cpus_per_worker * scaling.num_workers, 'GPU': scaling.num_workers if scaling.use_gpu else 0})}")


def format_fleet(what: str, role, keys: str) -> str:
    """The workers of a rollout fleet (label's judge, revise's policy and judge): ``role`` is a
    RoleResources, ``keys`` the config section it is read from (resources.rollout)."""
    res = format_resources({"CPU": role.cpus_per_worker, "GPU": role.gpus_per_worker})
    total = format_resources({"CPU": role.cpus_per_worker * role.num_workers,
                              "GPU": role.gpus_per_worker * role.num_workers})
    return (f"{what}: rollout fleet of {role.num_workers} x {{{res}}} ({keys}.num_workers, "
            f"{keys}.gpus_per_worker, {keys}.cpus_per_worker); total {total}")


def format_memory(plan) -> str:
    """One row per role (its fullest GPU), GiB with 1 decimal; then shared GPUs, notes, problems."""
    head = ["role", "model", "params", "weights", "grads", "optim", "activations", "kv cache", "total", "GPU"]
    table = []
    for role in plan.roles():
        mine = [r for r in plan.rows if r.role == role]
        row = max(mine, key=lambda r: r.gpu_total)
        gpus = sorted({r.gpu for r in mine if r.gpu is not None})
        ckpt = row.activations_checkpointed if row.activations == row.activations_full else row.activations_full
        other = "ckpt" if row.activations == row.activations_full and ckpt != row.activations else "no ckpt"
        acts = f"{_gib(row.activations)} ({other} {_gib(ckpt)})" if row.grads and ckpt != row.activations else _gib(row.activations)
        kv = f"{_gib(row.kv_cache)} ({_tokens(row.kv_tokens)} tok)" if row.kv_cache else "-"
        where = (f"{_ranges(gpus)}: {_gib(row.gpu_total)}/{_gib(plan.gpu_memory)}"
                 + (" OVER" if row.gpu_total > plan.gpu_memory else "")) if gpus else "CPU"
        table.append([role, _short(row.model), _params(row.params), _gib(row.weights), _gib(row.grads),
                      _gib(row.optimizer), acts, kv, _gib(row.total), where])
    widths = [max(len(r[c]) for r in table + [head]) for c in range(len(head))]
    line = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
    out = [f"memory plan ({plan.command}; GiB; total includes {_gib(CUDA_CONTEXT_BYTES)} GiB of CUDA context per "
           f"GPU process; GPU: the fullest GPU of the role, all roles on it)",
           line(head), line(["-" * w for w in widths])] + [line(r) for r in table]
    host = {r.role: r.host for r in plan.rows if r.host and r.gpu is not None}
    for role, b in host.items():
        out.append(f"{role}: {_gib(b)} GiB of host memory per worker (cpu_offload)")
    out.extend(_shared_gpus(plan))
    out.extend(f"note: {n}" for n in plan.notes)
    problems = plan.problems()
    out.extend(f"problem: {p}" for p in problems)
    on_gpu = any(r.gpu is not None for r in plan.rows)
    out.append(f"memory: {len(problems)} role{'s' if len(problems) != 1 else ''} do{'es' if len(problems) == 1 else ''} "
               "not fit" if problems else "memory: every GPU role fits" if on_gpu else
               "memory: no role uses a GPU (CPU estimates only, never refused)")
    return "\n".join(out)


def _shared_gpus(plan) -> list[str]:
    by_gpu: dict[int, list] = {}
    for r in plan.rows:
        if r.gpu is not None:
            by_gpu.setdefault(r.gpu, []).append(r)
    lines: list[tuple[list[int], str]] = []
    for gpu, rows in sorted(by_gpu.items()):
        if len(rows) < 2:
            continue
        text = " + ".join(f"{r.role} {_gib(r.total)}" for r in rows) + f" = {_gib(rows[0].gpu_total)}/{_gib(plan.gpu_memory)}"
        if lines and lines[-1][1] == text and lines[-1][0][-1] == gpu - 1:
            lines[-1][0].append(gpu)
        else:
            lines.append(([gpu], text))
    return [f"shared {_ranges(ids)}{' (each)' if len(ids) > 1 else ''}: {text}" for ids, text in lines]


def _gib(b: int) -> str:
    return f"{b / GIB:.1f}"


def _params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def _tokens(n: int) -> str:
    return f"{n / 1e3:.0f}k" if n >= 1e4 else str(n)


def _short(name: str) -> str:
    return name if len(name) <= 36 else "..." + name[-33:]


def _ranges(ids: list[int]) -> str:
    out, start = [], None
    for i, g in enumerate(ids):
        if start is None:
            start = g
        if i + 1 == len(ids) or ids[i + 1] != g + 1:
            out.append(f"{start}" if start == g else f"{start}-{g}")
            start = None
    return "GPU " + ",".join(out)
