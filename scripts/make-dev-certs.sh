#!/usr/bin/env bash
# Make a private CA and certificates for local MEG use (mutual TLS between UEs, the channel proxy and edge
# servers), plus two bearer tokens. Never commit the output: the keys are secrets.
#
#   scripts/make-dev-certs.sh [OUT_DIR] [EXTRA_NAME ...]
#
# OUT_DIR (default ./certs) gets ca.pem/ca.key, and {edge,channel,ue}.pem/.key for the three roles. Each
# certificate's common name is its role (meg-edge, meg-channel, meg-ue: what `meg-edge serve --tls-client-name`
# checks), and it is valid for localhost, 127.0.0.1, ::1, its role name and the EXTRA_NAMEs (DNS names or IP
# addresses, e.g. compose service names). The edge and channel certificates serve and act as clients (the proxy
# dials the ES, the ES dials the proxy's control service for CSI); the UE's is for clients only.
# Also ue.token and admin.token (random, for --token-file / --admin-token-file).
set -euo pipefail
out="${1:-certs}"
shift || true
extra=("$@")
days="${MEG_CERT_DAYS:-30}"
mkdir -p "$out"
umask 077
cd "$out"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
  -keyout ca.key -out ca.pem -subj "/CN=MEG dev CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

for role in edge channel ue; do
  san="DNS:localhost,IP:127.0.0.1,IP:::1,DNS:meg-$role"
  for name in "${extra[@]+"${extra[@]}"}"; do
    if [[ "$name" =~ ^[0-9.]+$ || "$name" == *:* ]]; then san+=",IP:$name"; else san+=",DNS:$name"; fi
  done
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$role.key" -out "$role.csr" \
    -subj "/CN=meg-$role" 2>/dev/null
  usage="serverAuth,clientAuth"
  [[ "$role" == ue ]] && usage="clientAuth"
  printf '%s\n' "subjectAltName=$san" "basicConstraints=CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=$usage" > "$role.ext"
  openssl x509 -req -in "$role.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days "$days" \
    -extfile "$role.ext" -out "$role.pem" 2>/dev/null
  rm -f "$role.csr" "$role.ext"
done
rm -f ca.srl
printf '*\n' > .gitignore  # the keys never end up in git
for t in ue admin; do
  openssl rand -hex 24 > "$t.token"
done
chmod 600 ./*.key ./*.token
echo "wrote $(pwd): ca.pem, {edge,channel,ue}.pem/.key, ue.token, admin.token (valid $days days)"
