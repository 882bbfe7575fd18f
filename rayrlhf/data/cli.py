"""``rayrlhf data validate FILE [FILE...]``: check data files before a run spends time on them.

    rayrlhf data validate prefs.jsonl --kind preference --tokenizer ./tok --max-prompt-tokens 512
    rayrlhf data validate qa.jsonl --columns prompt=question,chosen=better,rejected=worse

Prints one line per problem to stderr (``file:line: field: reason``) and one summary line per
source to stdout; exits 1 if there was any problem, else 0. ``rayrlhf data agreement`` and
``rayrlhf data aggregate`` (several annotators' labels of the same pairs) are in
``annotators_cli``.
"""
from __future__ import annotations

import argparse
import sys

from rayrlhf.data import columns as mapping
from rayrlhf.data.annotators_cli import add_parsers, run_aggregate, run_agreement
from rayrlhf.data.formats import FORMATS, KINDS
from rayrlhf.data.validate import validate_source


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rayrlhf data", description="Data tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    formats = sorted({name for kind in FORMATS.values() for name in kind})
    validate = commands.add_parser(
        "validate",
        help="check data files and report every problem",
        description="Read each source as preference, SFT or prompt records; report every problem.",
    )
    validate.add_argument(
        "files", nargs="+", metavar="FILE",
        help="a .jsonl/.json/.parquet file, a folder of them, a saved dataset, or a hub name",
    )
    validate.add_argument("--kind", choices=("auto",) + KINDS, default="auto",
                          help="what the records are for; auto guesses from the columns")
    validate.add_argument("--format", default="auto", choices=["auto"] + formats,
                          help="the row format; auto detects it from the first row")
    validate.add_argument("--tokenizer", help="tokenizer folder or name, for the token limits")
    validate.add_argument("--max-prompt-tokens", type=int, help="report prompts longer than this")
    validate.add_argument("--max-response-tokens", type=int,
                          help="report responses longer than this")
    validate.add_argument("--split", default="train",
                          help="split of a hub dataset or saved DatasetDict")
    validate.add_argument("--limit", type=int, help="read at most this many rows of each source")
    validate.add_argument("--columns", default="", metavar="OURS=THEIRS,...",
                          help="read the file's column THEIRS as our OURS (prompt=question,chosen=better)")
    add_parsers(commands)
    return parser


def main(argv: list[str]) -> int:
    """Run ``rayrlhf data <command>``; ``argv`` is what follows ``rayrlhf data``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "agreement":
        return run_agreement(args, parser)
    if args.command == "aggregate":
        return run_aggregate(args, parser)
    limits = args.max_prompt_tokens is not None or args.max_response_tokens is not None
    if limits and not args.tokenizer:
        parser.error("--max-prompt-tokens / --max-response-tokens need --tokenizer")
    try:
        columns = mapping.parse(args.columns)
        wrong = mapping.check(columns)
    except ValueError as e:
        wrong = [str(e)]
    if wrong:
        parser.error("--" + "; ".join(wrong))
    tokenizer = None
    if args.tokenizer:
        from rayrlhf.models.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)
    failed = False
    for source in args.files:
        try:
            result, problems = validate_source(
                source, args.kind, args.format, tokenizer, args.max_prompt_tokens,
                args.max_response_tokens, args.split, args.limit, columns,
            )
        except (OSError, ValueError) as e:
            print(f"{source}: cannot read: {e}", file=sys.stderr)
            failed = True
            continue
        for problem in problems:
            print(problem, file=sys.stderr)
        print(f"{source}: {result.n_rows} rows read as {result.format}, "
              f"{len(result.records)} records, {len(problems)} problems")
        if result.dropped:
            print(f"{source}: left out {_left_out(result.dropped)}")
            if list(result.rows_by_file) != [source]:  # a folder: what each of its files left out
                for file, dropped in sorted(result.dropped_by_file.items()):
                    print(f"  {file}: left out {_left_out(dropped)}")
        failed = failed or bool(problems)
    return 1 if failed else 0


def _left_out(dropped: dict[str, int]) -> str:
    return ", ".join(f"{n} {why}" for why, n in sorted(dropped.items()))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
