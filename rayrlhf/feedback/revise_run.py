"""`rayrlhf revise`: critique and revision of SFT responses on the rollout fleet (Constitutional AI).

Writes to the run folder:
    rounds.jsonl         every round of every item (principle, critique, revision, the judge's
                         P(acceptable), accepted, the judge's reason), items never accepted included
    revised_sft.jsonl    accepted revisions as SFT rows (messages), with the row's other columns
    revised_pairs.jsonl  explicit preference rows, chosen = accepted revision, rejected = the
                         original (`rayrlhf rm` and `rayrlhf dpo` read them)
    summary.json         items, accepted share, rounds per item, gold of originals vs revisions
"""
from __future__ import annotations

import json
import os

from rayrlhf.feedback.judge import Judge
from rayrlhf.feedback.revise import Item, Reviser
from rayrlhf.feedback.revise_outputs import pair_rows, round_rows, sft_rows, summarize
from rayrlhf.utils.fs import atomic_write_json, atomic_write_text


def read_items(data) -> tuple[list[Item], bool]:
    """(items, sampled): SFT rows with their responses, or prompts (``sampled``: the policy
    gives the responses); one DataValidationError listing every problem."""
    from rayrlhf.data.problems import Problem
    from rayrlhf.data.validate import DataValidationError, validate_source

    kind = "sft" if data.sft else "prompt"
    items, problems = [], []
    for source in data.sft or data.prompts:
        result, found = validate_source(source, kind, format=data.format, split=data.split, limit=data.limit,
                                        columns=getattr(data, "columns", None))
        if result.kind != kind and not found:
            found = [Problem(str(source), 0, "<source>", f"read as {result.kind} data; revise needs {kind} rows")]
        problems += found
        for r in result.records:
            where = f"{r.source.file}:{r.source.line}" if r.source else f"{source}"
            items.append(Item(r.prompt, getattr(r, "response", ""), dict(r.meta), where))
    if problems:
        raise DataValidationError(problems)
    return items, kind == "prompt"


class _Calls:
    """The fleets' generate as plain functions, each call with its own sampling seeds."""

    def __init__(self, roles):
        self.roles, self.n = roles, 0

    def __call__(self, ids: list[list[int]]) -> list[str]:
        self.n += 1
        return [s.text for part in self.roles.eval_generate(ids, n=1, purpose=self.n) for s in part]


def _prepare(cfg):
    """Everything checked before any actor starts: (template, judge template, policy and judge
    tokenizers, items, sampled, gold functions); a ConfigError names the file and the problem."""
    from rayrlhf.config.loader import ConfigError, check_before_start
    from rayrlhf.driver.scoring import resolve_gold
    from rayrlhf.feedback.revise_template import load_revise_template
    from rayrlhf.feedback.template import load_template
    from rayrlhf.models import load_tokenizer

    check_before_start(None, cfg)
    template = load_revise_template(cfg.revise.template)
    jt = load_template(cfg.revise.judge_template)
    if jt.kind != "direct" or jt.chain_of_thought:
        raise ConfigError([f"kind: {jt.kind}{' with chain_of_thought' if jt.chain_of_thought else ''}: revise "
                           "needs a kind direct judge template without chain of thought (its expected rating "
                           "is P(acceptable))"], source=cfg.revise.judge_template)
    try:
        gold = resolve_gold(cfg.gold)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError([f"gold: {e}"]) from None
    p, j = cfg.policy, cfg.judge_model
    tok = load_tokenizer(p.tokenizer or p.name_or_path, p.trust_remote_code, p.chat_template)
    jtok = load_tokenizer(j.tokenizer or j.name_or_path, j.trust_remote_code, j.chat_template) \
        if cfg.separate_judge else tok
    items, sampled = read_items(cfg.data)
    return template, jt, tok, jtok, items, sampled, gold


def _reviser(cfg, template, jt, tok, jtok, generate, choice_logprobs, judge_generate) -> Reviser:
    jr = cfg.judge_rollout if cfg.separate_judge else cfg.rollout
    judge = Judge(jt, jtok, choice_logprobs, seed=cfg.run.seed, max_len=jr.max_model_len)
    return Reviser(template, judge, tok, generate, judge_generate, accept_threshold=cfg.revise.accept_threshold,
                   max_rounds=cfg.revise.max_rounds, seed=cfg.run.seed, max_len=cfg.rollout.max_model_len,
                   max_new_tokens=cfg.rollout.max_new_tokens, judge_max_len=jr.max_model_len,
                   judge_max_new_tokens=jr.max_new_tokens)


def _start(cfg, run_dir: str):
    """(policy roles, judge roles): the judge's are the policy's unless it is a separate model."""
    from rayrlhf.config.revise import JudgeFleetView
    from rayrlhf.driver.roles import Roles

    from rayrlhf.utils.ray_init import run_name_of

    name, rv = run_name_of(run_dir), cfg.revise
    kw = dict(policy=None, critic=None, reference=None, timeout=rv.call_timeout_s, max_restarts=rv.max_worker_restarts)
    roles = Roles(cfg, name, **kw)
    if not cfg.separate_judge:
        return roles, roles
    try:
        return roles, Roles(JudgeFleetView.of(cfg), f"{name}-judge", **kw)
    except BaseException:
        roles.shutdown()
        raise


def sample_responses(generate, tokenizer, items: list[Item]) -> None:
    """The policy's response to each prompt, in place (``data.prompts``)."""
    from rayrlhf.data.tokenize import render_prompt

    texts = generate([render_prompt(tokenizer, it.prompt) for it in items])
    for it, text in zip(items, texts):
        it.response = text.strip()


def revise_all(reviser: Reviser, items: list[Item], per_call: int, report=print) -> list:
    """Every round of every item, ``per_call`` items at a time."""
    rounds = []
    for start in range(0, len(items), per_call):
        rounds += reviser.run(items[start:start + per_call], start)
        report(f"[rayrlhf] revise: {min(start + per_call, len(items))}/{len(items)} items")
    return rounds


def write_outputs(run_dir: str, items: list[Item], rounds: list, gold: dict, cfg) -> dict:
    """rounds.jsonl, revised_sft.jsonl, revised_pairs.jsonl and summary.json; returns the summary."""
    def write(name, rows):
        atomic_write_text(os.path.join(run_dir, name), "".join(json.dumps(r) + "\n" for r in rows))

    pairs, same = pair_rows(items, rounds)
    write("rounds.jsonl", round_rows(items, rounds))
    write("revised_sft.jsonl", sft_rows(items, rounds))
    write("revised_pairs.jsonl", pairs)
    summary = {**{k: os.path.join(run_dir, f"{k}.jsonl") for k in ("rounds", "revised_sft", "revised_pairs")},
               "revise/sampled_responses": not cfg.data.sft,
               **summarize(items, rounds, gold, cfg.revise.tag_field, cfg.revise.max_rounds),
               "revise/pairs": len(pairs), "revise/pairs_unchanged_left_out": same}
    atomic_write_json(os.path.join(run_dir, "summary.json"), summary)
    return summary


def run_revise(cfg, resume: bool = False) -> dict:
    """Check everything cheap (templates, tokenizers, rows, prompt lengths, gold), start the
    fleets, revise every item, write the outputs."""
    from rayrlhf.config.loader import ConfigError, save_config
    from rayrlhf.utils.ray_init import ensure_ray

    run_dir = os.path.abspath(os.path.join(cfg.run.output_dir, cfg.run.name or "revise"))
    if os.path.exists(os.path.join(run_dir, "rounds.jsonl")) and not resume:
        raise SystemExit(f"{run_dir} already holds revisions: set run.name, or pass --resume to revise again")
    template, jt, tok, jtok, items, sampled, gold = _prepare(cfg)
    try:  # the judge's choices are one token each, before any actor starts
        checker = _reviser(cfg, template, jt, tok, jtok, None, None, None)
    except ValueError as e:
        raise ConfigError([str(e)], source=cfg.revise.judge_template) from None
    try:  # every prompt fits its engine
        checker.check_lengths(items, sampled)
    except ValueError as e:
        raise ConfigError([str(e)]) from None
    os.makedirs(run_dir, exist_ok=True)
    save_config(cfg, os.path.join(run_dir, "config.yaml"))
    ensure_ray()
    roles, judge_roles = _start(cfg, run_dir)
    try:
        generate = _Calls(roles)
        judge_generate = generate if judge_roles is roles else _Calls(judge_roles)
        reviser = _reviser(cfg, template, jt, tok, jtok, generate, judge_roles.fleet.choice_logprobs, judge_generate)
        if sampled:
            sample_responses(generate, tok, items)
        rounds = revise_all(reviser, items, cfg.revise.items_per_call)
    finally:
        for r in {id(roles): roles, id(judge_roles): judge_roles}.values():
            r.shutdown()
    return write_outputs(run_dir, items, rounds, gold, cfg)
