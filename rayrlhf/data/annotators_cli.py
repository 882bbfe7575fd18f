"""``rayrlhf data agreement`` and ``rayrlhf data aggregate``: several annotators' files of the same pairs.

    rayrlhf data agreement panel/*.jsonl --json agreement.json
    rayrlhf data aggregate panel/*.jsonl --method weighted --groups safety_1=safety \\
        --weights weights.yaml --out prefs.jsonl

Each FILE is one annotator's labels (any preference format), joined by pair id (see
``rayrlhf.data.panel``). Problems in the files go to stderr as ``file:line: field: reason``
and exit 1 before anything is written; bad usage exits 2.
"""
from __future__ import annotations

import argparse
import json
import sys

from rayrlhf.data.aggregate import METHODS, aggregate, load_weights, parse_groups
from rayrlhf.data.agreement_report import build_report, format_report
from rayrlhf.data.panel import Joined, annotator_names, join, read_annotations
from rayrlhf.data.sources import open_rows
from rayrlhf.utils.fs import atomic_write_json, atomic_write_text


def _add_files(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="one preference file per annotator, labelling the same pairs")
    p.add_argument("--names", help="annotator names, comma-separated, one per file (default: file stems)")


def add_parsers(commands) -> None:
    """Add ``agreement`` and ``aggregate`` to the ``rayrlhf data`` subcommands."""
    agreement = commands.add_parser(
        "agreement", help="inter-annotator agreement of files that label the same pairs",
        description="Percent agreement and Cohen's kappa of every two annotators, Fleiss' kappa, "
                    "agreement with the majority of the others, by margin label and with gold.")
    _add_files(agreement)
    agreement.add_argument("--gold", action="store_true",
                           help="require gold_chosen / gold_rejected on every row (reported "
                                "whenever rows carry them)")
    agreement.add_argument("--json", metavar="OUT", help="also write the report as JSON")
    agg = commands.add_parser(
        "aggregate", help="one preference per pair from several annotators' labels",
        description="Write one explicit-format preference file: chosen is the aggregated winner, "
                    "p_chosen its probability, votes each annotator's. Ties (p = 0.5) are left "
                    "out and counted.")
    _add_files(agg)
    agg.add_argument("--method", choices=METHODS, default="majority",
                     help="majority: hard votes; mean: mean p_chosen; weighted: by group and tags")
    agg.add_argument("--groups", help="ANNOTATOR=GROUP,...: each annotator's group (weighted)")
    agg.add_argument("--weights", help="YAML {groups: {G: {tags: [..], weight: w}}, default_weight: w}")
    agg.add_argument("--tag-columns", default="unsafe,tags",
                     help="columns that tag a prompt: booleans, tag names or lists (default unsafe,tags)")
    agg.add_argument("--out", required=True, help="the output .jsonl, written atomically")


def _load(args, parser: argparse.ArgumentParser) -> Joined | None:
    """The joined annotations, or None after printing every problem to stderr."""
    if len(args.files) < 2:
        parser.error(f"{args.command} needs at least 2 files (one per annotator), got {len(args.files)}")
    try:
        names = annotator_names(args.files, args.names)
    except ValueError as e:
        parser.error(str(e))
    annotators, problems = [], []
    for source, name in zip(args.files, names):
        try:
            a, found = read_annotations(source, name)
        except (OSError, ValueError) as e:
            print(f"{source}: cannot read: {e}", file=sys.stderr)
            return None
        annotators.append(a)
        problems += found
    if not problems:
        joined, problems = join(annotators)
    if getattr(args, "gold", False):
        problems += [_no_gold(lab) for a in annotators for lab in a.labels.values() if lab.gold is None]
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        count = f"{len(problems)} problem{'' if len(problems) == 1 else 's'}"
        print(f"{count}; nothing computed", file=sys.stderr)
        return None
    return joined


def _no_gold(label):
    from rayrlhf.data.problems import Problem

    src = label.record.source
    return Problem(src.file, src.line, "gold_chosen", "missing or null; --gold needs gold_chosen and "
                   "gold_rejected on every row")


def run_agreement(args, parser: argparse.ArgumentParser) -> int:
    joined = _load(args, parser)
    if joined is None:
        return 1
    report = build_report(joined)
    print("\n".join(format_report(report)))
    if args.json:
        atomic_write_json(args.json, report)
    return 0


def _text_style(source: str) -> bool:
    """Whether the first row writes replies as strings (else as messages), to write them alike."""
    for row in open_rows(source):
        if isinstance(row.value, dict):
            return isinstance(row.value.get("chosen", row.value.get("response_j")), str)
    return False


def run_aggregate(args, parser: argparse.ArgumentParser) -> int:
    weights = groups = None
    if args.method == "weighted":
        if not (args.groups and args.weights):
            parser.error("--method weighted needs --groups and --weights")
        try:
            weights = load_weights(args.weights)
        except (OSError, ValueError) as e:
            parser.error(f"--weights: {e}")
    elif args.groups or args.weights:
        parser.error(f"--groups and --weights are for --method weighted, not {args.method}")
    joined = _load(args, parser)
    if joined is None:
        return 1
    if args.groups:
        try:
            groups = parse_groups(args.groups, [a.name for a in joined.annotators])
        except ValueError as e:
            parser.error(str(e))
    columns = tuple(c.strip() for c in args.tag_columns.split(",") if c.strip())
    result, problems = aggregate(joined, args.method, groups, weights, columns,
                                 _text_style(args.files[0]))
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problems; nothing written", file=sys.stderr)
        return 1
    atomic_write_text(args.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in result.rows))
    first = joined.annotators[0].name
    print(f"{args.out}: {len(result.rows)} pairs ({args.method}) from {len(joined.annotators)} annotators; "
          f"{result.ties} tied pairs left out; {result.flipped} differ from {first}'s label")
    if result.incomplete:
        print(f"{result.incomplete} pairs aggregated over fewer than all annotators:")
        sources = {a.name: a.source for a in joined.annotators}
        for name, n in joined.missing.items():
            if n:
                print(f"  {name} ({sources[name]}): did not label {n} pairs")
    return 0
