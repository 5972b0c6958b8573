#!/usr/bin/env bash
# Install the Debian packages Cardline needs, only those missing. Run as root on Debian;
# elsewhere it prints what to install and carries on.
set -euo pipefail
packages=(python3-venv fonts-dejavu-core softhsm2 opensc pcscd vsmartcard-vpcd libpcsclite-dev swig gcc cups printer-driver-cups-pdf libcups2-dev poppler-utils)
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
