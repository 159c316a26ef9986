#!/usr/bin/env bash
# Set up everything and run all the checks: the README's test command, and what .ci/run calls.
#  - as root: installs the system parts the tests need (Debian packages) ;
#  - creates .venv-test and installs the package with its test and dev extras ;
#  - runs ruff, mypy --strict, and pytest under branch coverage.
# With CI=true, a skipped test fails the run (see tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
venv=.venv-test

if [ "$(id -u)" = 0 ]; then
    missing=()
    command -v ip >/dev/null 2>&1 || missing+=(iproute2)
    "$python" -c "import ensurepip, venv" >/dev/null 2>&1 || missing+=(python3-venv)
    # PAM tests (tests/conftest.py pam_user): useradd/chpasswd/userdel, libpam, pam_unix
    command -v useradd >/dev/null 2>&1 || missing+=(passwd)
    ldconfig -p 2>/dev/null | grep 'libpam\.so\.0' >/dev/null || missing+=(libpam0g)
    [ -n "$(find /lib /usr/lib -path '*/security/pam_unix.so' -print -quit 2>/dev/null)" ] ||
        missing+=(libpam-modules)
    # rate limit tests (tests/test_ratelimit.py): each run starts its own redis-server on a free port
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
    # the browser test (tests/test_browser.py): Debian's chromium, driven by Playwright
    [ -x /usr/bin/chromium ] || missing+=(chromium)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "run.sh: installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
elif [ "${CI:-}" = true ]; then
    echo "run.sh: CI must run as root (the tests add addresses to the loopback interface)" >&2
    exit 1
fi

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev]'

echo "== ruff"
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .
echo "== mypy --strict"
"$venv/bin/mypy"
echo "== pytest"
"$venv/bin/coverage" run -m pytest "$@"
"$venv/bin/coverage" report --show-missing --skip-covered --fail-under=90
