#!/usr/bin/env bash
# Replication 3 on machines that do not outlast a session (docs/PREREGISTRATION-3.md, note of 2026-12-06, late night).
# The registered code (REGISTERED) trains in a worktree beside this checkout. Its stores' finished runs and
# the checkpoints of runs in flight are carried in carry/ (committed), so a lost machine costs only the
# epochs since the last carry, not a stage. Nothing opens a carried store but `start`: no analysis opens a stage
# before the registered sweep has written it into record/ whole.
#   scripts/replication3.sh start   worktree and venv, carried stores restored, the two sweeps started in order
#   scripts/replication3.sh carry   the stores' runs/ and checkpoints/ copied into carry/ (then commit carry/)
#   scripts/replication3.sh times   each stage's wall time per execution and host, from carry/intervals.csv
#   scripts/replication3.sh land    the stages the sweeps wrote into the worktree's record/ copied into record/,
#                                   their carried stores removed (a landed store never trains again)
# carry/intervals.csv logs each start (and the sweep queued behind it), carry and, as `land` reads them from the log, the end of a
# sweep and the start of the next, with the host: a stage's wall time is the sum over machines of start to its last carry or end
# (what a lost machine trained after its last carry was trained again; `times` sums them).
set -euo pipefail
shopt -s nullglob
cd "$(dirname "$0")/.."
REGISTERED=3a9cfa5  # "make replication3: the third replication's two sweeps", the registered code
WORKTREE=../rep3
SWEEPS=(replication3_horizon_sweep replication3_sweep)  # the registered order: prevent-or-delay first
STORES=(quick-replication3-horizon quick-replication3)
LOG=$WORKTREE/replication3.log
PID=$WORKTREE/replication3.pid  # the training process, while it runs

INTERVALS=carry/intervals.csv

count() { ls -A "$1" 2> /dev/null | wc -l; }

log() {  # event store [utc]: one row of carry/intervals.csv (at utc, else now)
  local host when="${3:-$(date -u +%FT%TZ)}"
  host="$(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
  mkdir -p carry
  [ -f "$INTERVALS" ] || echo "utc,event,host,store,runs,checkpoints" > "$INTERVALS"
  echo "$when,$1,\"$host\",$2,$(count "carry/$2/runs"),$(count "carry/$2/checkpoints")" >> "$INTERVALS"
}

stamp() {  # sweep word: the UTC time of the worktree log's last "<sweep> <word> <utc>" line (empty if none)
  [ -f "$LOG" ] || return 0
  tr '\r' '\n' < "$LOG" | { grep -a "^$1 $2 " || true; } | tail -1 | cut -d" " -f3
}

start() {
  [ -d "$WORKTREE" ] || git worktree add --detach "$WORKTREE" "$REGISTERED"
  make -C "$WORKTREE" setup
  local pending=()
  for i in "${!STORES[@]}"; do
    local store="${STORES[$i]}"
    if [ -d "record/$store" ]; then  # landed: its single stage is in the record; nothing of it trains again
      echo "$store is in record/"
      continue
    fi
    pending+=("${SWEEPS[$i]}")
    if [ -d "carry/$store" ] && [ ! -d "$WORKTREE/results/$store" ]; then
      mkdir -p "$WORKTREE/results"
      cp -a "carry/$store" "$WORKTREE/results/$store"
      echo "restored $store: $(count "carry/$store/runs") runs, $(count "carry/$store/checkpoints") checkpoints"
    fi
  done
  if [ ${#pending[@]} -eq 0 ]; then
    echo "both stages of replication 3 are in record/"
    return
  fi
  if [ -f "$PID" ] && kill -0 "$(cat "$PID")" 2> /dev/null; then
    echo "replication 3 is training already (process $(cat "$PID"), log: $LOG)"
    return
  fi
  local data
  data="$(cd ../shared/data/cifar10 2> /dev/null && pwd || true)"
  (cd "$WORKTREE" && MULREG_DATA="$data" setsid nohup bash -c "
    echo \$\$ > replication3.pid
    for sweep in ${pending[*]}; do
      echo \"\$sweep from \$(date -u +%FT%TZ)\"
      nice -n 10 .venv/bin/python -m mulreg sweep params/quick/\$sweep.yaml --record || exit 1
      echo \"\$sweep done \$(date -u +%FT%TZ)\"
    done" >> replication3.log 2>&1 &)
  local event=start  # the first pending sweep trains now; the other waits for it
  for store in "${STORES[@]}"; do
    [ -d "record/$store" ] && continue
    log "$event" "$store"
    event=queued
  done
  echo "training ${pending[*]} in the background, nice 10 (log: $LOG)"
}

carry() {
  for store in "${STORES[@]}"; do
    local source="$WORKTREE/results/$store"
    [ -d "$source" ] && [ ! -d "record/$store" ] || continue  # nothing to carry, or landed
    local copy="carry/.$store"
    rm -rf "$copy"
    mkdir -p "$copy/runs" "$copy/checkpoints"
    # checkpoints before runs: a run that finishes in between is then in one of them (at worst both)
    for file in "$source"/checkpoints/*.pt; do cp -a "$file" "$copy/checkpoints/"; done
    for run in "$source"/runs/*; do cp -a "$run" "$copy/runs/"; done  # not ".<key>-…": runs being written
    rm -rf "carry/$store"
    mv "$copy" "carry/$store"
    log carry "$store"
    echo "carried $store: $(count "carry/$store/runs") runs, $(count "carry/$store/checkpoints") checkpoints"
  done
}

ended() {  # store: when its sweep ended and the next one began, as the worktree's log says (the stages' wall time)
  for i in "${!STORES[@]}"; do
    [ "${STORES[$i]}" = "$1" ] || continue
    local done_at next="${SWEEPS[$((i + 1))]:-}"
    done_at="$(stamp "${SWEEPS[$i]}" done)"
    [ -n "$done_at" ] && log done "$1" "$done_at"
    [ -n "$next" ] && [ -n "$(stamp "$next" from)" ] && log start "${STORES[$((i + 1))]}" "$(stamp "$next" from)"
  done
  return 0
}

times() {  # each stage's wall time per execution and host, from carry/intervals.csv (see the header)
  python3 - "$INTERVALS" << 'EOF'
import csv
import sys
from datetime import datetime

ENDS = {"carry", "done", "end", "lost"}  # what a span's machine left behind (or, lost, did not)


def hours(seconds: float) -> str:
    return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}"


executions = {}  # store: one list of spans [host, started, last end or None, last event] per execution
for row in csv.DictReader(open(sys.argv[1])):
    at = datetime.fromisoformat(row["utc"].replace("Z", "+00:00"))
    runs = executions.setdefault(row["store"], [[]])
    if row["event"] == "start":
        runs[-1].append([row["host"], at, None, "start"])
    elif row["event"] in ENDS and runs[-1]:
        runs[-1][-1][2:] = [at, row["event"]]
        if row["event"] == "lost":  # the store was lost with its machine: what follows trains it again
            runs.append([])
for store, runs in executions.items():
    for number, spans in enumerate(filter(None, runs), 1):
        per_host = {}
        for host, started, ended, _ in spans:
            per_host[host] = per_host.get(host, 0) + ((ended - started).total_seconds() if ended else 0)
        lost = " (lost with its machine, trained again)" if spans[-1][3] == "lost" else ""
        now = f"; training since {spans[-1][1]:%Y-%m-%dT%H:%MZ}, not carried yet" if spans[-1][2] is None else ""
        each = ", ".join(f"{host} {hours(s)}" for host, s in per_host.items())
        print(f"{store}, execution {number}{lost}: {hours(sum(per_host.values()))} in {len(spans)} span{'s' * (len(spans) > 1)} ({each}){now}")
EOF
}

land() {
  for stage in "$WORKTREE"/record/quick-replication3*/*; do
    local name="${stage#"$WORKTREE"/record/}"
    [ -d "record/$name" ] && continue
    mkdir -p "record/$(dirname "$name")"
    cp -a "$stage" "record/$name"
    rm -rf "carry/$(dirname "$name")"  # its runs are in the record now; `start` trains nothing of it again
    echo "landed $name"
    ended "$(dirname "$name")"
  done
  .venv/bin/python -c "from mulreg.results.record import write_manifest; write_manifest()"
  .venv/bin/python -m mulreg readme
  .venv/bin/python -m pytest -q tests/test_record.py
}

case "${1:-}" in
  start | carry | land | times) "$1" ;;
  *) echo "usage: scripts/replication3.sh start|carry|land|times" >&2; exit 2 ;;
esac
