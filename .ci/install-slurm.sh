#!/usr/bin/env bash
# Install a single-node Slurm (Debian's slurm-wlm) plus munge, for the Slurm test harness
# (tests/cluster/slurm.py). Idempotent; must run as root on Debian/Ubuntu.
#
#   sudo .ci/install-slurm.sh
#
# It only installs packages and creates the munge key. It starts no daemons: the test
# harness starts munged, slurmctld and slurmd itself and stops them again.
set -euo pipefail

if [[ ${EUID} -ne 0 ]]; then
    echo "install-slurm.sh: must run as root (try: sudo $0)" >&2
    exit 1
fi

packages=(slurm-wlm munge)
missing=()
for pkg in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "${pkg}" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("${pkg}")
    fi
done

if ((${#missing[@]})); then
    echo "install-slurm.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # Debian's postinst scripts try to start services via invoke-rc.d; with no init system
    # they fail harmlessly or are skipped, and policy-rc.d makes the intent explicit.
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [[ ! -e ${policy} ]]; then
        printf '#!/bin/sh\nexit 101\n' >"${policy}"
        chmod 0755 "${policy}"
        created_policy=1
    fi
    trap '[[ ${created_policy} -eq 1 ]] && rm -f "${policy}"' EXIT
    apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    echo "install-slurm.sh: ${packages[*]} already installed"
fi

# munge needs a shared secret key: owned by munge, mode 0400.
key=/etc/munge/munge.key
install -d -o munge -g munge -m 0700 /etc/munge
if [[ ! -s ${key} ]]; then
    echo "install-slurm.sh: creating ${key}"
    if command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile="${key}" --force
    else
        dd if=/dev/urandom of="${key}" bs=1 count=1024 status=none
    fi
fi
chown munge:munge "${key}"
chmod 0400 "${key}"

# Runtime / log dirs munged expects (the harness re-creates /run/munge if it is missing).
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge

echo "install-slurm.sh: done ($(slurmctld -V 2>/dev/null || echo 'slurmctld not found'))"
