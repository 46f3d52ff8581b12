#!/usr/bin/env bash
# The GPU check, as one command from the repository root on the GPU machine (no Rust, no
# network, no make needed there): taidcache from gpu-bundle/ against PyTorch on the same GPU.
#
#   bash scripts/gpu-check.sh                       # --device cuda:0 --bin gpu-bundle/taidcache
#   bash scripts/gpu-check.sh --device cpu --bin target/release/taidcache   # the dry run (CI)
#
# Options (see scripts/gpu_check.py --help): --device cuda:N|cpu, --bin PATH, --out DIR
# (default $OUT, else gpu-check-out/), --work DIR, --budget-s S, --sizes FILE.
# Writes DIR/gpu-check.json, DIR/gpu-check.log and the two distill runs' metrics; exits
# non-zero, naming what failed, when any check fails.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

PYTHON=${PYTHON:-python3}
if ! command -v "$PYTHON" >/dev/null; then
    echo "gpu-check: $PYTHON is not on the PATH; the check needs Python 3 with numpy and pyarrow." >&2
    exit 1
fi
if ! missing=$("$PYTHON" - <<'EOF'
import importlib.util, sys
gone = [m for m in ("numpy", "pyarrow") if importlib.util.find_spec(m) is None]
print(" and ".join(gone))
sys.exit(1 if gone else 0)
EOF
); then
    echo "gpu-check: $PYTHON has no $missing (pip install $missing, or \`make setup\` here)." >&2
    exit 1
fi
export PYTHONUNBUFFERED=1
exec "$PYTHON" scripts/gpu_check.py "$@"
