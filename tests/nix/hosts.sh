#!/usr/bin/env bash
# Every example host (lb, app1, app2, data, monitor, ci, allinone) evaluated
# before Hydra sees it: our modules and profiles, with their option types and
# assertions, by nixpkgs' own module system (lib.evalModules, the lib of
# HUBBUB_NIXPKGS_LIB), with stand-ins for nixpkgs' options and agenix
# (tests/nix/hosts/stand-ins.nix). Then, across hosts:
#   - no failed assertion, no warning;
#   - every /run/agenix/<name> a host uses (credentials, LoadCredential,
#     key and password files) is a secret that host declares, and the host
#     is among that secret's recipients in secrets/secrets.nix;
#   - the wiring of the inventory: each app host's database, cache and broker
#     URL, each journal upload URL, each HAProxy server and each Prometheus
#     target is a host that listens there and opens the port to the private
#     network.
# Each kind of mistake is then planted (tests/nix/hosts/plants.nix) and must
# be caught.
#
# HUBBUB_NIXPKGS_LIB: nixpkgs' lib at the pinned nixpkgs revision: a nixpkgs
# checkout, or nix-community/nixpkgs.lib (either directory holding lib/).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export NIX_CONFIG="build-users-group ="

lib_root=${HUBBUB_NIXPKGS_LIB:-}
if [ -z "$lib_root" ]; then
  echo "SKIPPED: host evaluation: HUBBUB_NIXPKGS_LIB is not set. Point it at nixpkgs' lib"
  echo "  (a nixpkgs checkout at the rev in flake.lock, or nix-community/nixpkgs.lib of the"
  echo "  same nixpkgs release) to evaluate every host here."
  exit 0
fi
[ -f "$lib_root/lib/default.nix" ] || {
  echo "FAIL: HUBBUB_NIXPKGS_LIB=$lib_root has no lib/default.nix"
  exit 1
}
for tool in nix-instantiate python3; do
  command -v "$tool" >/dev/null || {
    echo "FAIL: $tool is not installed (tests/run installs it)"
    exit 1
  }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# evaluate HOST [PLANT] -> $work/<plant>/<host>.json, or .err
evaluate() {
  local host=$1 plant=${2:-} dir=$work/${2:-clean}
  mkdir -p "$dir"
  if ! nix-instantiate --eval --strict --json tests/nix/hosts/eval.nix \
    --arg lib "import $lib_root/lib" --argstr host "$host" --argstr plant "$plant" \
    >"$dir/$host.json" 2>"$dir/$host.err"; then
    rm -f "$dir/$host.json"
  fi
}

mapfile -t hosts < <(nix-instantiate --eval --strict --json -E 'builtins.attrNames (import ./nixos/lib/inventory.nix).hosts ++ ["allinone"]' | python3 -c 'import json, sys; print("\n".join(json.load(sys.stdin)))')
for host in "${hosts[@]}"; do evaluate "$host"; done

# Recipients: each secret's public keys, and each example host's key.
nix-instantiate --eval --strict --json -E 'builtins.mapAttrs (_: rule: rule.publicKeys) (import ./secrets/secrets.nix)' >"$work/recipients.json"

mapfile -t plants < <(nix-instantiate --eval --strict --json -E 'builtins.attrNames (import ./tests/nix/hosts/plants.nix)' | python3 -c 'import json, sys; print("\n".join(json.load(sys.stdin)))')
for plant in "${plants[@]}"; do
  mapfile -t planted < <(nix-instantiate --eval --strict --json -E "(import ./tests/nix/hosts/plants.nix).\"$plant\".hosts" | python3 -c 'import json, sys; print("\n".join(json.load(sys.stdin)))')
  for host in "${planted[@]}"; do evaluate "$host" "$plant"; done
  nix-instantiate --eval --strict --json -E "(import ./tests/nix/hosts/plants.nix).\"$plant\".expect" >"$work/$plant/expect.json"
done

python3 tests/nix/hosts.py "$work" "${hosts[@]}"
