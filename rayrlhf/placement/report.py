"""The table ``rayrlhf plan`` prints."""
from __future__ import annotations

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
