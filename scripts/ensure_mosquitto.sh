#!/usr/bin/env bash
# The MQTT tests start real Mosquitto brokers; install Mosquitto when it is missing (apt, as root).
set -euo pipefail
if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing Mosquitto for the MQTT tests (apt-get install -y mosquitto)..."
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
  exit 0
fi
echo "The MQTT tests need Mosquitto: install it with 'sudo apt-get install -y mosquitto' (or brew install mosquitto)" >&2
exit 1
