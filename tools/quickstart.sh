#!/usr/bin/env bash
# Sets up, builds and runs ktlb on configs/quickstart.toml with the demo
# origin behind it and a locally generated test CA:
#   curl --cacert configs/certs/ca.crt https://localhost:8443/
set -euo pipefail
cd "$(dirname "$0")/.."

bash tools/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target ktlb ktlb-origin
bash tools/gen-certs.sh configs/certs

./build/ktlb-origin --listen 127.0.0.1:9001 --name demo &
ORIGIN=$!
trap 'kill $ORIGIN 2>/dev/null || true' EXIT
echo "quickstart: try  curl --cacert configs/certs/ca.crt https://localhost:8443/"
./build/ktlb --config configs/quickstart.toml
