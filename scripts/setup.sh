#!/usr/bin/env bash
# Idempotent host setup: Debian packages + the project virtualenv (.venv).
# Re-runs are fast: a stamp records what was installed; it is redone when the
# package list or pyproject.toml changes.
set -euo pipefail
top="$(cd "$(dirname "$0")/.." && pwd)"
cd "$top"

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: must run as root (installs Debian packages, creates namespaces)" >&2
  exit 2
fi

stamp_input="$(cat scripts/apt-packages.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ -f .setup-stamp ] && [ "$(cat .setup-stamp)" = "$stamp_input" ] && [ -x .venv/bin/nodeos ]; then
  exit 0
fi

packages="$(grep -v '^\s*#' scripts/apt-packages.txt | awk 'NF{print $1}' | sort -u | tr '\n' ' ')"
echo "setup: installing Debian packages: $packages" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# No package may start its daemon on this host (MariaDB, Ceph, nginx...): the
# agents run them. policy-rc.d is Debian's switch for that, removed again after.
own_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  own_policy=1
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT  # also when apt-get fails
fi
# OpenStack packages ask dbconfig/debconf questions: the agents configure
# them from the replicated state, so the packages must not (no database, no endpoints).
debconf-set-selections <<'PRESEED'
keystone keystone/configure_db boolean false
keystone keystone/create-admin-tenant boolean false
keystone keystone/register-endpoint boolean false
glance-common glance/configure_db boolean false
glance-common glance/configure_ksat boolean false
glance-api glance/configure_api-endpoint boolean false
placement-common placement/configure_db boolean false
placement-common placement/configure_ksat boolean false
placement-api placement/configure_api-endpoint boolean false
nova-common nova/configure_db boolean false
nova-common nova/configure_rabbit boolean false
nova-common nova/configure_ksat boolean false
nova-common nova/configure_neutron boolean false
nova-common nova/configure_placement boolean false
nova-api novaapi/configure_db boolean false
nova-api nova/configure_api-endpoint boolean false
cinder-common cinder/configure_db boolean false
cinder-common cinder/configure_rabbit boolean false
cinder-common cinder/configure_ksat boolean false
cinder-api cinder/configure_api-endpoint boolean false
neutron-common neutron/configure_db boolean false
neutron-common neutron/configure_rabbit boolean false
neutron-common neutron/configure_ksat boolean false
neutron-common neutron/configure_nova boolean false
neutron-api neutron/configure_api-endpoint boolean false
# horizon's ALLOWED_HOSTS (its only question): the agent writes the real list (its VIP) in local_settings.py.
openstack-dashboard horizon/allowed-hosts string localhost
PRESEED
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $packages >/dev/null
if [ "$own_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi

# Daemons from the lab catalog are started by the agents, not by the host.
# (RabbitMQ: its epmd too, which Erlang's package starts by socket activation;
# tgt or open-iscsi: cinder-volume's iSCSI target or initiator, pulled in by the package, unused with RBD.)
for unit in memcached nginx ceph-crash mariadb keystone glance-api placement-api nova-api nova-api-metadata \
            nova-conductor nova-scheduler cinder-api cinder-scheduler cinder-volume tgt iscsid.socket iscsid \
            neutron-api neutron-rpc-server rabbitmq-server epmd.socket epmd; do
  systemctl disable --now "$unit" >/dev/null 2>&1 || true
done

# Debian's interpreter, the same one the node image ships.
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating virtualenv .venv" >&2
  /usr/bin/python3 -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip wheel setuptools
.venv/bin/pip install -q -e '.[test,image]'
echo "$stamp_input" > .setup-stamp
echo "setup: done" >&2
