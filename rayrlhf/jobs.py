"""`rayrlhf submit` and `rayrlhf job`: run rayrlhf commands as Ray jobs on a running cluster.

    rayrlhf submit --config jobs/qwen0.5b_hh_rlhf.yaml               # pipeline; follows the logs
    rayrlhf submit --command sft --config jobs/x.yaml train.lr=1e-4 --no-wait
    rayrlhf job status|logs|stop JOB_ID [--follow]
    rayrlhf job list

A submission uploads the working directory (default ".", without .venv, runs, .git) and runs
``python -m rayrlhf <command> --config <file> [overrides]`` in it on the head node, so the code
that runs is the code you submitted; the cluster's Python must have rayrlhf's dependencies
(see jobs/README.md). The configuration is checked here before anything is uploaded.

The address is --address, else RAY_API_SERVER_ADDRESS, else RAY_ADDRESS, else
http://127.0.0.1:8265 (the dashboard, local or forwarded over SSH / kubectl port-forward).

Token authentication (Ray >= 2.52) is Ray's own: with RAY_AUTH_MODE=token, Ray's job client
sends ``Authorization: Bearer <token>``, the token read from RAY_AUTH_TOKEN, the file in
RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token, in that order. When RAY_AUTH_MODE is unset and the
address is on this machine (127.0.0.1, localhost: a local cluster or a forwarded port), a token
found in those places is sent too, as ``ray.init()`` does for a local cluster.
RAY_AUTH_MODE=disabled never sends one.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import shlex
import sys
import time
from urllib.parse import urlparse

import yaml

from rayrlhf.config.commands import COMMANDS

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
DEFAULT_EXCLUDES = [".venv", "venv", ".git", "runs", "__pycache__", "*.pyc", "*.egg-info", ".pytest_cache"]

RESUMABLE = ("sft", "rm", "dpo", "rrhf", "ppo", "rs", "label", "revise")
"""Commands that take --resume (a pipeline or compare resumes by itself when resubmitted)."""
AUTH_HELP = (
    "The cluster uses Ray token authentication. Supply its token, then retry:\n"
    "  export RAY_AUTH_MODE=token\n"
    "  export RAY_AUTH_TOKEN=<token>     # or RAY_AUTH_TOKEN_PATH=<file>, or write it to ~/.ray/auth_token\n"
    "Get the token on the head node with `ray get-auth-token` (cluster launcher: "
    "`ray exec cluster/gpu-cluster.yaml 'ray get-auth-token'`), or on KubeRay with\n"
    "  kubectl get secret <raycluster-name> -o jsonpath='{.data.auth_token}' | base64 -d"
)


class JobsError(Exception):
    """A problem to report in one message (exit code 2), not a traceback."""


# ---- address and authentication --------------------------------------------------------------


def resolve_address(address: str | None, env=os.environ) -> str:
    """--address, else RAY_API_SERVER_ADDRESS, else RAY_ADDRESS (Ray's own order), else the default."""
    return address or env.get("RAY_API_SERVER_ADDRESS") or env.get("RAY_ADDRESS") or DEFAULT_ADDRESS


def is_loopback(address: str) -> bool:
    host = urlparse(address if "://" in address else f"http://{address}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_source(env=os.environ) -> str | None:
    """Where Ray will read the token from, in Ray's order of precedence; None if nowhere."""
    if env.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    if env.get("RAY_AUTH_TOKEN_PATH"):
        return f"RAY_AUTH_TOKEN_PATH={env['RAY_AUTH_TOKEN_PATH']}"
    path = os.path.expanduser("~/.ray/auth_token")
    return path if os.path.isfile(path) else None


def enable_local_token(address: str) -> bool:
    """Turn on Ray's token mode for this process when the cluster is on this machine.

    Ray's job client sends the token only in token mode (RAY_AUTH_MODE=token). ``ray.init()``
    enables it by itself for a local cluster when a token exists, never for an explicit remote
    address (so a token is not handed to whatever host an address names); this does the same.
    """
    if os.environ.get("RAY_AUTH_MODE") is not None or not is_loopback(address) or token_source() is None:
        return False
    from ray._raylet import AuthenticationTokenLoader, Config

    if not AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True):
        return False
    os.environ["RAY_AUTH_MODE"] = "token"
    Config.initialize("")  # Ray caches its config; re-read it so the job client sees token mode
    return True


def auth_failure(address: str, detail: str) -> JobsError:
    mode = os.environ.get("RAY_AUTH_MODE")
    if "Authentication required" in detail or "401" in detail:
        why = "the request carried no token"
        if mode != "token":
            why += f" (RAY_AUTH_MODE is {mode!r})" if mode else " (RAY_AUTH_MODE is not set)"
    else:
        why = f"the cluster refused the token sent (from {token_source() or 'nowhere'})"
    return JobsError(f"authentication failed at {address}: {why}.\n{AUTH_HELP}")


@contextlib.contextmanager
def _explicit_address():
    """Ray's client lets RAY_API_SERVER_ADDRESS / RAY_ADDRESS override the address it is given;
    hide them while the client is built, so the address resolved here is the one used."""
    saved = {k: os.environ.pop(k) for k in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS") if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def connect(address: str):
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    enable_local_token(address)
    try:
        with _explicit_address():
            return JobSubmissionClient(address)
    except AuthenticationError as e:
        raise auth_failure(address, str(e)) from None
    except ConnectionError as e:
        raise JobsError(
            f"cannot reach a Ray dashboard at {address} ({e}). Start one (`ray start --head "
            "--dashboard-host 127.0.0.1`), or forward the cluster's: `ray dashboard "
            "cluster/gpu-cluster.yaml`, or `kubectl port-forward svc/<raycluster>-head-svc 8265:8265`."
        ) from None


# ---- what a submission sends ------------------------------------------------------------------


def job_config_path(config: str, working_dir: str) -> str:
    """The config's path as the job sees it: relative to the uploaded working dir when inside it."""
    cfg, wd = os.path.abspath(config), os.path.abspath(working_dir)
    if os.path.commonpath([cfg, wd]) == wd:
        return os.path.relpath(cfg, wd).replace(os.sep, "/")
    print(f"rayrlhf submit: warning: {config} is outside the working dir {working_dir}; the job reads "
          f"{cfg} on the cluster's head node", file=sys.stderr)
    return cfg


def entrypoint(command: str, config_path: str, overrides: list[str], resume: bool = False) -> str:
    argv = ["python", "-m", "rayrlhf", command, "--config", config_path, *(["--resume"] if resume else []), *overrides]
    return shlex.join(argv)


def build_runtime_env(working_dir: str | None, runtime_env_file: str | None) -> dict:
    """The YAML file's runtime_env, with the working dir set and the default excludes added."""
    env: dict = {}
    if runtime_env_file:
        if not os.path.isfile(runtime_env_file):
            raise JobsError(f"--runtime-env {runtime_env_file}: no such file")
        with open(runtime_env_file, encoding="utf-8") as f:
            env = yaml.safe_load(f) or {}
        if not isinstance(env, dict):
            raise JobsError(f"{runtime_env_file}: a runtime_env must be a mapping, got {type(env).__name__}")
    env["working_dir"] = os.path.abspath(working_dir or env.get("working_dir") or ".")
    excludes = list(env.get("excludes") or [])
    env["excludes"] = excludes + [e for e in DEFAULT_EXCLUDES if e not in excludes]
    return env


def check_config(command: str, config: str, overrides: list[str]) -> str:
    """Load the config as the job will, so mistakes show here and not minutes later on the
    cluster; returns the folder the job writes under (run.output_dir; toyworld's out)."""
    from rayrlhf.config.commands import config_class
    from rayrlhf.config.loader import ConfigError

    try:
        if command == "pipeline":
            from rayrlhf.driver.pipeline import load_pipeline

            return load_pipeline(config, overrides)[0].run.output_dir
        if command == "compare":
            from rayrlhf.driver.compare import load_compare

            return load_compare(config, overrides)[0].run.output_dir
        from rayrlhf.config import load_config

        cfg = load_config(config_class(command), config, overrides)
        return cfg.out if command == "toyworld" else cfg.run.output_dir
    except ConfigError as e:
        raise JobsError(str(e)) from None


# ---- following a job --------------------------------------------------------------------------


async def _tail(client, job_id: str, out) -> None:
    async for chunk in client.tail_job_logs(job_id):
        out.write(chunk)
        out.flush()


def follow(client, job_id: str, address: str, out=sys.stdout, poll_s: float = 1.0) -> int:
    """Print the job's logs until it ends; 0 if it SUCCEEDED, 1 if it FAILED or was STOPPED."""
    import aiohttp

    try:
        asyncio.run(_tail(client, job_id, out))
    except KeyboardInterrupt:
        print(f"\nstopped following; job {job_id} keeps running (stop it: rayrlhf job stop {job_id})", file=out)
        return 130
    except (aiohttp.ClientError, RuntimeError, OSError) as e:  # a dropped stream: the status decides
        if getattr(e, "status", None) in (401, 403):
            raise auth_failure(address, str(e.status)) from None
        print(f"rayrlhf: log stream ended early ({e}); waiting for the job to finish", file=sys.stderr)
    info = client.get_job_info(job_id)
    while not info.status.is_terminal():
        time.sleep(poll_s)
        info = client.get_job_info(job_id)
    return report(job_id, info, out)


def report(job_id: str, info, out=sys.stdout) -> int:
    status = str(info.status.value if hasattr(info.status, "value") else info.status)
    line = f"job {job_id}: {status}"
    if info.message:
        line += f": {info.message}"
    print(line, file=out, flush=True)
    return 0 if status == "SUCCEEDED" else 1


# ---- commands ---------------------------------------------------------------------------------


def _add_address(p) -> None:
    p.add_argument("--address", default=None,
                   help="Ray dashboard address (default: RAY_API_SERVER_ADDRESS, RAY_ADDRESS, or http://127.0.0.1:8265)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rayrlhf", description="Run rayrlhf commands as Ray jobs.")
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("submit", help="submit `python -m rayrlhf <command> --config F` as a Ray job")
    _add_address(p)
    p.add_argument("--config", required=True, help="YAML config file, inside the working dir")
    p.add_argument("--command", choices=COMMANDS, default="pipeline", help="rayrlhf command to run (default: pipeline)")
    p.add_argument("--working-dir", default=None, help="folder uploaded as the job's working dir (default: .)")
    p.add_argument("--runtime-env", default=None, help="YAML runtime_env merged into the job's (e.g. jobs/runtime_env.yaml)")
    p.add_argument("--job-id", default=None, help="submission id (default: generated by Ray)")
    p.add_argument("--entrypoint-resources", default=None, type=json.loads,
                   help='custom resources for the driver, JSON, e.g. \'{"trainer_node": 0.01}\' puts it on a trainer node')
    p.add_argument("--resume", action="store_true", help=f"pass --resume ({', '.join(RESUMABLE)})")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return; do not follow the logs")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-4")

    job = sub.add_parser("job", help="status, logs, stop or list Ray jobs")
    jsub = job.add_subparsers(dest="action", required=True)
    for action, text in (("status", "status and message of a job"), ("logs", "a job's logs"), ("stop", "stop a job")):
        q = jsub.add_parser(action, help=text)
        q.add_argument("job_id")
        _add_address(q)
        if action == "logs":
            q.add_argument("--follow", action="store_true", help="follow until the job ends; exit 0 only if it SUCCEEDED")
    _add_address(jsub.add_parser("list", help="jobs on the cluster"))
    return parser


def submit(args, out=sys.stdout) -> int:
    if args.resume and args.command not in RESUMABLE:
        raise JobsError(f"--resume is for {', '.join(RESUMABLE)}"
                        + ("; a pipeline or compare resumes by itself when resubmitted"
                           if args.command in ("pipeline", "compare") else f"; {args.command} has no --resume"))
    if not os.path.isfile(args.config):
        raise JobsError(f"--config {args.config}: no such file")
    output_dir = check_config(args.command, args.config, args.overrides)
    if not os.path.isabs(output_dir):
        # A job's current directory is its unpacked working dir, a temporary folder on the head.
        print(f"rayrlhf submit: warning: run.output_dir {output_dir!r} is relative: the job writes under its "
              f"temporary working dir on the head node; pass run.output_dir=<absolute path on shared storage>",
              file=sys.stderr)
    runtime_env = build_runtime_env(args.working_dir, args.runtime_env)
    if not os.path.isdir(runtime_env["working_dir"]):
        raise JobsError(f"working dir {runtime_env['working_dir']}: no such folder")
    command = entrypoint(args.command, job_config_path(args.config, runtime_env["working_dir"]), args.overrides, args.resume)
    address = resolve_address(args.address)
    client = connect(address)
    job_id = client.submit_job(entrypoint=command, runtime_env=runtime_env, submission_id=args.job_id,
                               entrypoint_resources=args.entrypoint_resources,
                               metadata={"rayrlhf_command": args.command, "config": args.config})
    print(f"submitted job {job_id} to {address}: {command}", file=out, flush=True)
    if args.no_wait:
        print(f"  rayrlhf job logs {job_id} --follow --address {address}\n"
              f"  rayrlhf job stop {job_id} --address {address}", file=out, flush=True)
        return 0
    return follow(client, job_id, address, out)


def job(args, out=sys.stdout) -> int:
    address = resolve_address(args.address)
    client = connect(address)
    try:
        if args.action == "list":
            for j in sorted(client.list_jobs(), key=lambda j: j.start_time or 0):
                print(f"{j.submission_id or j.job_id}  {j.status.value:<9}  {j.entrypoint}", file=out)
            return 0
        if args.action == "status":
            info = client.get_job_info(args.job_id)
            print(f"entrypoint: {info.entrypoint}", file=out)
            report(args.job_id, info, out)
            return 0
        if args.action == "logs":
            if args.follow:
                return follow(client, args.job_id, address, out)
            out.write(client.get_job_logs(args.job_id))
            return 0
        stopped = client.stop_job(args.job_id)
        print(f"job {args.job_id}: {'stop requested' if stopped else 'already finished'}", file=out)
        return 0
    except RuntimeError as e:
        if "does not exist" in str(e) or "404" in str(e):
            raise JobsError(f"no job {args.job_id!r} at {address}") from None
        raise


def main(argv: list[str]) -> int:
    """``rayrlhf submit ...`` and ``rayrlhf job ...``: argv starts with "submit" or "job"."""
    args = build_parser().parse_args(list(argv))
    try:
        return submit(args) if args.verb == "submit" else job(args)
    except JobsError as e:
        print(f"rayrlhf {args.verb}: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        from ray.exceptions import AuthenticationError

        if isinstance(e, AuthenticationError):
            print(f"rayrlhf {args.verb}: {auth_failure(resolve_address(args.address), str(e))}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
