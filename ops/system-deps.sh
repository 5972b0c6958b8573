#!/usr/bin/env bash
# Install the Debian packages one kind of Cardline install needs, only those missing. Run
# as root on Debian; elsewhere it prints what to install and carries on.
#
#   ops/system-deps.sh demo      what the core install runs on (`make demo`)
#   ops/system-deps.sh stations  + what the pcsc and cups extras build and run with
#   ops/system-deps.sh test      + the real stacks the tests drive (`make test`)
set -euo pipefail
demo=(python3-venv fonts-dejavu-core)
stations=(gcc swig libpcsclite-dev pcscd libcups2-dev)
# prometheus: for its promtool, which checks ops/monitoring/alerts.yml (test_monitoring).
# chromium, chromium-driver: the console's browser test (tests/unit/test_console_browser.py).
test=(softhsm2 opensc vsmartcard-vpcd cups printer-driver-cups-pdf poppler-utils prometheus
  chromium chromium-driver)
case "${1:-test}" in
  demo) packages=("${demo[@]}") ;;
  stations) packages=("${demo[@]}" "${stations[@]}") ;;
  test) packages=("${demo[@]}" "${stations[@]}" "${test[@]}") ;;
  *) echo "usage: $0 demo|stations|test" >&2; exit 2 ;;
esac
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  echo "installing system packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "warning: please install these system packages: ${missing[*]}" >&2
fi
