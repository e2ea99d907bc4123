#!/usr/bin/env bash
# Checks of the NixOS modules, profiles, hosts, tests and secrets that run
# without nixpkgs:
#   - every Nix file under nixos/modules, nixos/profiles, nixos/hosts,
#     nixos/tests and secrets/ parses;
#   - the hubbub units' sandboxing (nixos/modules/hardening.nix, the attrset the
#     module uses) rendered into unit files scores an exposure <= 1.5 with
#     `systemd-analyze security --offline=yes`; role units carry the
#     LimitNOFILE of nixos/modules/limits.nix;
#   - no secret can reach the Nix store (scan of nixos/), and the scanner
#     itself catches planted violations;
#   - secrets/: every agenix rule has an armored .age file and vice versa, and
#     each example key decrypts exactly the files its rules allow; the public
#     certificates chain to the internal CA; no private key lies around in
#     plain text outside nixos/tests/keys/;
#   - hubbub-db-restore restores a real pg_dump -C dump (zstd and gzip) into a
#     scratch database of a throwaway PostgreSQL, and refuses what it should.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export NIX_CONFIG="build-users-group ="

fail=0
ok() { echo "ok: $*"; }
bad() {
  echo "FAIL: $*"
  fail=1
}
need() { command -v "$1" >/dev/null || {
  bad "$1 is not installed (tests/run installs it)"
  exit 1
}; }
need nix-instantiate
need systemd-analyze
need age
need openssl
need jq

work=$(mktemp -d)
pg_data=""
cleanup() {
  if [ -n "$pg_data" ] && [ -e "$pg_data/postmaster.pid" ]; then
    pg_run "$pg_bin/pg_ctl" -D "$pg_data" -m immediate stop >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# --- 1. parse -----------------------------------------------------------------
mapfile -t nix_files < <(find nixos/modules nixos/profiles nixos/hosts nixos/tests secrets -name '*.nix' 2>/dev/null | sort)
parse_failures=0
for f in "${nix_files[@]}"; do
  if ! err=$(nix-instantiate --parse "$f" 2>&1 >/dev/null); then
    bad "$f does not parse: $err"
    parse_failures=$((parse_failures + 1))
  fi
done
[ "$parse_failures" -eq 0 ] && ok "${#nix_files[@]} module/profile/host/test/secret Nix files parse"

# --- 2. hardening ---------------------------------------------------------------
if grep -q 'import ./hardening.nix' nixos/modules/hubbub.nix; then
  ok "services.hubbub takes its sandboxing from nixos/modules/hardening.nix"
else
  bad "nixos/modules/hubbub.nix does not import ./hardening.nix: the scored attrset would not be the deployed one"
fi

# render NAME EXTRA_NIX_ATTRS: a unit file from hardening.nix // extra, with the
# NixOS rendering rules (bool -> yes/no, list -> one line per element).
render() {
  nix-instantiate --eval --strict --json -E "
    let
      service = import ./nixos/modules/hardening.nix // $2;
      value = v: if v == true then \"yes\" else if v == false then \"no\" else toString v;
      line = name: v: if builtins.isList v then map (x: \"\${name}=\${value x}\") v else [ \"\${name}=\${value v}\" ];
      lines = builtins.concatLists (map (n: line n service.\${n}) (builtins.attrNames service));
    in builtins.concatStringsSep \"\\n\" ([ \"[Unit]\" \"Description=hubbub $1\" \"[Service]\" ] ++ lines) + \"\\n\"
  " | jq -r . >"$work/$1.service"
}
score() {
  local unit=$1 out level
  if out=$(systemd-analyze security --offline=yes --threshold=15 "$work/$unit.service" 2>&1); then
    level=$(printf '%s\n' "$out" | grep -o 'Overall exposure level for [^:]*: [0-9.]*' | awk '{print $NF}')
    ok "systemd-analyze security: $unit exposure ${level:-?} <= 1.5"
  else
    level=$(printf '%s\n' "$out" | grep -o 'Overall exposure level for [^:]*: [0-9.]*' | awk '{print $NF}')
    bad "systemd-analyze security: $unit exposure ${level:-?} > 1.5 (or the unit is invalid)"
    printf '%s\n' "$out" | grep -E '✗|Overall' | head -40
  fi
}
render hubbub-visitors '{ Type = "notify"; NotifyAccess = "main"; ExecStart = "/run/current-system/sw/bin/hubbub --config /etc/hubbub.toml serve visitors"; Restart = "on-failure"; LoadCredential = [ "redis-password:/run/agenix/redis-password" ]; }'
render hubbub-migrate '{ Type = "oneshot"; RemainAfterExit = true; ExecStart = "/run/current-system/sw/bin/hubbub --config /etc/hubbub.toml migrate"; }'
render hubbub-chat-ipfilter '{ Type = "notify"; ExecStart = "/run/current-system/sw/bin/hubbub serve chat"; IPAddressDeny = "any"; IPAddressAllow = [ "localhost" "10.42.0.0/24" ]; }'
# A role unit as the module builds it: hardening, then the limits (limits.nix).
render hubbub-broadcast '(import ./nixos/modules/limits.nix).serviceConfig (import ./nixos/modules/limits.nix).openFiles // { Type = "notify"; NotifyAccess = "main"; ExecStart = "/run/current-system/sw/bin/hubbub --config /etc/hubbub.toml serve broadcast"; Restart = "on-failure"; }'
for unit in hubbub-visitors hubbub-migrate hubbub-chat-ipfilter hubbub-broadcast; do score "$unit"; done

# 10,000+ SSE clients per broadcast instance: the role units carry LimitNOFILE
# (soft = hard = 65536 by default, an option of services.hubbub).
if grep -qx 'LimitNOFILE=65536' "$work/hubbub-broadcast.service"; then
  ok "role units get LimitNOFILE=65536 (nixos/modules/limits.nix)"
else
  bad "the rendered role unit has no LimitNOFILE=65536"
fi
if grep -q 'limits.serviceConfig cfg.openFilesLimit' nixos/modules/hubbub.nix &&
  grep -q 'default = limits.openFiles;' nixos/modules/hubbub.nix; then
  ok "services.hubbub.openFilesLimit (default from limits.nix) sets every role unit's LimitNOFILE"
else
  bad "nixos/modules/hubbub.nix does not take LimitNOFILE from limits.nix and services.hubbub.openFilesLimit"
fi

# The threshold really bites: a unit without sandboxing must fail it.
printf '[Unit]\nDescription=unsandboxed\n[Service]\nExecStart=/bin/true\n' >"$work/naked.service"
if systemd-analyze security --offline=yes --threshold=15 "$work/naked.service" >/dev/null 2>&1; then
  bad "systemd-analyze --threshold=15 accepted an unsandboxed unit: the hardening check proves nothing"
else
  ok "systemd-analyze --threshold=15 rejects an unsandboxed unit"
fi

# --- 3. secrets never reach the store ------------------------------------------
# scan DIR: prints offending lines, non-zero when there is any.
scan() {
  local dir=$1 hits=""
  local -a rules=(
    # pattern @@ applies outside nixos/tests only (1) or everywhere (0) @@ what
    'builtins\.readFile[^;]*(secrets|\.age|/run/agenix|credentials)@@0@@builtins.readFile of a secret'
    'readFile[[:space:]]+[^;]*\.age@@0@@readFile of an age file'
    '\brequirePass[[:space:]]*=@@0@@services.redis requirePass (use requirePassFile)'
    '(^|[[:space:]{;.])password[[:space:]]*=[[:space:]]*"@@1@@literal password = "..." (mosquitto: use passwordFile)'
    '(^|[[:space:]{;.])hashedPassword[[:space:]]*=[[:space:]]*"@@1@@literal hashedPassword'
    '\binitial(Hashed)?Password[[:space:]]*=@@0@@initialPassword/initialHashedPassword'
    '(^|[[:space:]{;.])(admin_password|secret_key)[[:space:]]*=[[:space:]]*"[^$]@@1@@literal Grafana secret (use $__file{...})'
    '\bmasterAuth[[:space:]]*=[[:space:]]*"@@0@@services.redis masterAuth literal'
  )
  local rule pattern outside what found
  for rule in "${rules[@]}"; do
    pattern=${rule%%@@*}
    rule=${rule#*@@}
    outside=${rule%%@@*}
    what=${rule#*@@}
    found=$(grep -rnE --include='*.nix' -- "$pattern" "$dir" 2>/dev/null || true)
    if [ "$outside" = 1 ]; then
      found=$(printf '%s' "$found" | grep -v "^$dir/tests/" || true)
    fi
    if [ -n "$found" ]; then
      hits+="$what:"$'\n'"$found"$'\n'
    fi
  done
  if [ -n "$hits" ]; then
    printf '%s' "$hits"
    return 1
  fi
}

if out=$(scan nixos); then
  ok "secret scan: nothing under nixos/ can put a secret into the store"
else
  bad "secret scan found secrets that would reach the Nix store:"
  printf '%s\n' "$out"
fi

# The scanner must catch each kind of violation (planted in a copy of nixos/).
planted=(
  'x = builtins.readFile ../../secrets/redis-password.age;'
  'services.redis.servers.hubbub.requirePass = "hunter2";'
  'services.mosquitto.listeners = [ { users.chat.password = "hunter2"; } ];'
  'users.users.ops.hashedPassword = "$6$abc$def";'
  'users.users.ops.initialPassword = "changeme";'
  'services.grafana.settings.security.admin_password = "hunter2";'
)
caught=0
for line in "${planted[@]}"; do
  rm -rf "$work/plant"
  cp -r nixos "$work/plant"
  printf '{\n  %s\n}\n' "$line" >"$work/plant/profiles/planted.nix"
  if (cd "$work" && scan plant >/dev/null); then
    bad "secret scan missed a planted violation: $line"
  else
    caught=$((caught + 1))
  fi
done
[ "$caught" -eq ${#planted[@]} ] && ok "secret scan catches all ${#planted[@]} planted violations"
# ... and tests may keep a literal hashedPassword for a throwaway VM user.
rm -rf "$work/plant" && cp -r nixos "$work/plant"
printf '{\n  users.users.alice.hashedPassword = "$6$x$y";\n}\n' >"$work/plant/tests/planted.nix"
if (cd "$work" && scan plant >/dev/null); then
  ok "secret scan allows literal hashedPassword inside nixos/tests"
else
  bad "secret scan rejects a hashedPassword inside nixos/tests"
fi

# --- 4. secrets/ consistency ------------------------------------------------------
mapfile -t rules < <(nix-instantiate --eval --strict --json -E 'builtins.attrNames (import ./secrets/secrets.nix)' | jq -r '.[]')
mapfile -t age_files < <(cd secrets && ls -- *.age 2>/dev/null)
if [ "$(printf '%s\n' "${rules[@]}" | sort)" = "$(printf '%s\n' "${age_files[@]}" | sort)" ]; then
  ok "secrets: ${#rules[@]} rules in secrets/secrets.nix, each with its .age file and no stray file"
else
  bad "secrets: rules and .age files differ: $(diff <(printf '%s\n' "${rules[@]}" | sort) <(printf '%s\n' "${age_files[@]}" | sort) | grep '^[<>]' | tr '\n' ' ')"
fi
not_armored=$(for f in "${age_files[@]}"; do head -1 "secrets/$f" | grep -q '^-----BEGIN AGE ENCRYPTED FILE-----$' || echo "$f"; done)
if [ -z "$not_armored" ]; then ok "secrets: every .age file is age-encrypted (armored)"; else bad "secrets: not age files: $not_armored"; fi

# Each example key decrypts exactly what its rules allow.
key_mismatch=""
for keyfile in nixos/tests/keys/INSECURE-*_ed25519; do
  pub=$(cut -d' ' -f1,2 "$keyfile.pub")
  for f in "${age_files[@]}"; do
    expected=$(nix-instantiate --eval --strict --json -E "builtins.elem \"$pub\" (import ./secrets/secrets.nix).\"$f\".publicKeys")
    if age -d -i "$keyfile" -o /dev/null "secrets/$f" 2>/dev/null; then actual=true; else actual=false; fi
    [ "$expected" = "$actual" ] || key_mismatch+=" $(basename "$keyfile"):$f(rule=$expected,decrypts=$actual)"
  done
done
if [ -z "$key_mismatch" ]; then
  ok "secrets: each example key decrypts exactly the secrets its rules list"
else
  bad "secrets: recipients differ from secrets.nix (re-encrypt with 'agenix -r'):$key_mismatch"
fi

pki_bad=""
for cert in secrets/pki/*.pem; do
  [ "$cert" = secrets/pki/ca.pem ] && continue
  openssl verify -CAfile secrets/pki/ca.pem "$cert" >/dev/null 2>&1 || pki_bad+=" $cert(untrusted)"
  openssl x509 -in "$cert" -noout -checkend $((30 * 86400)) >/dev/null 2>&1 || pki_bad+=" $cert(expires within 30 days)"
done
if [ -z "$pki_bad" ]; then ok "secrets/pki: certificates chain to the internal CA and stay valid for 30 days"; else bad "secrets/pki:$pki_bad"; fi

stray_keys=$(grep -rlE -- '-----BEGIN ([A-Z]+ )?PRIVATE KEY-----|-----BEGIN OPENSSH PRIVATE KEY-----' nixos secrets docs 2>/dev/null | grep -v '^nixos/tests/keys/INSECURE-' || true)
if [ -z "$stray_keys" ]; then
  ok "no plaintext private key outside nixos/tests/keys/INSECURE-*"
else
  bad "plaintext private keys found: $stray_keys"
fi

# --- 5. hubbub-db-restore against a throwaway PostgreSQL ---------------------------
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$pg_bin" ] || ! command -v zstd >/dev/null; then
  bad "PostgreSQL server binaries or zstd missing: cannot test hubbub-db-restore (tests/run installs them)"
else
  if [ "$(id -u)" = 0 ]; then
    pg_run() { runuser -u postgres -- "$@"; }
    chown postgres "$work"
  else
    pg_run() { "$@"; }
  fi
  pg_data=$work/pg
  mkdir -p "$work/sock" "$work/backup"
  [ "$(id -u)" = 0 ] && chown postgres "$work/sock" "$work/backup"
  export PGHOST=$work/sock PGPORT=55437 PGUSER=postgres
  restore=$work/hubbub-db-restore
  # What writeShellApplication makes of the script (nixos/profiles/database.nix):
  # bash with errexit, nounset, pipefail, then the text, which starts with the
  # HUBBUB_BACKUP_DIR default.
  {
    printf '#!/usr/bin/env bash\nset -o errexit\nset -o nounset\nset -o pipefail\n'
    printf 'export HUBBUB_BACKUP_DIR="${HUBBUB_BACKUP_DIR:-/var/backup/postgresql}"\n'
    cat nixos/modules/hubbub-db-restore.sh
  } >"$restore"
  chmod 755 "$restore"
  # writeShellApplication fails the build on any ShellCheck finding (plain
  # `shellcheck FILE`, every severity). Debian 12's ShellCheck 0.9 is older and
  # stricter than nixpkgs' (SC2015 on `a && b || c`): clean under both.
  if ! command -v shellcheck >/dev/null; then
    bad "shellcheck is not installed (apt-get install shellcheck; tests/run does)"
  elif out=$(shellcheck "$restore" 2>&1); then
    ok "hubbub-db-restore is clean under ShellCheck $(shellcheck --version | sed -n 's/^version: //p'), as writeShellApplication requires"
  else
    bad "ShellCheck findings in nixos/modules/hubbub-db-restore.sh (writeShellApplication would fail the build):"
    printf '%s\n' "$out" | sed 's/^/  /'
  fi
  if pg_run "$pg_bin/initdb" -D "$pg_data" -U postgres -A trust >/dev/null 2>&1 &&
    pg_run "$pg_bin/pg_ctl" -D "$pg_data" -o "-k $work/sock -h '' -p $PGPORT" -l "$work/pg.log" -w start >/dev/null 2>&1; then
    psql_run() { pg_run env PGHOST="$PGHOST" PGPORT="$PGPORT" PGUSER=postgres psql -X -v ON_ERROR_STOP=1 -tA "$@"; }
    psql_run -c 'CREATE USER hubbub' -c 'CREATE DATABASE hubbub OWNER hubbub' >/dev/null
    psql_run -d hubbub -U hubbub \
      -c "CREATE TABLE chat_messages (id bigserial PRIMARY KEY, channel text NOT NULL, body text NOT NULL)" \
      -c "INSERT INTO chat_messages (channel, body) VALUES ('lobby', 'restore me'), ('lobby', 'and me')" >/dev/null
    # The dumps services.postgresqlBackup makes: pg_dump -C, zstd (current) and gzip (an older .prev).
    pg_run env PGHOST="$PGHOST" PGPORT="$PGPORT" PGUSER=postgres bash -c \
      "'$pg_bin/pg_dump' -C hubbub | zstd -q -c -9 --rsyncable > '$work/backup/hubbub.sql.zstd' &&
       '$pg_bin/pg_dump' -C hubbub | gzip -c > '$work/backup/hubbub.prev.sql.gz'"
    run_restore() { env PATH="$pg_bin:$PATH" HUBBUB_BACKUP_DIR="$work/backup" "$restore" "$@"; }

    if run_restore latest hubbub_scratch >"$work/restore.log" 2>&1 &&
      [ "$(psql_run -d hubbub_scratch -c "SELECT string_agg(body, ',' ORDER BY id) FROM chat_messages")" = "restore me,and me" ] &&
      [ "$(psql_run -c "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'hubbub_scratch'")" = hubbub ]; then
      ok "hubbub-db-restore: latest zstd dump restored into a scratch database owned by hubbub, rows intact"
    else
      bad "hubbub-db-restore did not restore the latest dump: $(cat "$work/restore.log")"
    fi
    if ! run_restore latest hubbub_scratch >/dev/null 2>&1; then
      ok "hubbub-db-restore refuses to overwrite an existing database without --replace"
    else
      bad "hubbub-db-restore overwrote an existing database without --replace"
    fi
    if run_restore previous hubbub_scratch --replace >/dev/null 2>&1 &&
      [ "$(psql_run -d hubbub_scratch -c 'SELECT count(*) FROM chat_messages')" = 2 ]; then
      ok "hubbub-db-restore --replace restores the previous (gzip) dump"
    else
      bad "hubbub-db-restore --replace of the previous dump failed"
    fi
    if [ "$(psql_run -d hubbub -c 'SELECT count(*) FROM chat_messages')" = 2 ]; then
      ok "hubbub-db-restore left the live database alone"
    else
      bad "the live database changed during restores"
    fi
    echo garbage | zstd -q >"$work/backup/broken.sql.zstd"
    [ "$(id -u)" = 0 ] && chown postgres "$work/backup/broken.sql.zstd"
    if ! run_restore "$work/backup/broken.sql.zstd" hubbub_broken >/dev/null 2>&1 &&
      [ -z "$(psql_run -c "SELECT 1 FROM pg_database WHERE datname = 'hubbub_broken'")" ]; then
      ok "hubbub-db-restore stops at the first error and drops the incomplete database"
    else
      bad "hubbub-db-restore accepted a broken dump or left a half-restored database"
    fi
    if ! run_restore latest 'bad;name' >/dev/null 2>&1; then
      ok "hubbub-db-restore rejects an unsafe database name"
    else
      bad "hubbub-db-restore accepted the database name 'bad;name'"
    fi
  else
    bad "could not start a throwaway PostgreSQL for the restore test: $(tail -5 "$work/pg.log" 2>/dev/null)"
  fi
fi

exit $fail
