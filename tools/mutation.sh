#!/usr/bin/env bash
# Mutation testing of the core rules (RELIABILITY.md "Mutation testing") with mutmut 3.
# mutmut rewrites sources, so it runs in a scratch copy of this tree; the tree itself is never touched.
# Needs: .venv/bin/python -m pip install -r requirements-dev.txt
# Usage: tools/mutation.sh [mutant-name glob ...]   e.g. tools/mutation.sh "core.train.sam.*"
#        default: every function of the modules below, then `mutmut results` for the survivors.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
SCRATCH="${MUTATION_SCRATCH:-$(mktemp -d /tmp/mutation.XXXXXX)}"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

mkdir -p "$SCRATCH/repo"
# Copy the tree without git metadata or earlier mutants; .venv travels as its symlink.
tar -C "$REPO" --exclude=.git --exclude=mutants --exclude=solutions --exclude=cache \
    --exclude=__pycache__ -cf - . | tar -C "$SCRATCH/repo" -xf -
# tests find ../shared relative to the tree, and mutmut runs them from repo/mutants/.
ln -sfn "$REPO/../shared" "$SCRATCH/shared"
ln -sfn "$REPO/../shared" "$SCRATCH/repo/shared"

# mutmut skips decorated functions: SAM's @torch.no_grad() steps become with-blocks in the copy.
"$REPO/.venv/bin/python" "$REPO/tools/mutation_unwrap_no_grad.py" "$SCRATCH/repo/core/train/sam.py"

cat > "$SCRATCH/repo/setup.cfg" <<'CFG'
[mutmut]
source_paths=core
also_copy=
    plugins
    examples
    pytest.ini
    requirements.txt
    submissions
only_mutate=
    core/train/sam.py
    core/train/mixup.py
    core/train/fold.py
    core/metrics.py
    core/folds.py
    core/blend.py
    core/model/pcen.py
    core/data/metadata.py
pytest_add_cli_args_test_selection=
    tests/test_sam.py
    tests/test_maths.py
    tests/test_mutation_kills.py
    tests/test_blend.py
    tests/test_pcen.py
    tests/test_metadata.py
    tests/test_protocol.py
    -k
    not test_the_test_fold_never_chooses_the_epoch and not test_kaggle_layout_refuses and not test_leakage_guard_official_layout and not test_leakage_guard_kaggle_test_names
pytest_add_cli_args=
    -p
    no:cacheprovider
    -q
CFG

# The rules under test: whole modules, plus the best-epoch rule of fold.py and the leakage guard of metadata.py.
DEFAULT_GLOBS=(
    "core.train.sam.*" "core.train.mixup.*" "core.metrics.*" "core.folds.*" "core.blend.*" "core.model.pcen.*"
    "core.train.fold.xǁResumeStateǁrecord__mutmut_*"
    "core.data.metadata.x_fold_leakage__mutmut_*" "core.data.metadata.x__recording__mutmut_*"
)
GLOBS=("$@")
[ ${#GLOBS[@]} -eq 0 ] && GLOBS=("${DEFAULT_GLOBS[@]}")

cd "$SCRATCH/repo"
.venv/bin/python -m mutmut run --max-children "${MUTATION_JOBS:-1}" "${GLOBS[@]}" || true
.venv/bin/python -m mutmut results --all false > "$SCRATCH/survivors.txt" 2>&1 || true
echo "scratch copy: $SCRATCH ; survivors: $SCRATCH/survivors.txt (mutmut show NAME there for a diff)"
