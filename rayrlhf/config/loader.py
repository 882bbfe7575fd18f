"""YAML + dotted overrides -> typed dataclass trees, with errors that say what to change.

    cfg = load_config(SFTConfig, "jobs/toyworld_sft.yaml", ["train.lr=1e-4"])

Every problem in a file is collected and reported at once (``ConfigError``), each with its
dotted path: unknown keys (with the closest valid name), keys that moved (with where to), wrong
types, failed ``validate()`` checks of each section.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

import yaml


class ConfigError(ValueError):
    """A configuration that cannot run; the message lists every problem found."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = problems
        head = f"invalid configuration{f' in {source}' if source else ''} ({len(problems)} problem{'s' if len(problems) != 1 else ''}):"
        super().__init__("\n".join([head] + [f"  - {p}" for p in problems]))


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-4"`` -> (["train", "lr"], 1e-4); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError([f"override {text!r}: expected KEY=VALUE, e.g. train.lr=1e-4"])
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError([f"override {text!r}: the key {key!r} is not a dotted path like train.lr"])
    value = yaml.safe_load(raw) if raw.strip() else ""
    # YAML reads 1e-4 as a string (it wants 1.0e-4); numbers written the Python way are numbers.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            pass
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str], named_lists: dict[str, str] | None = None) -> dict:
    """Set each dotted override in ``data``, in place. ``named_lists`` maps a top-level key that
    holds a list of named items to the key inside each item that overrides reach:
    ``{"stages": "config"}`` makes ``stages.sft.train.lr=1e-4`` set ``train.lr`` in the
    ``config`` of the stage named ``sft``. Sections on the way are copied before they are
    changed, so a YAML anchor's other uses (``*online``) keep the file's values."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        if named_lists and path[0] in named_lists and isinstance(data.get(path[0]), list):
            data[path[0]] = list(data[path[0]])
            node, path = _named_item(data[path[0]], path, named_lists[path[0]], text)
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = {}
            if not isinstance(child, dict):
                raise ConfigError([f"override {text!r}: {part!r} is a value, not a section"])
            node[part] = child = dict(child)
            node = child
        node[path[-1]] = value
    return data


def _named_item(items: list, path: list[str], inner: str, text: str) -> tuple[dict, list[str]]:
    """The ``inner`` mapping of the item of ``items`` named ``path[1]``, and the rest of the path."""
    names = [str(it.get("name")) for it in items if isinstance(it, dict) and it.get("name") is not None]
    index = next((i for i, it in enumerate(items) if isinstance(it, dict) and str(it.get("name")) == path[1]), None)
    if index is None:
        close = difflib.get_close_matches(path[1], names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError([f"override {text!r}: no {path[0][:-1] if path[0].endswith('s') else path[0]} named "
                           f"{path[1]!r}{hint} ({path[0]}: {', '.join(names) or 'none'})"])
    if len(path) < 3:
        raise ConfigError([f"override {text!r}: name a key of {path[1]!r}'s {inner}, e.g. "
                           f"{path[0]}.{path[1]}.train.lr=1e-4"])
    items[index] = match = dict(items[index])
    node = match.get(inner)
    if node is None:
        node = {}
    if not isinstance(node, dict):
        raise ConfigError([f"override {text!r}: {path[0]}.{path[1]}.{inner} is a value, not a section"])
    match[inner] = node = dict(node)
    return node, path[2:]


def read_yaml(path: str) -> dict:
    if not os.path.exists(path):
        raise ConfigError([f"config file not found: {path}"])
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError([f"not valid YAML: {e}"], source=path) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"the top level must be a mapping of sections, got {type(data).__name__}"], source=path)
    return data


def load_config(cls: type, path: str | None = None, overrides: list[str] | None = None, data: dict | None = None):
    """Build ``cls`` from a YAML file (or a dict) plus dotted overrides, then validate it."""
    raw = dict(data or {})
    if path:
        raw = read_yaml(path)
    raw = apply_overrides(raw, list(overrides or []), getattr(cls, "NAMED_LISTS", None))
    problems: list[str] = []
    cfg = from_dict(cls, raw, "", problems)
    if not problems:
        absolute_model_paths(cfg)
        problems.extend(validate_tree(cfg, ""))
    if problems:
        raise ConfigError(problems, source=path)
    return cfg


MODEL_PATH_FIELDS = ("name_or_path", "tokenizer", "model")


def _model_paths(cfg, where: str = ""):
    """(section, field, value, dotted key) of every non-empty model or tokenizer path in ``cfg``."""
    for f in dataclasses.fields(cfg):
        value, key = getattr(cfg, f.name), f"{where}{f.name}"
        if f.name in MODEL_PATH_FIELDS and isinstance(value, str) and value:
            yield cfg, f.name, value, key
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if dataclasses.is_dataclass(item) and not isinstance(item, type):
                yield from _model_paths(item, f"{key}[{i}]." if isinstance(value, list) else f"{key}.")


def absolute_model_paths(cfg) -> None:
    """Model and tokenizer paths that name an existing local folder become absolute, in place.

    Ray workers (Ray Train's above all) run in folders of their own, where a path relative to
    the directory the command ran in names nothing; hub names and missing paths stay as given.
    """
    for section, name, value, _ in list(_model_paths(cfg)):
        if not os.path.isabs(value) and os.path.exists(value):
            setattr(section, name, os.path.abspath(value))


def _looks_local(value: str) -> bool:
    """A path, not a hub name ("org/name" or "name")."""
    return os.path.isabs(value) or value.startswith(".") or value.count("/") > 1 or (os.sep != "/" and os.sep in value)


def check_model_paths(cfg) -> list[str]:
    """Model and tokenizer fields that name a local folder which is not there (or, for models,
    has no config.json), or a hub name that is neither cached nor reachable (``hub_problem``):
    said before any actor starts, by dotted key."""
    out = []
    for _, name, value, key in _model_paths(cfg):
        need = "tokenizer_config.json" if name == "tokenizer" else "config.json"
        if not _looks_local(value) and not os.path.isdir(value):
            problem = hub_problem(value, need, key)
            if problem:
                out.append(problem)
            continue
        if not os.path.isdir(value):
            out.append(f"{key}: {value} is not a folder (nor a hub name like org/name)")
        elif not os.path.exists(os.path.join(value, need)):
            out.append(f"{key}: {value} has no {need}; expected a Hugging Face model folder")
    return out


def check_quantization(cfg, where: str = "") -> list[str]:
    """Every ``quantization`` key set to 8bit or 4bit where bitsandbytes is not installed (the
    plan still runs without it: this is said when a run starts)."""
    from rayrlhf.engine.quant import install_problem

    out = []
    for f in dataclasses.fields(cfg):
        value, key = getattr(cfg, f.name), f"{where}{f.name}"
        if f.name == "quantization" and isinstance(value, str) and install_problem(value):
            out.append(f"{key}: {install_problem(value)}")
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if dataclasses.is_dataclass(item) and not isinstance(item, type):
                out += check_quantization(item, f"{key}[{i}]." if isinstance(value, list) else f"{key}.")
    return out


def check_before_start(command: str | None, cfg) -> None:
    """Every model path (``check_model_paths``: local folders, hub names), every quantised model
    (bitsandbytes installed) and, for ``command`` (None: no plan), the memory plan
    (``check_memory``): all problems in one ConfigError, before any actor or worker starts."""
    from rayrlhf.engine.memory import check_memory

    problems = check_model_paths(cfg) + check_quantization(cfg)
    try:
        if command:
            check_memory(command, cfg)
    except ConfigError as e:
        problems += e.problems
    if problems:
        raise ConfigError(problems)


HUB_CHECK_TIMEOUT_S = 10.0


def hub_problem(name: str, need: str, key: str) -> str | None:
    """Why the hub name ``name`` cannot be loaded, or None: it is in the local Hugging Face cache,
    or the hub answers for it within HUB_CHECK_TIMEOUT_S (one request, no retries), so that an
    unreachable hub or a mistyped name is one line before any work, not a minute of retries."""
    from huggingface_hub import HfApi, try_to_load_from_cache

    try:
        if isinstance(try_to_load_from_cache(name, need), str):
            return None
    except Exception:  # a name the hub would refuse too (bad characters): asked below
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return f"{key}: {name} is neither a local folder nor in the Hugging Face cache, and HF_HUB_OFFLINE is set"
    try:
        HfApi().model_info(name, timeout=HUB_CHECK_TIMEOUT_S)
    except Exception as e:
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        return (f"{key}: {name} is neither a local folder nor reachable on the Hugging Face hub "
                f"({type(e).__name__}{': ' + why if why else ''}); give a model folder, or download it first "
                f"(huggingface-cli download {name})")
    return None


def from_dict(cls: type, data: Any, path: str, problems: list[str]):
    """Convert ``data`` into an instance of dataclass ``cls``; append problems, never raise."""
    where = path or "(top level)"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(f"{where}: expected a mapping of {cls.__name__} fields, got {_describe(data)}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{path}.{key}" if path else str(key)
        moved = getattr(cls, "MOVED", {})
        if key in moved:
            problems.append(f"{dotted}: moved to {moved[key]}; set it there, e.g. "
                            f"{_nested(moved[key], value)}")
            continue
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(f"{dotted}: unknown key{hint} (valid keys: {', '.join(fields)})")
            continue
        kwargs[key] = _convert(hints[key], value, dotted, problems)
    missing = [
        n for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    for name in missing:
        problems.append(f"{path + '.' if path else ''}{name}: required, but not set")
    if missing:
        return None
    return cls(**kwargs)


def _convert(tp: Any, value: Any, path: str, problems: list[str]):
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            trial: list[str] = []
            out = _convert(option, value, path, trial)
            if not trial:
                return out
        names = " or ".join("null" if o is type(None) else getattr(o, "__name__", str(o)) for o in options)
        problems.append(f"{path}: expected {names}, got {_describe(value)}")
        return None
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            problems.append(f"{path}: must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path, problems)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            problems.append(f"{path}: expected a list, got {_describe(value)}")
            return []
        (item_tp, *_) = get_args(tp) or (Any,)
        return [_convert(item_tp, v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping, got {_describe(value)}")
            return {}
        _, val_tp = get_args(tp) or (str, Any)
        return {str(k): _convert(val_tp, v, f"{path}.{k}", problems) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"{path}: expected true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            problems.append(f"{path}: expected an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{path}: expected a number, got {_describe(value)}")
            return value
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            problems.append(f"{path}: expected a string, got {_describe(value)}")
        return value
    return value


def validate_tree(obj: Any, path: str) -> list[str]:
    """Run every section's ``validate()`` (returns a list of messages), depth first."""
    problems: list[str] = []
    if not dataclasses.is_dataclass(obj):
        return problems
    for f in dataclasses.fields(obj):
        child = getattr(obj, f.name)
        dotted = f"{path}.{f.name}" if path else f.name
        if dataclasses.is_dataclass(child):
            problems.extend(validate_tree(child, dotted))
        elif isinstance(child, list):
            for i, item in enumerate(child):
                problems.extend(validate_tree(item, f"{dotted}[{i}]"))
    check = getattr(obj, "validate", None)
    if callable(check):
        problems.extend(f"{path + '.' if path else ''}{msg}" for msg in check())
    return problems


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str) -> None:
    from rayrlhf.utils.fs import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def _nested(dotted: str, value: Any) -> str:
    """``"a.b.c", 2`` -> ``a: {b: {c: 2}}``, how a moved key is written in YAML."""
    head, *rest = dotted.split(".")
    if not rest:
        return f"{head}: {yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
    return f"{head}: {{{_nested('.'.join(rest), value)}}}"


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, (list, dict)):
        return f"a {type(value).__name__}"
    return f"{value!r} ({type(value).__name__})"
