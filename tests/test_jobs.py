"""`rayrlhf submit` / `rayrlhf job`: what a submission sends, and real jobs on a token-protected head."""
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid

import pytest
import yaml

from rayrlhf import jobs
from tests.waiting import wait_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.dirname(sys.executable)
RUNTIME_ENV = os.path.join(REPO, "jobs", "runtime_env.yaml")


def clean_env(**extra) -> dict:
    """This process's environment without any Ray address or auth settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS") and not k.startswith("RAY_AUTH")}
    env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")
    env.update(extra)
    return env


def run_jobs_cli(args, env, timeout=60):
    return subprocess.run([sys.executable, "-m", "rayrlhf.jobs", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, check=False)


# ---- what a submission sends (no cluster) -----------------------------------------------------


def test_address_order(monkeypatch):
    env = {"RAY_ADDRESS": "http://a:8265", "RAY_API_SERVER_ADDRESS": "http://b:8265"}
    assert jobs.resolve_address("http://c:8265", env) == "http://c:8265"
    assert jobs.resolve_address(None, env) == "http://b:8265"
    assert jobs.resolve_address(None, {"RAY_ADDRESS": "http://a:8265"}) == "http://a:8265"
    assert jobs.resolve_address(None, {}) == "http://127.0.0.1:8265"


@pytest.mark.parametrize("address,local", [
    ("http://127.0.0.1:8265", True), ("http://localhost:8265", True), ("127.0.0.1:8265", True),
    ("http://[::1]:8265", True), ("http://10.0.0.7:8265", False), ("https://ray.example.com", False),
])
def test_loopback(address, local):
    assert jobs.is_loopback(address) is local


def test_entrypoint_and_config_path(tmp_path):
    (tmp_path / "jobs").mkdir()
    cfg = tmp_path / "jobs" / "x.yaml"
    cfg.write_text("run: {name: x}\n")
    rel = jobs.job_config_path(str(cfg), str(tmp_path))
    assert rel == "jobs/x.yaml"
    line = jobs.entrypoint("sft", rel, ["train.lr=1e-4", "run.name=a b"], resume=True)
    assert line == "python -m rayrlhf sft --config jobs/x.yaml --resume train.lr=1e-4 'run.name=a b'"


def test_runtime_env_merges_file(tmp_path):
    env = jobs.build_runtime_env(str(tmp_path), RUNTIME_ENV)
    assert env["working_dir"] == str(tmp_path)
    assert {".venv", "runs", ".git"} <= set(env["excludes"])
    assert len(env["excludes"]) == len(set(env["excludes"]))
    assert env["env_vars"]["TOKENIZERS_PARALLELISM"] == "false"
    assert all(isinstance(v, str) for v in env["env_vars"].values()), "Ray wants string env values"
    from ray.runtime_env import RuntimeEnv

    RuntimeEnv(**env)
    own = tmp_path / "env.yaml"
    own.write_text("env_vars: {A: '1'}\nexcludes: [data]\n")
    env = jobs.build_runtime_env(None, str(own))
    assert env["working_dir"] == os.path.abspath(".") and env["env_vars"] == {"A": "1"}
    assert env["excludes"][0] == "data" and ".venv" in env["excludes"]


def test_bad_config_is_reported_before_connecting(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  - {name: sft, kind: sft, config: {model: {name_or_path: m}, data: {train: [a]}, train: {lrr: 1}}}\n")
    # Port 9 (discard) has no dashboard: reaching it would fail differently.
    rc = jobs.main(["submit", "--address", "http://127.0.0.1:9", "--config", str(bad), "--working-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "train.lrr: unknown key" in err and "'lr'" in err
    assert jobs.main(["submit", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err
    ppo = os.path.join(REPO, "jobs", "toyworld_ppo.yaml")
    rc = jobs.main(["submit", "--command", "ppo", "--config", ppo, "ppo.no_such_key=1", "--address", "http://127.0.0.1:9"])
    assert rc == 2 and "no_such_key" in capsys.readouterr().err


def test_unreachable_dashboard_says_how_to_reach_one(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc = jobs.main(["job", "list", "--address", f"http://127.0.0.1:{port}"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot reach a Ray dashboard" in err and "ray dashboard cluster/gpu-cluster.yaml" in err


def test_relative_output_dir_is_warned_about(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    quickstart = os.path.join(REPO, "jobs", "toyworld_quickstart.yaml")
    rc = jobs.main(["submit", "--address", f"http://127.0.0.1:{port}", "--config", quickstart,
                    "--working-dir", REPO, "--runtime-env", RUNTIME_ENV, "--no-wait"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot reach a Ray dashboard" in err
    assert "run.output_dir 'runs' is relative" in err
    assert jobs.main(["submit", "--config", quickstart, "--runtime-env", "no-such-env.yaml"]) == 2
    assert "--runtime-env no-such-env.yaml: no such file" in capsys.readouterr().err


def test_auth_failure_message_says_how_to_supply_the_token(monkeypatch):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    msg = str(jobs.auth_failure("http://127.0.0.1:8265", "Authentication required: Unauthorized"))
    assert msg.startswith("authentication failed at http://127.0.0.1:8265: the request carried no token")
    assert "RAY_AUTH_MODE is not set" in msg
    for hint in ("RAY_AUTH_MODE=token", "RAY_AUTH_TOKEN=", "RAY_AUTH_TOKEN_PATH", "ray get-auth-token", "kubectl get secret"):
        assert hint in msg
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "x")
    msg = str(jobs.auth_failure("http://h:8265", "Authentication failed: Forbidden"))
    assert "refused the token sent (from RAY_AUTH_TOKEN)" in msg


def test_token_goes_out_through_rays_own_header_code(tmp_path):
    """The token is attached by Ray's job client code; only for a loopback address by default."""
    token_file = tmp_path / "token"
    token_file.write_text("tok123")
    code = (
        "import sys; from rayrlhf import jobs\n"
        "from ray._private.authentication.http_token_authentication import get_auth_headers_if_auth_enabled\n"
        "print(jobs.enable_local_token(sys.argv[1]), get_auth_headers_if_auth_enabled({}))\n"
    )
    env = clean_env(RAY_AUTH_TOKEN_PATH=str(token_file))
    out = [subprocess.run([sys.executable, "-c", code, addr], env=env, capture_output=True, text=True,
                          timeout=60, check=True).stdout.strip()
           for addr in ("http://127.0.0.1:8265", "http://10.0.0.7:8265")]
    assert out[0] == "True {'authorization': 'Bearer tok123'}"
    assert out[1] == "False {}"
    env["RAY_AUTH_MODE"] = "disabled"
    out = subprocess.run([sys.executable, "-c", code, "http://127.0.0.1:8265"], env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout.strip()
    assert out == "False {}"


# ---- job configs for real models --------------------------------------------------------------

REAL_MODEL_JOBS = ["llama2_7b_recipe.yaml", "qwen0.5b_hh_rlhf.yaml", "qwen0.5b_rm_static.yaml",
                   "qwen1.5b_stack_exchange_rm.yaml", "qwen1.5b_lora_recipe.yaml", "llama2_70b_qlora_recipe.yaml"]


def pipeline_job_configs() -> list[str]:
    found = []
    for name in sorted(os.listdir(os.path.join(REPO, "jobs"))):
        path = os.path.join(REPO, "jobs", name)
        if name.endswith(".yaml"):
            with open(path) as f:
                if "stages" in (yaml.safe_load(f) or {}):
                    found.append(path)
    return found


def test_real_model_jobs_are_pipeline_configs():
    assert set(REAL_MODEL_JOBS) <= {os.path.basename(p) for p in pipeline_job_configs()}


@pytest.mark.parametrize("path", pipeline_job_configs(), ids=os.path.basename)
def test_pipeline_job_config_loads(path):
    from rayrlhf.driver.pipeline import load_pipeline

    cfg, _, configs = load_pipeline(path, [])
    assert len(configs) == len(cfg.stages) > 0


def command_job_configs() -> list[tuple[str, str]]:
    """(command, path) of every job file whose first line runs one command on it."""
    found = []
    for name in sorted(os.listdir(os.path.join(REPO, "jobs"))):
        path = os.path.join(REPO, "jobs", name)
        with open(path) as f:
            first = f.readline().split()
        if len(first) > 2 and first[:2] == ["#", "rayrlhf"] and first[2] not in ("pipeline", "submit"):
            found.append((first[2], path))
    return found


@pytest.mark.parametrize("command,path", command_job_configs(), ids=lambda x: os.path.basename(x))
def test_command_job_config_loads(command, path):
    """Each single-command job file loads, as written, as the config of the command it names."""
    from rayrlhf.config import load_config
    from rayrlhf.config.ppo import PPOConfig
    from rayrlhf.config.rs import RSConfig
    from rayrlhf.driver.compare import load_compare
    from rayrlhf.driver.train_stage import STAGES

    if command == "compare":
        cfg, pipe, _, configs, _ = load_compare(path)
        assert len(configs) == len(pipe.stages) > len(cfg.compare.methods)
    else:
        from rayrlhf.config.label import LabelConfig
        from rayrlhf.config.revise import ReviseConfig

        commands = {**STAGES, "ppo": PPOConfig, "rs": RSConfig, "label": LabelConfig, "revise": ReviseConfig}
        cfg = load_config(commands[command], path)
    assert cfg.run.name == os.path.basename(path).removesuffix(".yaml")


@pytest.mark.parametrize("name", REAL_MODEL_JOBS)
def test_real_model_job_settings(name):
    from rayrlhf.driver.pipeline import load_pipeline

    cfg, run_dir, configs = load_pipeline(os.path.join(REPO, "jobs", name), [])
    assert run_dir.startswith("/mnt/shared/"), "multi-node runs need a folder every node sees"
    models = ("Qwen/", "meta-llama/", run_dir)
    for spec, stage in zip(cfg.stages, configs):
        if spec.kind in ("rs", "ppo"):
            # The RL stages: every model role on GPUs, in bfloat16, the rollout in the policy's dtype.
            assert stage.resources.trainer.gpus_per_worker > 0 and stage.resources.rollout.gpus_per_worker > 0
            assert stage.policy.dtype == stage.rollout.dtype == "bfloat16", spec.name
            assert stage.policy.name_or_path.startswith(models), spec.name
            assert all(r.model.startswith(run_dir) for r in stage.rewards if r.model), spec.name
            assert not stage.policy.trust_remote_code
            continue
        per_step = stage.train.per_worker_micro_batch_size * stage.scaling.num_workers
        assert stage.train.global_batch_size % per_step == 0, spec.name
        assert stage.scaling.use_gpu and stage.model.dtype == "bfloat16", spec.name
        assert stage.model.name_or_path.startswith(models), spec.name
        assert not stage.model.trust_remote_code


# ---- a real head node with token authentication -----------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _our_processes(temp_dir: str, gcs_port: int) -> set:
    """Processes of the head we started (found by its temp dir or GCS port) and their children."""
    import psutil

    gcs = re.compile(rf"-(address|gcs[-_]address)=\S+:{gcs_port}\b")
    found = set()
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if temp_dir in cmd or gcs.search(cmd):
                found.add(p)
                found.update(p.children(recursive=True))
        except psutil.Error:
            pass
    return found


def _stop_head(proc, temp_dir: str, gcs_port: int) -> None:
    import psutil

    if proc.poll() is None:
        # Only `ray start --block` itself: it drains the node through the GCS, then stops the
        # processes it started. Signalling the whole group would kill the GCS first and stall it.
        proc.terminate()
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            proc.kill()
    left = _our_processes(temp_dir, gcs_port)
    for p in left:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(list(left), timeout=10)
    for p in alive:
        p.kill()


@pytest.fixture(scope="module")
def head():
    """`ray start --head` on 127.0.0.1 with token auth, its own ports and temp dir; stopped after."""
    import requests

    temp_dir = tempfile.mkdtemp(prefix="rrj-", dir="/tmp")
    token = uuid.uuid4().hex
    token_file = os.path.join(temp_dir, "auth_token")
    with open(token_file, "w") as f:
        f.write(token)
    gcs, dash, agent, client = (_free_port() for _ in range(4))
    # A throwaway cluster: no need to wait up to 30 s draining it at shutdown.
    env = clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token_file, RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="3")
    cmd = [os.path.join(VENV_BIN, "ray"), "start", "--head", "--block", "--num-cpus=2", f"--port={gcs}",
           "--node-ip-address=127.0.0.1", "--dashboard-host", "127.0.0.1", f"--dashboard-port={dash}",
           f"--dashboard-agent-listen-port={agent}", f"--ray-client-server-port={client}",
           "--temp-dir", temp_dir, "--disable-usage-stats"]
    log_path = os.path.join(temp_dir, "head.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"

    def up():
        if proc.poll() is not None:
            with open(log_path) as f:
                raise AssertionError(f"ray start exited:\n{f.read()[-3000:]}")
        try:
            return requests.get(f"{address}/api/version", headers={"Authorization": f"Bearer {token}"}, timeout=2).ok
        except requests.ConnectionError:
            return False

    try:
        wait_for(up, 120, "the head node's dashboard", every=0.5)
        yield {"address": address, "token": token, "token_file": token_file, "dashboard_port": dash,
               "temp_dir": temp_dir}
    finally:
        _stop_head(proc, temp_dir, gcs)
        shutil.rmtree(temp_dir, ignore_errors=True)


def tiny_pipeline(path, output_dir: str, name: str) -> None:
    stage = {"max_prompt_tokens": 96, "max_response_tokens": 96}  # vocab 300: replies reach 80 tokens
    cfg = {
        "run": {"output_dir": output_dir, "name": name},
        "stages": [
            {"name": "toyworld", "kind": "toyworld",
             "config": {"n_sft": 200, "n_pref": 200, "n_prompts": 20, "n_eval_prompts": 10, "vocab_size": 300,
                        "model": {"hidden_size": 64, "num_layers": 1, "num_heads": 2, "intermediate_size": 128}}},
            {"name": "sft", "kind": "sft",
             "config": {"model": {"name_or_path": "{toyworld}/base_model"},
                        "data": {"train": ["{toyworld}/data/sft_train.jsonl"],
                                 "eval": ["{toyworld}/data/sft_eval.jsonl"], **stage},
                        "train": {"epochs": 1, "lr": 3.0e-3, "global_batch_size": 16,
                                  "per_worker_micro_batch_size": 16, "log_every": 5},
                        "scaling": {"num_workers": 1}}},
        ],
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def _check_run(run_dir: str) -> None:
    assert os.path.getsize(os.path.join(run_dir, "sft", "export", "model.safetensors")) > 0
    with open(os.path.join(run_dir, "summary.json")) as f:
        ppl = json.load(f)["sft"]["eval/ppl"]
    assert math.isfinite(ppl) and ppl > 1.0


@pytest.mark.slow
def test_dashboard_listens_on_loopback_only(head):
    import psutil

    bound = {c.laddr.ip for c in psutil.net_connections(kind="inet")
             if c.status == psutil.CONN_LISTEN and c.laddr.port == head["dashboard_port"]}
    assert bound == {"127.0.0.1"}


@pytest.mark.slow
def test_requests_without_the_token_are_refused(head):
    import requests

    jobs_api = f"{head['address']}/api/jobs/"
    body = {"entrypoint": "echo should-not-run"}
    assert requests.post(jobs_api, json=body, timeout=10).status_code == 401
    wrong = {"Authorization": "Bearer " + uuid.uuid4().hex}
    assert requests.post(jobs_api, json=body, headers=wrong, timeout=10).status_code == 403
    right = {"Authorization": f"Bearer {head['token']}"}
    listed = requests.get(jobs_api, headers=right, timeout=10)
    assert listed.status_code == 200
    assert not [j for j in listed.json() if j["entrypoint"] == body["entrypoint"]]

    no_token = run_jobs_cli(["job", "list", "--address", head["address"]], clean_env(RAY_AUTH_MODE="disabled"))
    assert no_token.returncode == 2, no_token.stderr
    assert "authentication failed" in no_token.stderr and "carried no token" in no_token.stderr
    assert "RAY_AUTH_TOKEN" in no_token.stderr
    bad_token = run_jobs_cli(["job", "list", "--address", head["address"]],
                             clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=uuid.uuid4().hex))
    assert bad_token.returncode == 2 and "refused the token sent (from RAY_AUTH_TOKEN)" in bad_token.stderr
    with_token = run_jobs_cli(["job", "list", "--address", head["address"]],
                              clean_env(RAY_AUTH_TOKEN_PATH=head["token_file"]))
    assert with_token.returncode == 0, with_token.stderr
    missing = run_jobs_cli(["job", "status", "no-such-job", "--address", head["address"]],
                           clean_env(RAY_AUTH_TOKEN_PATH=head["token_file"]))
    assert missing.returncode == 2 and "no job 'no-such-job'" in missing.stderr, missing.stderr


@pytest.mark.slow
def test_submit_tiny_pipeline_as_a_job(head, tmp_path):
    """`rayrlhf submit` (follows the logs) and the plain `ray job submit` line run the same config."""
    workdir = tmp_path / "wd"
    (workdir / "jobs").mkdir(parents=True)
    tiny_pipeline(workdir / "jobs" / "tiny.yaml", str(tmp_path / "runs"), "via-rayrlhf")
    failing = workdir / "jobs" / "broken_sft.yaml"
    failing.write_text(yaml.safe_dump({"model": {"name_or_path": str(tmp_path / "no-such-model")},
                                       "data": {"train": [str(tmp_path / "no-such-data.jsonl")]},
                                       "run": {"output_dir": str(tmp_path / "runs")}}))
    auth_env = clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=head["token_file"])

    plain_id = f"plain-{uuid.uuid4().hex[:8]}"
    plain = subprocess.run(
        [os.path.join(VENV_BIN, "ray"), "job", "submit", "--address", head["address"], "--submission-id", plain_id,
         "--no-wait", "--working-dir", ".", "--runtime-env", RUNTIME_ENV, "--",
         "python", "-m", "rayrlhf", "pipeline", "--config", "jobs/tiny.yaml", "run.name=via-ray-job-submit"],
        cwd=workdir, env=auth_env, capture_output=True, text=True, timeout=120, check=False)
    assert plain.returncode == 0, plain.stdout + plain.stderr

    broken = run_jobs_cli(["submit", "--address", head["address"], "--command", "sft", "--config", str(failing),
                           "--working-dir", str(workdir), "--no-wait"], auth_env)
    assert broken.returncode == 0, broken.stderr
    broken_id = re.search(r"submitted job (\S+)", broken.stdout).group(1)

    # No RAY_AUTH_MODE: the token file is found and sent because the head is on this machine.
    ours = run_jobs_cli(["submit", "--address", head["address"], "--config", str(workdir / "jobs" / "tiny.yaml"),
                         "--working-dir", str(workdir), "--runtime-env", RUNTIME_ENV],
                        clean_env(RAY_AUTH_TOKEN_PATH=head["token_file"]), timeout=600)
    assert ours.returncode == 0, ours.stdout[-4000:] + ours.stderr[-4000:]
    assert re.search(r"submitted job raysubmit_\S+ to http://127\.0\.0\.1:\d+: "
                     r"python -m rayrlhf pipeline --config jobs/tiny\.yaml", ours.stdout)
    assert "held-out perplexity" in ours.stdout, "the job's logs were not followed"
    assert re.search(r"job raysubmit_\S+: SUCCEEDED", ours.stdout)
    _check_run(str(tmp_path / "runs" / "via-rayrlhf"))

    followed = run_jobs_cli(["job", "logs", broken_id, "--follow", "--address", head["address"]], auth_env, timeout=300)
    assert followed.returncode == 1, followed.stdout[-3000:] + followed.stderr[-3000:]
    assert f"job {broken_id}: FAILED" in followed.stdout

    def plain_done():
        r = run_jobs_cli(["job", "status", plain_id, "--address", head["address"]], auth_env)
        assert r.returncode == 0, r.stderr
        return r.stdout if re.search(r": (SUCCEEDED|FAILED|STOPPED)", r.stdout) else None

    status = wait_for(plain_done, 400, "the plain `ray job submit` job", every=3)
    assert f"job {plain_id}: SUCCEEDED" in status, status
    _check_run(str(tmp_path / "runs" / "via-ray-job-submit"))
