#!/usr/bin/env bash
# MEG demo: start an edge server and a channel proxy on loopback (free ports), send one prompt from the
# UE with the CIAG protocol through a 20 dB AWGN link, write demo.png, stop both servers cleanly.
# Usage: scripts/demo.sh ["PROMPT"] [OUT.png]
set -euo pipefail
export HF_HUB_OFFLINE=1
prompt=${1:-"a large red circle on a white background"}
out=${2:-demo.png}
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

model_args=()
if ! python -c "from shared.model.loader import default_model_path; default_model_path()" 2>/dev/null; then
  echo "demo: the embedded meg-tiny weights are missing; using a TINY RANDOM model (the image will be noise)"
  meg-edge make-random-model "$work/random-model" >/dev/null
  model_args=(--model "$work/random-model")
fi

wait_port() {  # wait_port LOGFILE -> prints the port the process reported
  for _ in $(seq 1 600); do
    if port=$(grep -o 'listening on port [0-9]*' "$1" | awk '{print $4}') && [ -n "$port" ]; then echo "$port"; return 0; fi
    sleep 0.2
  done
  echo "demo: server did not start; its log:" >&2; cat "$1" >&2; return 1
}

meg-edge serve --listen 127.0.0.1:0 "${model_args[@]}" >"$work/edge.log" 2>&1 &
pids+=($!)
es_port=$(wait_port "$work/edge.log")
meg-channel serve --listen 127.0.0.1:0 --upstream "127.0.0.1:$es_port" --snr-db 20 >"$work/channel.log" 2>&1 &
pids+=($!)
ch_port=$(wait_port "$work/channel.log")
echo "demo: edge server on :$es_port, channel proxy (AWGN 20 dB both ways) on :$ch_port"

meg-ue generate "$prompt" --protocol CIAG --via "127.0.0.1:$ch_port" --out "$out" "${model_args[@]}"
meg-channel stats --via "127.0.0.1:$ch_port"
echo "demo: wrote $out"
