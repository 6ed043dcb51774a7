#!/usr/bin/env bash
# Make sure the offline data packages are present. Installs them when run as root; otherwise prints
# the exact command to run and fails, so nothing later trips over a missing file.
set -euo pipefail
FMNIST_DIR=/usr/share/datasets/fashion-mnist
if [ -f "$FMNIST_DIR/train-images-idx3-ubyte.gz" ] && [ -f "$FMNIST_DIR/t10k-labels-idx1-ubyte.gz" ]; then
  exit 0
fi
CMD="apt-get update && apt-get install -y dataset-fashion-mnist"
if [ "$(id -u)" = "0" ]; then
  echo "Installing Fashion-MNIST from Debian: $CMD" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null
else
  echo "Fashion-MNIST is missing ($FMNIST_DIR). Run as root: sudo sh -c '$CMD'" >&2
  exit 1
fi
