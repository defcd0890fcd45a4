#!/usr/bin/env bash
# Set up the project (virtual environment at .venv) and run the demo or the tests.
#   bash dev.sh demo   # set up, then run the demo
#   bash dev.sh test   # set up, then lint and run the test suite
#   bash dev.sh setup  # only set up
#   bash dev.sh lowest # the tests against the lowest versions pyproject.toml allows (.venv-lowest)
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"

setup() {
    if [ ! -x .venv/bin/python ]; then
        "$PYTHON" -m venv .venv
    fi
    # reinstall only when the project's metadata changed since the last set-up
    stamp=.venv/.dahu-installed
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        .venv/bin/python -m pip install --quiet --upgrade pip
        .venv/bin/python -m pip install --quiet -e ".[test]"
        touch "$stamp"
    fi
}

case "${1:-}" in
    setup)
        setup
        ;;
    demo)
        setup
        shift
        exec .venv/bin/dahu-demo "$@"
        ;;
    test)
        setup
        shift
        .venv/bin/ruff check src tests bench
        .venv/bin/ruff format --check src tests bench
        # three test files at a time (pytest-xdist, one file per worker): the tests
        # mostly wait for devices, servers and browsers, not for the two CPUs
        exec .venv/bin/python -m pytest -n 3 --dist loadfile "$@"
        ;;
    lowest)
        # every direct dependency at the lower bound pyproject.toml gives it (uv's
        # lowest-direct resolution), in an environment made afresh each time (an
        # installed newer version would satisfy the bound and stay)
        rm -rf .venv-lowest
        "$PYTHON" -m venv .venv-lowest
        .venv-lowest/bin/python -m pip install --quiet uv
        .venv-lowest/bin/uv pip install --quiet --python .venv-lowest/bin/python \
            --resolution lowest-direct -e ".[test]"
        shift
        exec .venv-lowest/bin/python -m pytest -p no:cacheprovider -n 3 --dist loadfile "$@"
        ;;
    *)
        echo "usage: bash dev.sh {demo|test|setup|lowest} [arguments]" >&2
        exit 2
        ;;
esac
