#!/usr/bin/env bash
# Regenerates the EXAMPLE secrets of this repository with the `age` CLI.
#
#   secrets/make-examples.sh keys      # example SSH keys (admin + each host) under nixos/tests/keys/
#   secrets/make-examples.sh pki       # example internal CA and certificates under secrets/pki/
#   secrets/make-examples.sh encrypt   # every secrets/*.age listed in secrets/secrets.nix
#
# The private halves of the example keys are committed under nixos/tests/keys/
# so the VM tests can decrypt: they are INSECURE and only for the example
# hosts. For a real deployment put your own admin and host keys into
# secrets/secrets.nix and create each secret with `agenix -e <name>.age`
# (docs/deploy.md). Plaintexts are random and never written to the repository;
# the CA private key only exists encrypted (internal-ca-key.age, admins only).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

keys_dir=nixos/tests/keys
pki_dir=secrets/pki
hosts=(allinone lb app1 app2 data monitor ci app)
force=${FORCE:-0}

# Hosts that ship their journal to the monitor host (each has its own client certificate).
upload_hosts=(lb app1 app2 data ci app)

rand() { head -c "${1:-32}" /dev/urandom | od -An -tx1 | tr -d ' \n'; }

keys() {
  mkdir -p "$keys_dir"
  for name in admin "${hosts[@]}"; do
    local key="$keys_dir/INSECURE-${name}_ed25519"
    if [ -e "$key" ] && [ "$force" != 1 ]; then
      echo "keep $key"
      continue
    fi
    rm -f "$key" "$key.pub"
    ssh-keygen -q -t ed25519 -N "" -C "hubbub-example-${name} INSECURE test key" -f "$key"
    echo "made $key"
  done
}

pki() {
  mkdir -p "$pki_dir"
  local work
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  openssl ecparam -name prime256v1 -genkey -noout -out "$work/ca.key"
  openssl req -x509 -new -key "$work/ca.key" -sha256 -days 3650 \
    -subj "/O=hubbub example/CN=hubbub example internal CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$pki_dir/ca.pem"

  # issue NAME SAN USAGE: key to $work/NAME.key, certificate to secrets/pki/NAME.pem
  issue() {
    openssl ecparam -name prime256v1 -genkey -noout -out "$work/$1.key"
    openssl req -new -key "$work/$1.key" -subj "/O=hubbub example/CN=$1" -out "$work/$1.csr"
    printf 'subjectAltName=%s\nextendedKeyUsage=%s\nkeyUsage=critical,digitalSignature\nbasicConstraints=CA:FALSE\n' "$2" "$3" >"$work/$1.ext"
    openssl x509 -req -in "$work/$1.csr" -CA "$pki_dir/ca.pem" -CAkey "$work/ca.key" -CAcreateserial \
      -days 3650 -sha256 -extfile "$work/$1.ext" -out "$pki_dir/$1.pem" 2>/dev/null
  }
  issue mqtt-data "DNS:data,DNS:data.hubbub.internal,IP:10.42.0.20" serverAuth
  issue journal-remote-monitor "DNS:monitor,DNS:monitor.hubbub.internal,IP:10.42.0.30" serverAuth
  for host in "${upload_hosts[@]}"; do
    issue "journal-upload-$host" "DNS:$host" clientAuth
  done
  rm -f "$pki_dir"/*.srl

  # The private keys go straight into age files (see `encrypt`); keep them in
  # a private staging directory until then.
  mkdir -p secrets/.staging
  chmod 700 secrets/.staging
  cp "$work/ca.key" secrets/.staging/internal-ca-key
  cp "$work/mqtt-data.key" secrets/.staging/mqtt-tls-key
  cp "$work/journal-remote-monitor.key" secrets/.staging/journal-remote-key
  for host in "${upload_hosts[@]}"; do
    cp "$work/journal-upload-$host.key" "secrets/.staging/journal-upload-$host-key"
  done
}

# plaintext NAME: prints the example plaintext of a secret (random, or a staged key).
plaintext() {
  case "$1" in
    mqtt-tls-key | journal-remote-key | journal-upload-*-key | internal-ca-key)
      cat "secrets/.staging/$1"
      ;;
    redis-exporter-env)
      printf 'REDIS_PASSWORD=%s\n' "$(cat secrets/.staging/redis-password)"
      ;;
    alertmanager-env)
      printf 'HUBBUB_ALERT_WEBHOOK_URL=https://hooks.example.org/hubbub/%s\n' "$(rand 16)"
      ;;
    hubbub-buffs-admin-tokens)
      printf '%s\n%s\n' "$(rand 24)" "$(rand 24)"
      ;;
    binary-cache-key)
      # Nix's own format (name:base64); the public half is public data.
      [ -e secrets/.staging/binary-cache-key ] ||
        nix-store --generate-binary-cache-key ci.hubbub.example.org-1 \
          secrets/.staging/binary-cache-key "$pki_dir/binary-cache-key.pub" 2>/dev/null
      cat secrets/.staging/binary-cache-key
      ;;
    *)
      if [ -e "secrets/.staging/$1" ]; then cat "secrets/.staging/$1"; else rand 24; fi
      ;;
  esac
}

encrypt() {
  mkdir -p secrets/.staging
  chmod 700 secrets/.staging
  # The Redis password appears in two secrets; stage it once.
  [ -e secrets/.staging/redis-password ] || rand 24 >secrets/.staging/redis-password
  local names
  names=$(nix-instantiate --eval --strict --json -E 'builtins.attrNames (import ./secrets/secrets.nix)' 2>/dev/null |
    jq -r '.[]')
  for file in $names; do
    local name=${file%.age}
    if [ -e "secrets/$file" ] && [ "$force" != 1 ]; then
      echo "keep secrets/$file"
      continue
    fi
    local recipients=()
    while IFS= read -r key; do recipients+=(-r "$key"); done < <(
      nix-instantiate --eval --strict --json -E "(import ./secrets/secrets.nix).\"$file\".publicKeys" 2>/dev/null |
        jq -r '.[]'
    )
    plaintext "$name" | age --encrypt --armor "${recipients[@]}" -o "secrets/$file"
    echo "made secrets/$file ($((${#recipients[@]} / 2)) recipients)"
  done
  rm -rf secrets/.staging
}

case "${1:-}" in
  keys) keys ;;
  pki) pki ;;
  encrypt) encrypt ;;
  *)
    echo "usage: $0 keys|pki|encrypt   (FORCE=1 to overwrite)" >&2
    exit 2
    ;;
esac
