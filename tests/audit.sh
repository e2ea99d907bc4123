#!/usr/bin/env bash
# The flake's `audit` check, run here: crane's cargoAudit command
#   cargo audit -n -d <advisory-db> --ignore yanked
# with the cargo-audit version of nix/tools.toml, in a copy of the source as
# crane filters it (every Cargo.lock and audit.toml, nothing else), so the
# ignore list .cargo/audit.toml is read exactly as on Hydra. Then it proves the
# ignore list is not stale:
#   - offline: each ignored ID names (in its comment) a crate version that is
#     still in Cargo.lock;
#   - with the database: each ignored ID is still reported when nothing is
#     ignored.
# The advisory database is the flake's `advisory-db` input: a checkout of
# rustsec/advisory-db at the rev in flake.lock, given as HUBBUB_ADVISORY_DB.
# Without it (CI has no network) the audit itself is skipped, and this says so.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

fail=0
ok() { echo "ok: $*"; }
bad() {
  echo "FAIL: $*"
  fail=1
}

config=.cargo/audit.toml
mapfile -t ignored < <(python3 - "$config" <<'EOF'
import re, sys, tomllib
text = open(sys.argv[1]).read()
ids = tomllib.loads(text).get("advisories", {}).get("ignore", [])
for i in ids:
    m = re.search(r'^\s*"%s",\s*#\s*(\S+)\s+(\S+):\s*\S' % re.escape(i), text, re.M)
    print(f"{i} {m.group(1)} {m.group(2)}" if m else f"{i} - -")
EOF
)

# --- offline: every ignore names a crate version still in Cargo.lock ----------
for entry in "${ignored[@]}"; do
  read -r id crate version <<<"$entry"
  if [ "$crate" = - ]; then
    bad "$config: $id has no '# <crate> <version>: <reason>' comment"
  elif ! python3 - "$crate" "$version" <<'EOF'; then
import sys, tomllib
lock = tomllib.load(open("Cargo.lock", "rb"))
sys.exit(0 if any(p["name"] == sys.argv[1] and p["version"] == sys.argv[2] for p in lock["package"]) else 1)
EOF
    bad "$config: $id is for $crate $version, which is no longer in Cargo.lock: remove the stale ignore"
  fi
done
[ "$fail" -eq 0 ] && ok "$config: ${#ignored[@]} ignored advisories, each for a crate version still in Cargo.lock"

# --- the audit itself -----------------------------------------------------------
db=${HUBBUB_ADVISORY_DB:-}
if [ -z "$db" ]; then
  echo "SKIPPED: cargo audit: HUBBUB_ADVISORY_DB is not set. Point it at a checkout of"
  echo "  rustsec/advisory-db at rev $(python3 -c 'import json; print(json.load(open("flake.lock"))["nodes"]["advisory-db"]["locked"]["rev"])')"
  echo "  (flake.lock) to run the flake's audit check here."
  exit $fail
fi
if [ ! -d "$db/crates" ]; then
  bad "HUBBUB_ADVISORY_DB=$db is not an advisory database (no crates/ directory)"
  exit 1
fi
want=$(python3 -c 'import tomllib; print(tomllib.load(open("nix/tools.toml", "rb"))["cargo-audit"]["version"])')
have=$(cargo audit --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have" != "$want" ]; then
  bad "cargo-audit ${have:-is not installed}, the flake runs $want (nix/tools.toml): cargo install --locked cargo-audit@$want"
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# crane: lib.cleanSourceWith keeping directories, *Cargo.lock and *audit.toml.
mkdir -p "$work/src" "$work/bare"
git ls-files --cached --others --exclude-standard | grep -E '(Cargo\.lock|audit\.toml)$' |
  while read -r f; do
    mkdir -p "$work/src/$(dirname "$f")"
    cp "$f" "$work/src/$f"
  done
cp Cargo.lock "$work/bare/Cargo.lock"

echo "--- cargo audit -n -d $db --ignore yanked (cargo-audit $have)"
if (cd "$work/src" && cargo audit -n -d "$db" --ignore yanked); then
  ok "cargo audit: no vulnerability outside $config"
else
  bad "cargo audit found vulnerabilities (the flake's audit check fails the same way)"
fi

# --- with the database: no ignore is stale --------------------------------------
(cd "$work/bare" && cargo audit -n -d "$db" --ignore yanked --json >"$work/report.json" 2>/dev/null) || true
for entry in "${ignored[@]}"; do
  read -r id _ <<<"$entry"
  if ! python3 - "$work/report.json" "$id" <<'EOF'; then
import json, sys
report = json.load(open(sys.argv[1]))
found = {v["advisory"]["id"] for v in report["vulnerabilities"]["list"]}
for kind in report.get("warnings", {}).values():
    found |= {w["advisory"]["id"] for w in kind if w.get("advisory")}
sys.exit(0 if sys.argv[2] in found else 1)
EOF
    bad "$config: $id matches nothing in Cargo.lock any more: remove the stale ignore"
  fi
done
[ "$fail" -eq 0 ] && ok "$config: every ignored advisory still applies (none stale)"
exit $fail
