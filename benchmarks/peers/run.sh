#!/usr/bin/env bash
# rayrlhf PPO against TRL 1.12 PPO on the same work; prints the table, writes
# benchmarks/peers/results/{peers.json,peers.md,peers.svg}.
#   benchmarks/peers/run.sh [compare.py options, e.g. --settings small --runs 2 --steps 12]
# TRL gets a virtualenv of its own (PEERS_DIR, default benchmarks/peers/.venvs), with the same
# torch as rayrlhf's; rayrlhf's own virtualenv comes from `make install`.
set -euo pipefail
cd "$(dirname "$0")/../.."
PEERS_DIR="${PEERS_DIR:-benchmarks/peers/.venvs}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
make install
if [ ! -x "$PEERS_DIR/trl112/bin/python" ]; then
  python3 -m venv "$PEERS_DIR/trl112"
  "$PEERS_DIR/trl112/bin/pip" install -q --upgrade pip
  "$PEERS_DIR/trl112/bin/pip" install -q "$TORCH_SPEC"
  "$PEERS_DIR/trl112/bin/pip" install -q "trl==1.12.0"
fi
exec .venv/bin/python benchmarks/peers/compare.py --trl-python "$PEERS_DIR/trl112/bin/python" "$@"
