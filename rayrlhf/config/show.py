"""``rayrlhf config show --command X [--config F]``: every key of a command's config, with its
default (or the file's value) and the docstring written under its field.

    rayrlhf config show --command sft
    rayrlhf config show --command ppo --config jobs/toyworld_ppo.yaml ppo.kl_coef=0.05
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import sys
import textwrap
import typing
from typing import Any, get_args, get_origin

import yaml

from rayrlhf.config.commands import COMMANDS, config_class
from rayrlhf.config.loader import ConfigError, load_config


@functools.lru_cache(maxsize=None)
def _own_docstrings(cls: type) -> dict[str, str]:
    """``{field: docstring}`` of the string literals written right under each annotated field in
    ``cls``'s own source (not its bases')."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    node = next((n for n in ast.parse(source).body if isinstance(n, ast.ClassDef)), None)
    if node is None:
        return {}
    out, body = {}, node.body
    for stmt, after in zip(body, body[1:] + [None]):
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            out[stmt.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return out


def field_docstrings(cls: type) -> dict[str, str]:
    """``{field: docstring}`` of a dataclass, its own fields' docstrings over its bases'."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            out.update(_own_docstrings(klass))
    return out


def _dataclass_of(tp: Any) -> type | None:
    """The dataclass in ``tp`` (``Section``, ``Optional[Section]``), or None."""
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def _fmt(value: Any) -> str:
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    try:
        return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()
    except yaml.YAMLError:  # a tuple or another Python value YAML has no tag for
        return repr(value)


def config_keys(cls: type, cfg: Any = None, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, value as YAML, docstring) of every leaf of ``cfg`` (default: ``cls()``), depth
    first; a list of sections is shown item by item (``stages[0].name``), an empty one by the
    fields of its item (``stages[].name``)."""
    cfg = cls() if cfg is None else cfg
    hints, docs, out = typing.get_type_hints(cls), field_docstrings(cls), []
    for f in dataclasses.fields(cls):
        key, value, doc = f"{prefix}{f.name}", getattr(cfg, f.name), docs.get(f.name, "")
        section = _dataclass_of(hints[f.name])
        if section is not None and (value is None or dataclasses.is_dataclass(value)):
            if value is None:
                out.append((key, "null", doc + (f" (a section: {section.__name__})" if doc else section.__name__)))
            else:
                out += config_keys(section, value, f"{key}.")
            continue
        item = get_args(hints[f.name])[0] if get_origin(hints[f.name]) is list and get_args(hints[f.name]) else None
        if item is not None and dataclasses.is_dataclass(item):
            out.append((key, f"[{len(value)} item{'s' if len(value) != 1 else ''}]" if value else "[]", doc))
            if value:
                for i, v in enumerate(value):
                    out += config_keys(item, v, f"{key}[{i}].")
            else:
                out += [(k, v, d) for k, v, d in config_keys(item, None, f"{key}[].")]
            continue
        out.append((key, _fmt(value), doc))
    return out


def format_keys(rows: list[tuple[str, str, str]]) -> str:
    width = min(max((len(k) + len(v) + 3 for k, v, _ in rows), default=0), 60)
    lines = []
    for key, value, doc in rows:
        head = f"{key} = {value}"
        lines.append(f"{head.ljust(width)}  # {doc}" if doc else head)
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rayrlhf config", description="Configuration tools.")
    sub = p.add_subparsers(dest="action", required=True)
    s = sub.add_parser("show", help="every key of a command's config with its default (or the file's value) "
                       "and its meaning")
    s.add_argument("--command", required=True, choices=COMMANDS, help="the command whose config to show")
    s.add_argument("--config", default=None, help="YAML file: show its values (defaults for keys it leaves out)")
    s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-4")
    return p


def main(argv: list[str] | None = None, out=None) -> int:
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    cls = config_class(args.command)
    try:
        cfg = load_config(cls, args.config, args.overrides) if (args.config or args.overrides) else cls()
    except ConfigError as e:
        print(f"rayrlhf config show: {e}", file=sys.stderr)
        return 2
    where = f"values of {args.config}" if args.config else "defaults"
    rows = config_keys(cls, cfg)
    if args.command in ("pipeline", "compare") and cfg.stages:
        try:
            rows = _with_stage_keys(args.command, args.config, args.overrides, rows)
        except ConfigError as e:
            print(f"rayrlhf config show: {e}", file=sys.stderr)
            return 2
    print(f"# rayrlhf {args.command}: {cls.__name__}, {where}", file=out)
    print(format_keys(rows), file=out)
    return 0


def _with_stage_keys(command: str, path: str | None, overrides: list[str], rows: list) -> list:
    """The pipeline's own keys, then every key of each stage's resolved config as
    ``stages.<name>.<key>`` (the spelling of a command-line override)."""
    if command == "pipeline":
        from rayrlhf.driver.pipeline import load_pipeline

        pipe, _, configs = load_pipeline(path, overrides)
    else:
        from rayrlhf.driver.compare import load_compare

        pipe, _, configs = load_compare(path, overrides)[1:4]
    rows = [r for r in rows if not (r[0].startswith("stages[") and r[0].endswith("].config"))]
    for spec, stage_cfg in zip(pipe.stages, configs):
        rows.append((f"stages.{spec.name}", f"({spec.kind})", "the resolved config of this stage:"))
        rows += config_keys(type(stage_cfg), stage_cfg, f"stages.{spec.name}.")
    return rows
