#!/usr/bin/env bash
# ./run.sh <solution> [options]   train one solution over its folds
# ./run.sh test [pytest args]     run the test suite
# ./run.sh <command> [args]       any CLI command: python -m core <command> ...
# The first call creates .venv and installs requirements.txt; a changed requirements file reinstalls.
set -euo pipefail
cd "$(dirname "$0")"

venv=.venv
stamp="$venv/.requirements.sha256"
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "Setting up $venv (requirements.txt changed or missing) ..." >&2
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.txt
  echo "$want" > "$stamp"
fi
py="$venv/bin/python"

if [ $# -eq 0 ]; then
  exec "$py" -m core --help
fi
case "$1" in
  test) shift; exec "$py" -m pytest "$@" ;;
  -h|--help|help) exec "$py" -m core --help ;;
esac
# A registered solution name trains; anything else is a CLI command.
if "$py" -m core solutions --names | grep -qx -- "$1"; then
  exec "$py" -m core train "$@"
fi
exec "$py" -m core "$@"
