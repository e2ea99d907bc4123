# hubbub-db-restore: restore a dump made by services.postgresqlBackup into a
# database of your choice (a scratch copy to inspect, or a replacement).
#
#   hubbub-db-restore --list
#   hubbub-db-restore DUMP TARGET_DB [--replace]
#
# DUMP is a file (.sql, .sql.gz, .sql.zstd / .sql.zst) or `latest` / `previous`
# for the newest / previous dump of the `hubbub` database in $HUBBUB_BACKUP_DIR.
# The dumps are made with `pg_dump -C` (they would recreate `hubbub` itself);
# this command drops the CREATE/ALTER DATABASE and \connect lines so the data
# lands in TARGET_DB instead, restores in one transaction, and stops at the
# first error. TARGET_DB must not exist unless --replace is given (it is then
# dropped first, disconnecting its clients). Runs as the `postgres` user (it
# switches to it when started as root).
#
# Environment: HUBBUB_BACKUP_DIR (default /var/backup/postgresql),
# HUBBUB_DB_OWNER (default hubbub), PGHOST/PGPORT as usual.

backup_dir=${HUBBUB_BACKUP_DIR:-/var/backup/postgresql}
owner=${HUBBUB_DB_OWNER:-hubbub}

usage() {
  echo "usage: hubbub-db-restore --list" >&2
  echo "       hubbub-db-restore DUMP|latest|previous TARGET_DB [--replace]" >&2
  exit 2
}

if [ "$(id -u)" = 0 ] && [ "${HUBBUB_DB_RESTORE_AS_ROOT:-0}" != 1 ]; then
  exec runuser -u postgres -- "$0" "$@"
fi

if [ "${1:-}" = "--list" ]; then
  ls -l --time-style=long-iso "$backup_dir"
  exit 0
fi

if [ $# -lt 2 ] || [ $# -gt 3 ]; then
  usage
fi
dump=$1
target=$2
replace=0
if [ $# -eq 3 ]; then
  [ "$3" = "--replace" ] || usage
  replace=1
fi

case "$dump" in
  latest | previous)
    suffix=""
    [ "$dump" = previous ] && suffix=".prev"
    found=""
    for ext in .zstd .zst .gz ""; do
      if [ -e "$backup_dir/hubbub$suffix.sql$ext" ]; then
        found="$backup_dir/hubbub$suffix.sql$ext"
        break
      fi
    done
    [ -n "$found" ] || {
      echo "hubbub-db-restore: no $dump dump of hubbub in $backup_dir" >&2
      exit 1
    }
    dump=$found
    ;;
esac
[ -r "$dump" ] || {
  echo "hubbub-db-restore: cannot read $dump" >&2
  exit 1
}

if ! printf '%s' "$target" | grep -Eq '^[a-z_][a-z0-9_]{0,62}$'; then
  echo "hubbub-db-restore: target database name must match ^[a-z_][a-z0-9_]{0,62}\$" >&2
  exit 2
fi

case "$dump" in
  *.zstd | *.zst) decompress=(zstd -dc -- "$dump") ;;
  *.gz) decompress=(gzip -dc -- "$dump") ;;
  *) decompress=(cat -- "$dump") ;;
esac
# Check the archive before touching any database.
case "$dump" in
  *.zstd | *.zst) zstd -tq -- "$dump" ;;
  *.gz) gzip -t -- "$dump" ;;
esac

exists=$(psql -X -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$target'")
if [ "$exists" = 1 ]; then
  if [ "$replace" != 1 ]; then
    echo "hubbub-db-restore: database $target exists; add --replace to drop and recreate it" >&2
    exit 1
  fi
  echo "dropping database $target"
  psql -X -v ON_ERROR_STOP=1 -d postgres -c "DROP DATABASE \"$target\" WITH (FORCE)"
fi

echo "restoring $dump into database $target (owner $owner)"
psql -X -v ON_ERROR_STOP=1 -d postgres -c "CREATE DATABASE \"$target\" OWNER \"$owner\""
if ! "${decompress[@]}" |
  sed -E '/^CREATE DATABASE /d; /^ALTER DATABASE /d; /^COMMENT ON DATABASE /d; /^\\connect /d' |
  psql -X -q -v ON_ERROR_STOP=1 --single-transaction -d "$target" >/dev/null; then
  echo "hubbub-db-restore: restore failed; dropping the incomplete database $target" >&2
  psql -X -d postgres -c "DROP DATABASE \"$target\"" >/dev/null || true
  exit 1
fi

tables=$(psql -X -d "$target" -tAc "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
echo "restored $dump into $target: $tables tables in schema public"
