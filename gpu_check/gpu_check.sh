#!/usr/bin/env bash
# Offline GPU check (docs/PERFORMANCE.md, "Offline GPU check"): one call on a lent GPU machine.
#
#   bash gpu_check/gpu_check.sh [--cpu] [--short] [--items a,b+,...] [--budget SECONDS]
#
# The GPU image has torch but not pydantic & co.: they are installed from the wheels in .whl/
# (`make gpu-wheels`, where a registry is reachable) into $GPU_CHECK_SITE (/tmp/site), never into the
# image, and lib/ is put on the path: mulreg is not installed and torch is not touched. Results go
# to $OUT/gpu_check.json and $OUT/gpu_check.md ($OUT: the device tool's folder; else /tmp/gpu_check_out).
# ${PYTHON:-python3} runs `python -m gpu_check` from the repository root (tests point PYTHON at their own
# interpreter); it exits 3 at once, with the reason, where CUDA does not start and --cpu was not given.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SITE=${GPU_CHECK_SITE:-/tmp/site}
export OUT=${OUT:-${TMPDIR:-/tmp}/gpu_check_out}
mkdir -p "$OUT"

has_pydantic() {  # $1: a folder to put first on the path, or nothing
    PYTHONPATH="$1${PYTHONPATH:+:$PYTHONPATH}" "$PY" -c \
        'import pydantic, sys; sys.exit(not pydantic.VERSION.startswith("2."))' 2>/dev/null
}
if ! has_pydantic "" && has_pydantic "$SITE"; then  # installed by an earlier call on this machine
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
elif ! has_pydantic ""; then
    shopt -s nullglob
    wheels=(.whl/*.whl)
    if ((${#wheels[@]} == 0)); then
        echo "gpu_check: $PY lacks pydantic 2 and .whl/ holds no wheels (run \`make gpu-wheels\` where a" \
             "registry is reachable, and carry .whl)" | tee "$OUT/gpu_check.log" >&2
    else
        # typing_extensions only where the image's is older than the wheel's (pydantic needs a recent one)
        keep=()
        for w in "${wheels[@]}"; do
            if [[ $(basename "$w") == typing_extensions-* ]]; then
                want=$(basename "$w" | cut -d- -f2)
                if "$PY" - "$want" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
def key(v): return tuple(int(p) if p.isdigit() else 0 for p in v.split(".")[:3])
try:
    have = version("typing_extensions")
except PackageNotFoundError:
    sys.exit(1)
sys.exit(0 if key(have) >= key(sys.argv[1]) else 1)
EOF
                then continue; fi
            fi
            keep+=("$w")
        done
        if "$PY" -m pip --version >/dev/null 2>&1; then
            "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "${keep[@]}"
        else  # no pip in the image: a wheel is a zip file laid out for site-packages
            for w in "${keep[@]}"; do "$PY" -m zipfile -e "$w" "$SITE"; done
        fi
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    fi
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD/lib"
exec "$PY" -m gpu_check "$@"
