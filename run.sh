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
# A CLI command runs as given; anything else is taken as a solution name to train
# (an unknown name then fails with the list of known solutions).
commands=$("$py" -c 'from core.cli import app; print("\n".join(c.name for c in app.registered_commands))')
if [[ "$1" == -* ]] || grep -qx -- "$1" <<<"$commands"; then
  exec "$py" -m core "$@"
fi
exec "$py" -m core train "$@"
