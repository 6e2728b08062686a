#!/usr/bin/env bash
# Run every stage for one experiment config: preprocess, folds, [pretrain], train, [pseudo-label], ensemble, report.
#   bash run_all.sh [configs/x.yaml] [key=value ...]      (PIPELINE_PYTHON=/path/to/python to pick the interpreter)
set -euo pipefail
# $PIPELINE_PYTHON if set, else python, else python3 (some systems have only the latter); found
# before the cd below, so a relative path means what it meant where the script was started
py="${PIPELINE_PYTHON:-$(command -v python || command -v python3 || echo python)}"
if [[ "$py" == */* ]]; then py="$(cd "${py%/*}" && pwd)/${py##*/}"; fi
cd "$(dirname "$0")"
config="${1:-configs/default.yaml}"
[ $# -gt 0 ] && shift
export PYTHONUNBUFFERED=1
stage() {
  local name=$1; shift
  local start=$SECONDS
  echo "== $name"
  "$py" -m "pipeline.$name" "$config" "$@"
  echo "== $name done in $((SECONDS - start))s"
}
stage preprocess "$@"
stage folds "$@"
stage pretrain "$@"       # does nothing (one line) unless the config has a pretrain section
stage train "$@"
stage pseudo_label "$@"   # does nothing unless pseudo.enabled=true
stage ensemble "$@"
stage report "$@"
