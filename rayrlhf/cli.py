"""The `rayrlhf` command.

    rayrlhf pipeline --config jobs/toyworld_quickstart.yaml      # stages in order, restartable
    rayrlhf report runs/quickstart                               # index.html + plots of a run
    rayrlhf sft --config jobs/toyworld_sft.yaml train.lr=1e-4    # one stage, dotted overrides
    rayrlhf rm --config jobs/toyworld_rm_helpfulness.yaml --resume
    rayrlhf dpo --config jobs/toyworld_dpo.yaml                  # DPO of the SFT policy on preference pairs
    rayrlhf rrhf --config jobs/toyworld_rrhf.yaml                # RRHF on ranked lists of responses
    rayrlhf ppo --config jobs/toyworld_ppo.yaml                  # PPO on Ray actors
    rayrlhf rs --config jobs/toyworld_rs.yaml                    # best-of-K rejection sampling rounds
    rayrlhf best-of-k --config jobs/toyworld_rs.yaml rs.k=16     # select the best of K, no training
    rayrlhf label --config jobs/toyworld_label.yaml              # an AI judge labels preference pairs
    rayrlhf revise --config jobs/toyworld_revise.yaml            # critique and revision by a constitution
    rayrlhf compare --config jobs/toyworld_compare.yaml          # methods on one gold reward-KL frontier
    rayrlhf data validate prefs.jsonl --kind preference          # check a file, train nothing
    rayrlhf toyworld --out runs/toyworld                         # the bundled task's data + model
    rayrlhf config show --command ppo                            # every key, its default and meaning
    rayrlhf plan --config jobs/toyworld_ppo.yaml                 # which actor runs where
    rayrlhf submit --address http://127.0.0.1:8265 --config F    # as a Ray job
    rayrlhf scale --run NAME --rollout-workers 4                 # resize a going run's rollout fleet
    rayrlhf export runs/quickstart/sft --step 40                 # a checkpoint as a plain HF folder
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from rayrlhf.config.loader import ConfigError
from rayrlhf.data.validate import DataValidationError
from rayrlhf.utils.fs import ActorLostError, CheckpointWriteError


def package_version() -> str:
    """The installed distribution's version, else rayrlhf.__version__, else "unknown"."""
    from importlib import metadata

    try:
        return metadata.version("rayrlhf")
    except metadata.PackageNotFoundError:
        import rayrlhf

        return getattr(rayrlhf, "__version__", "unknown")


def _stage_parser(sub, name: str, help_text: str):
    p = sub.add_parser(name, help=help_text)
    p.add_argument("--config", required=True, help="YAML config file")
    p.add_argument("--resume", action="store_true", help="continue the run in the same run folder")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-4")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rayrlhf", description="RLHF on Ray: SFT, reward models, RL.")
    parser.add_argument("--version", action="version", version=f"rayrlhf {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    _stage_parser(sub, "sft", "supervised fine-tuning on demonstrations (Ray Train)")
    _stage_parser(sub, "rm", "a reward model on preference pairs (Ray Train)")
    _stage_parser(sub, "dpo", "direct preference optimisation of a causal LM on preference pairs (Ray Train)")
    _stage_parser(sub, "rrhf", "RRHF: rank ranked lists (or pairs) by the policy's own log-probabilities (Ray Train)")
    _stage_parser(sub, "ppo", "PPO with a critic, GAE and a KL penalty, on Ray actors")
    _stage_parser(sub, "rs", "best-of-K rejection sampling in rounds, fine-tuning on the kept samples")
    p = sub.add_parser("best-of-k", help="score K samples per prompt and keep the best; trains nothing")
    p.add_argument("--config", required=True, help="YAML config (the rs config: policy, data, rewards, rs.k)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. rs.k=16")
    p = sub.add_parser("label", help="an AI judge (RLAIF) labels preference pairs: soft labels, both orders averaged")
    p.add_argument("--config", required=True, help="YAML config (judge, data.pairs, label.template)")
    p.add_argument("--resume", action="store_true", help="label again into the same run folder")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. label.orders=first")
    p = sub.add_parser("revise", help="critique and revision (Constitutional AI): the policy revises responses "
                                      "until a judge accepts them; revised SFT rows and preference pairs")
    p.add_argument("--config", required=True, help="YAML config (policy, judge, data.sft or data.prompts, revise)")
    p.add_argument("--resume", action="store_true", help="revise again into the same run folder")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. revise.max_rounds=3")
    p = sub.add_parser("pipeline", help="run the stages of a pipeline config in order")
    p.add_argument("--config", required=True)
    p.add_argument("--rerun", metavar="STAGE", default=None,
                   help="run this stage and every later one anew (their old folders are kept as "
                        "<stage>.replaced-N); needed after editing the config of a stage that has run; "
                        "with --only, only that stage: --only S --rerun S")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--only", metavar="STAGE", default=None,
                       help="run just this stage (every earlier one must have finished)")
    which.add_argument("--from", dest="start", metavar="STAGE", default=None,
                       help="skip the stages before this one (they must have finished); run it and the later ones")
    p.add_argument("overrides", nargs="*", help="dotted overrides; stages.<name>.<key>=VALUE sets a key of "
                   "that stage's config, e.g. stages.sft.train.lr=1e-4")
    p = sub.add_parser("compare", help="methods from one starting policy, each swept over a KL strength, on one "
                       "held-out gold reward-KL frontier (a pipeline, then one evaluation of every policy)")
    p.add_argument("--config", required=True)
    p.add_argument("--rerun", metavar="STAGE", default=None,
                   help="run this stage (or method run <method>@<value>) and every later one anew")
    p.add_argument("--from", dest="start", metavar="STAGE", default=None,
                   help="skip the stages (or method runs) before this one, which must have finished")
    p.add_argument("overrides", nargs="*", help="dotted overrides; stages.<name>.<key>=VALUE sets a key of "
                   "that shared stage's config")
    p = sub.add_parser("report", help="write <run>/report/: index.html, report.md and plots of a pipeline run "
                       "or of one stage's run")
    p.add_argument("run_dir", help="a pipeline's run folder, e.g. runs/quickstart, or one stage's, e.g. "
                   "runs/quickstart/ppo")
    p.add_argument("--out", default=None, help="report folder (default: RUN_DIR/report)")
    p = sub.add_parser("toyworld", help="write the toyworld task's data, tokenizer and tiny base model")
    p.add_argument("--config", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("overrides", nargs="*")
    sub.add_parser("data", help="data tools: rayrlhf data validate|agreement|aggregate FILE ...", add_help=False)
    sub.add_parser("config", help="every key of a command's config with its default and meaning: "
                   "rayrlhf config show --command X [--config F]", add_help=False)
    sub.add_parser("plan", help="print where every actor of a config would run: rayrlhf plan --config F",
                   add_help=False)
    sub.add_parser("submit", help="submit a run as a Ray job: rayrlhf submit --address URL --config F",
                   add_help=False)
    sub.add_parser("job", help="status, logs, stop of submitted jobs: rayrlhf job status ID", add_help=False)
    sub.add_parser("export", help="a run's checkpoint as a plain HF folder, offline: rayrlhf export RUN_DIR "
                   "[--step N]", add_help=False)
    sub.add_parser("bench", help="throughput ratios (async/sync, vLLM/HF, sync share) as JSON", add_help=False)
    sub.add_parser("scale", help="add or remove rollout workers of a going run: rayrlhf scale --run NAME "
                   "--rollout-workers N", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["data"]:
        from rayrlhf.data.cli import main as data_main

        return data_main(argv[1:])
    if argv[:1] == ["config"]:
        from rayrlhf.config.show import main as config_main

        return config_main(argv[1:])
    if argv[:1] == ["plan"]:
        from rayrlhf.placement.cli import plan_main

        return plan_main(argv[1:])
    if argv[:1] == ["bench"]:
        from rayrlhf.utils.quiet import quiet_libraries
        from rayrlhf.bench import main as bench_main

        quiet_libraries()
        return bench_main(argv[1:])
    if argv[:1] == ["export"]:
        from rayrlhf.engine.export_cli import main as export_main

        return export_main(argv[1:])
    if argv[:1] == ["scale"]:
        from rayrlhf.driver.controller import scale_main

        return scale_main(argv[1:])
    if argv[:1] in (["submit"], ["job"]):
        from rayrlhf.jobs import main as jobs_main

        return jobs_main(argv)
    args = build_parser().parse_args(argv)
    from rayrlhf.utils.quiet import quiet_libraries

    quiet_libraries()
    try:
        return _dispatch(args)
    except (ConfigError, DataValidationError) as e:
        print(f"rayrlhf {args.command}: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:  # a data source, prompt file or folder named in the config
        print(f"rayrlhf {args.command}: {e}", file=sys.stderr)
        return 2
    except (CheckpointWriteError, ActorLostError) as e:  # say which checkpoint is intact and how to resume
        print(f"rayrlhf {args.command}: {e}", file=sys.stderr)
        return 1


def _dispatch(args) -> int:
    from rayrlhf.config import SUPERVISED_COMMANDS, load_config

    if args.command in SUPERVISED_COMMANDS:
        from rayrlhf.driver.train_stage import STAGES, print_summary, run_train_stage

        cfg = load_config(STAGES[args.command], args.config, args.overrides)
        print_summary(args.command, run_train_stage(args.command, cfg, resume=args.resume))
        return 0
    if args.command == "ppo":
        from rayrlhf.config.ppo import PPOConfig
        from rayrlhf.driver.ppo_stage import run_ppo
        from rayrlhf.driver.train_stage import print_summary

        cfg = load_config(PPOConfig, args.config, args.overrides)
        print_summary("ppo", run_ppo(cfg, resume=args.resume))
        return 0
    if args.command in ("rs", "best-of-k"):
        from rayrlhf.config.rs import RSConfig
        from rayrlhf.driver.rs_stage import run_best_of_k, run_rs
        from rayrlhf.driver.train_stage import print_summary

        cfg = load_config(RSConfig, args.config, args.overrides)
        if args.command == "rs":
            print_summary("rs", run_rs(cfg, resume=args.resume))
        else:
            summary = run_best_of_k(cfg)
            print(json.dumps(summary, indent=1))
        return 0
    if args.command == "label":
        from rayrlhf.config.label import LabelConfig
        from rayrlhf.feedback.label import run_label

        print(json.dumps(run_label(load_config(LabelConfig, args.config, args.overrides), resume=args.resume), indent=1))
        return 0
    if args.command == "revise":
        from rayrlhf.config.revise import ReviseConfig
        from rayrlhf.feedback.revise_run import run_revise

        print(json.dumps(run_revise(load_config(ReviseConfig, args.config, args.overrides), resume=args.resume),
                         indent=1))
        return 0
    if args.command == "report":
        from rayrlhf.report import write_report
        from rayrlhf.report.folders import NoRunError

        if not os.path.isdir(args.run_dir):
            print(f"rayrlhf report: no run folder {args.run_dir}", file=sys.stderr)
            return 2
        try:
            print(write_report(args.run_dir, args.out))
        except NoRunError as e:
            print(f"rayrlhf report: {e}", file=sys.stderr)
            return 2
        return 0
    if args.command == "pipeline":
        from rayrlhf.driver.pipeline import run_pipeline

        run_pipeline(args.config, args.overrides, rerun=args.rerun, only=args.only, start=args.start)
        return 0
    if args.command == "compare":
        from rayrlhf.driver.compare import run_compare

        run_compare(args.config, args.overrides, rerun=args.rerun, from_stage=args.start)
        return 0
    if args.command == "toyworld":
        from rayrlhf.driver.toyworld_stage import ToyworldConfig, run_toyworld

        overrides = args.overrides + ([f"out={args.out}"] if args.out else [])
        run_toyworld(load_config(ToyworldConfig, args.config, overrides))
        return 0
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
