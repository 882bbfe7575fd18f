#!/usr/bin/env bash
# rayrlhf PPO against TRL 1.12 PPO, and rayrlhf GRPO against TRL 1.16 GRPO, on the same work;
# prints the table, writes
# benchmarks/peers/results/{peers.json,peers.md,peers.svg}.
#   benchmarks/peers/run.sh [compare.py options, e.g. --settings small --runs 2 --steps 12]
# TRL gets a virtualenv of its own (PEERS_DIR, default benchmarks/peers/.venvs), with the same
# torch as rayrlhf's; rayrlhf's own virtualenv comes from `make install`.
set -euo pipefail
cd "$(dirname "$0")/../.."
PEERS_DIR="${PEERS_DIR:-benchmarks/peers/.venvs}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
make install
# TRL 1.12 is the last release with PPO; GRPO is compared with TRL 1.16.
for spec in trl112:1.12.0 trl116:1.16.0; do
  name="${spec%%:*}" version="${spec##*:}"
  if [ ! -x "$PEERS_DIR/$name/bin/python" ]; then
    python3 -m venv "$PEERS_DIR/$name"
    "$PEERS_DIR/$name/bin/pip" install -q --upgrade pip
    "$PEERS_DIR/$name/bin/pip" install -q "$TORCH_SPEC"
    "$PEERS_DIR/$name/bin/pip" install -q "trl==$version"
  fi
done
exec .venv/bin/python benchmarks/peers/compare.py --trl-python "$PEERS_DIR/trl112/bin/python" \
  --trl-grpo-python "$PEERS_DIR/trl116/bin/python" "$@"
