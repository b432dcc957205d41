#!/usr/bin/env bash
# Start a Docker engine as these machines need it, unless one already answers: dockerd (Debian's
# docker.io) without a bridge, NAT or iptables rules, so nothing is routed to private address ranges;
# containers then use the host's network (`docker run --network host`, compose `network_mode: host`).
# Waits up to 60 s for it to answer. Log: /var/log/quantbench-dockerd.log. Needs root.
set -euo pipefail
if docker info >/dev/null 2>&1; then
  exit 0
fi
nohup dockerd --bridge=none --iptables=false --ip-masq=false >/var/log/quantbench-dockerd.log 2>&1 &
for _ in $(seq 60); do
  if docker info >/dev/null 2>&1; then
    echo "dockerd: started ($(docker info --format '{{.ServerVersion}}'))"
    exit 0
  fi
  sleep 1
done
echo "dockerd did not answer within 60 s; see /var/log/quantbench-dockerd.log" >&2
tail -n 20 /var/log/quantbench-dockerd.log >&2
exit 1
