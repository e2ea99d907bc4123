#!/usr/bin/env bash
# Journal shipping as nixos/profiles/logging.nix deploys it, with the real
# daemons: systemd-journal-remote on loopback over plain HTTP, HAProxy with the
# gateway configuration rendered from nixos/lib/journal-gateway.nix in front of
# it (TLS, client certificates from the internal CA required), and
# systemd-journal-upload presenting a certificate, as on every host.
#   - an uploader with a certificate from the internal CA gets its entries
#     into the central journal;
#   - one with a certificate from another CA, and a client with none, are
#     refused at the TLS handshake, and nothing of theirs arrives;
#   - the refusals are real: the same checks fail against a gateway rendered
#     with `verify none`.
# Debian's systemd is built without GnuTLS, as nixpkgs' is: journal-remote
# cannot terminate TLS itself here either.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export NIX_CONFIG="build-users-group ="

fail=0
ok() { echo "ok: $*"; }
bad() {
  echo "FAIL: $*"
  fail=1
}
find_tool() {
  local name=$1 dir
  for dir in /lib/systemd /usr/lib/systemd; do
    [ -x "$dir/$name" ] && {
      echo "$dir/$name"
      return 0
    }
  done
  return 1
}
remote=$(find_tool systemd-journal-remote) || {
  bad "systemd-journal-remote is not installed (apt-get install systemd-journal-remote; tests/run does)"
  exit 1
}
upload=$(find_tool systemd-journal-upload) || {
  bad "systemd-journal-upload is not installed (apt-get install systemd-journal-remote)"
  exit 1
}
for tool in haproxy openssl curl journalctl nix-instantiate python3; do
  command -v "$tool" >/dev/null || {
    bad "$tool is not installed (tests/run installs it)"
    exit 1
  }
done

work=$(mktemp -d)
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() {
  local port=$1 i
  for i in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# --- PKI: the internal CA (server and client certificates) and a foreign one --
pki=$work/pki
mkdir -p "$pki"
ca() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/O=hubbub test/CN=$1" -keyout "$pki/$1.key" -out "$pki/$1.pem" 2>/dev/null
}
issue() { # NAME CA EXTENSIONS
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/O=hubbub test/CN=$1" \
    -keyout "$pki/$1.key" -out "$pki/$1.csr" 2>/dev/null
  openssl x509 -req -in "$pki/$1.csr" -CA "$pki/$2.pem" -CAkey "$pki/$2.key" -CAcreateserial \
    -days 2 -extfile <(printf '%s\n' "$3") -out "$pki/$1.pem" 2>/dev/null
}
ca internal-ca
ca other-ca
issue journal-remote-monitor internal-ca "subjectAltName=IP:127.0.0.1,DNS:localhost"$'\n'"extendedKeyUsage=serverAuth"
issue journal-upload-app1 internal-ca "subjectAltName=DNS:app1"$'\n'"extendedKeyUsage=clientAuth"
issue journal-upload-intruder other-ca "subjectAltName=DNS:app1"$'\n'"extendedKeyUsage=clientAuth"

# --- journal-remote on loopback, plain HTTP, as the logging profile runs it -----
receiver_port=$(free_port)
mkdir -p "$work/central"
"$remote" --listen-http="127.0.0.1:$receiver_port" --split-mode=host --output="$work/central/" \
  >"$work/remote.log" 2>&1 &
pids+=($!)
wait_port "$receiver_port" || {
  bad "systemd-journal-remote did not listen: $(cat "$work/remote.log")"
  exit 1
}

# --- the gateway: nixos/lib/journal-gateway.nix, key from the credentials dir --
# start_gateway NAME [SED-EXPRESSION]: renders, checks and starts it; sets gateway_port.
start_gateway() {
  local name=$1 edit=${2:-}
  gateway_port=$(free_port)
  nix-instantiate --eval --strict --json -E "import ./nixos/lib/journal-gateway.nix {
      listen = \"127.0.0.1:$gateway_port\";
      receiver = \"127.0.0.1:$receiver_port\";
      clientCa = \"$pki/internal-ca.pem\";
    }" 2>/dev/null | python3 -c 'import json, sys; sys.stdout.write(json.load(sys.stdin))' >"$work/$name.cfg"
  [ -z "$edit" ] || sed -i "$edit" "$work/$name.cfg"
  mkdir -p "$work/credentials-$name"
  cp "$pki/journal-remote-monitor.pem" "$work/credentials-$name/server.pem"
  cp "$pki/journal-remote-monitor.key" "$work/credentials-$name/server.pem.key"
  if ! CREDENTIALS_DIRECTORY=$work/credentials-$name haproxy -c -q -f "$work/$name.cfg" >"$work/$name.check" 2>&1; then
    bad "haproxy -c rejects the rendered gateway configuration: $(cat "$work/$name.check")"
    return 1
  fi
  CREDENTIALS_DIRECTORY=$work/credentials-$name haproxy -db -f "$work/$name.cfg" >"$work/$name.log" 2>&1 &
  pids+=($!)
  wait_port "$gateway_port" || {
    bad "the gateway did not listen: $(cat "$work/$name.log")"
    return 1
  }
}

# One entry to ship, as journal-upload reads it from a journal file.
journal_with() { # FILE TOKEN
  printf '__REALTIME_TIMESTAMP=%s\n__MONOTONIC_TIMESTAMP=1000\n_BOOT_ID=0123456789abcdef0123456789abcdef\n_HOSTNAME=app1\nSYSLOG_IDENTIFIER=hubbub\nMESSAGE=%s\n\n' \
    "$(date +%s)000000" "$2" | "$remote" -o "$1" - 2>/dev/null
}
arrived() { # TOKEN: is it in the central journal?
  journalctl --directory="$work/central" -o cat 2>/dev/null | grep -qx "$1"
}
upload_as() { # CERT-NAME TOKEN PORT
  journal_with "$work/$2.journal" "$2"
  timeout 20 "$upload" --url="https://127.0.0.1:$3" --key="$pki/$1.key" --cert="$pki/$1.pem" \
    --trust="$pki/internal-ca.pem" --file="$work/$2.journal" --follow=no >"$work/$2.log" 2>&1
}
# A client without a certificate: the upload request journal-upload would send.
upload_without_certificate() { # TOKEN PORT
  printf '__REALTIME_TIMESTAMP=%s000000\n__MONOTONIC_TIMESTAMP=1000\n_BOOT_ID=0123456789abcdef0123456789abcdef\nMESSAGE=%s\n\n' \
    "$(date +%s)" "$1" >"$work/$1.export"
  timeout 20 curl -sS --fail --cacert "$pki/internal-ca.pem" -H 'Content-Type: application/vnd.fdo.journal' \
    --data-binary "@$work/$1.export" "https://127.0.0.1:$2/upload" >"$work/$1.log" 2>&1
}
# Entries reach the receiver asynchronously to the upload's answer: wait for the
# accepted one (bounded) before deciding that the refused ones are absent.
wait_arrived() {
  local i
  for i in $(seq 1 50); do
    arrived "$1" && return 0
    sleep 0.1
  done
  return 1
}

start_gateway gateway || exit 1
ok "the rendered gateway configuration passes haproxy -c and serves on 127.0.0.1:$gateway_port"

if upload_as journal-upload-app1 token-valid-cert "$gateway_port" && wait_arrived token-valid-cert; then
  ok "journal-upload with an internal-CA certificate: its entry is in the central journal"
else
  bad "the upload with a valid certificate did not arrive: $(cat "$work/token-valid-cert.log")"
fi
if upload_as journal-upload-intruder token-other-ca "$gateway_port"; then
  bad "journal-upload with a certificate from another CA was accepted"
else
  ok "journal-upload with a certificate from another CA is refused ($(grep -o 'failed: .*' "$work/token-other-ca.log" | head -1))"
fi
if upload_without_certificate token-no-cert "$gateway_port"; then
  bad "an upload without a client certificate was accepted"
else
  ok "an upload without a client certificate is refused ($(head -1 "$work/token-no-cert.log"))"
fi
# A last good upload after the refused ones: once it is in, they would be too.
upload_as journal-upload-app1 token-after "$gateway_port" && wait_arrived token-after || true
if arrived token-other-ca || arrived token-no-cert; then
  bad "entries of a refused uploader reached the central journal"
else
  ok "nothing of the refused uploaders reached the central journal"
fi

# --- the checks bite: a gateway that does not verify lets both in ----------------
start_gateway lax 's/verify required/verify none/' || exit 1
upload_as journal-upload-intruder token-lax-other-ca "$gateway_port" || true
upload_without_certificate token-lax-no-cert "$gateway_port" || true
if wait_arrived token-lax-other-ca && wait_arrived token-lax-no-cert; then
  ok "against a gateway with 'verify none' both refused uploads get in: the refusals above come from 'verify required'"
else
  bad "even 'verify none' refused the uploads: the refusal checks prove nothing ($(cat "$work/token-lax-no-cert.log"))"
fi

exit $fail
