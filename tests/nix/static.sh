#!/usr/bin/env bash
# Static checks of every Nix file: it parses, is formatted (alejandra), has no dead
# code (deadnix); and the pure-Nix data evaluates with the real evaluator.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# Evaluation only: no builds, so no build users (Debian's nix-bin warns otherwise).
export NIX_CONFIG="build-users-group ="

fail=0
ok() { echo "ok: $*"; }
bad() {
  echo "FAIL: $*"
  fail=1
}
need() { command -v "$1" >/dev/null || { bad "$1 is not installed (tests/run installs it)"; exit 1; }; }
need nix-instantiate
need alejandra
need deadnix

mapfile -t files < <(git ls-files --cached --others --exclude-standard -- '*.nix')
[ ${#files[@]} -gt 0 ] || { ok "no Nix files"; exit 0; }

for f in "${files[@]}"; do
  if err=$(nix-instantiate --parse "$f" 2>&1 >/dev/null); then :; else bad "$f does not parse: $err"; fi
done
[ $fail -eq 0 ] && ok "${#files[@]} Nix files parse"

if alejandra --check --quiet "${files[@]}"; then ok "alejandra: all formatted"; else bad "alejandra: run 'alejandra .' to format"; fi
if deadnix --fail "${files[@]}" >/tmp/deadnix.$$ 2>&1; then
  ok "deadnix: no dead code"
else
  bad "deadnix found dead code:"
  cat /tmp/deadnix.$$
fi
rm -f /tmp/deadnix.$$

# The inventory is pure data: every host has an address in the private network's
# prefix, and every role and service name is one we know.
check=$(nix-instantiate --eval --strict --json -E '
  let
    inv = import ./nixos/lib/inventory.nix;
    roles = [ "visitors" "chat" "broadcast" "buffs" ];
    services = [ "proxy" "database" "cache" "broker" "monitoring" "logging" "ci" ];
    prefix = builtins.head (builtins.match "([0-9]+\\.[0-9]+\\.[0-9]+)\\.0/24" inv.privateNetwork);
    bad = builtins.filter (n:
      let h = inv.hosts.${n}; in
      builtins.match "${prefix}\\.[0-9]+" h.privateAddress == null
      || builtins.any (r: !(builtins.elem r roles)) h.roles
      || builtins.any (s: !(builtins.elem s services)) h.services
    ) (builtins.attrNames inv.hosts);
    addresses = map (n: inv.hosts.${n}.privateAddress) (builtins.attrNames inv.hosts);
    unique = builtins.length addresses == builtins.length (builtins.attrNames (builtins.listToAttrs (map (a: { name = a; value = 1; }) addresses)));
  in { inherit bad unique; }' 2>&1) || true
if [ "$check" = '{"bad":[],"unique":true}' ]; then ok "inventory: addresses, roles and services are consistent"; else bad "inventory: $check"; fi

exit $fail
