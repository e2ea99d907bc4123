# PostgreSQL for hubbub: the `hubbub` database and role, peer authentication
# on the unix socket for roles on this host (the hubbub units run as the
# dynamic user `hubbub`), scram-sha-256 over TCP from the app hosts of the
# private network only (role password from agenix, set by postgresql-setup),
# a daily zstd dump with a `hubbub-db-restore` command, and the Prometheus
# postgres exporter (role `postgres-exporter`, member of pg_monitor).
{
  config,
  lib,
  pkgs,
  ...
}: let
  view = config.hubbub.deployment.view;
  ports = view.inventory.ports;
  cfg = config.hubbub.database;
  remoteApps = view.remoteAppHosts;
  backupDir = config.services.postgresqlBackup.location;
  # Each role process may hold a pool of database.max_connections (16 by default);
  # the exporter, the backup and an operator's psql need a few more.
  # An elastic host (the AWS app group) counts once per instance it may have.
  roleProcesses = builtins.foldl' (n: host: n + builtins.length (host.roles or []) * (host.elastic.maxInstances or 1)) 0 (builtins.attrValues view.inventory.hosts);
  maxConnections = lib.max 100 (16 * roleProcesses + 20);

  restore = pkgs.writeShellApplication {
    name = "hubbub-db-restore";
    runtimeInputs = [
      config.services.postgresql.package
      pkgs.coreutils
      pkgs.gnugrep
      pkgs.gnused
      pkgs.gzip
      pkgs.util-linux
      pkgs.zstd
    ];
    text =
      ''
        export HUBBUB_BACKUP_DIR="''${HUBBUB_BACKUP_DIR:-${backupDir}}"
      ''
      + builtins.readFile ../modules/hubbub-db-restore.sh;
  };
in {
  imports = [
    ../modules/deployment.nix
    ./secrets.nix
  ];

  options.hubbub.database = {
    enable =
      lib.mkEnableOption "PostgreSQL for hubbub on this host"
      // {
        default = view.runs "database";
        defaultText = lib.literalExpression ''the inventory lists "database" for this host'';
      };
    backupSchedule = lib.mkOption {
      type = lib.types.str;
      default = "*-*-* 01:15:00";
      description = "When the daily dump runs (systemd calendar expression).";
    };
  };

  config = lib.mkIf cfg.enable {
    services.postgresql = {
      enable = true;
      ensureDatabases = ["hubbub"];
      ensureUsers = [
        {
          name = "hubbub";
          ensureDBOwnership = true;
        }
        {name = "postgres-exporter";}
      ];
      # Loopback always; the private address only when app hosts connect remotely.
      settings = {
        listen_addresses = lib.mkForce (lib.concatStringsSep "," (["localhost"] ++ lib.optional (remoteApps != []) view.address));
        port = ports.postgres;
        password_encryption = "scram-sha-256";
        max_connections = lib.mkDefault maxConnections;
      };
      # The whole pg_hba.conf (mkForce drops the module's md5-on-loopback defaults).
      authentication = lib.mkForce (''
          # TYPE  DATABASE  USER               ADDRESS  METHOD
          local   all       postgres                    peer map=postgres
          local   hubbub    hubbub                      peer
          local   postgres  postgres-exporter           peer
        ''
        + lib.concatMapStrings (source: ''
          host    hubbub    hubbub             ${source}  scram-sha-256
        '')
        (lib.concatMap view.sourcesOf remoteApps));
    };

    # Binding the private address needs it configured first.
    systemd.services.postgresql = lib.mkIf (remoteApps != []) {
      wants = ["network-online.target"];
      after = ["network-online.target"];
    };

    # postgresql-setup (User=postgres, oneshot) runs the ensure* statements;
    # append ours. The role password comes in as a systemd credential, is read by
    # psql itself (\set with backquotes) and never appears on a command line.
    systemd.services.postgresql-setup = {
      serviceConfig.LoadCredential = lib.mkIf (remoteApps != []) ["db-hubbub-password:${config.age.secrets.db-hubbub-password.path}"];
      script = lib.mkAfter (''
          psql -tAc 'GRANT pg_monitor TO "postgres-exporter"'
        ''
        + lib.optionalString (remoteApps != []) ''
          psql -X -v ON_ERROR_STOP=1 -d postgres <<'EOF'
          \set password `cat "$CREDENTIALS_DIRECTORY/db-hubbub-password"`
          ALTER ROLE hubbub WITH LOGIN PASSWORD :'password';
          EOF
        '');
    };

    services.postgresqlBackup = {
      enable = true;
      databases = ["hubbub"];
      compression = "zstd";
      compressionLevel = 9;
      startAt = cfg.backupSchedule;
    };

    environment.systemPackages = [restore];

    services.prometheus.exporters.postgres = {
      enable = true;
      listenAddress = view.address;
      port = ports.postgresExporter;
      # Peer authentication as the exporter's own (static) user.
      dataSourceName = "user=postgres-exporter database=postgres host=/run/postgresql sslmode=disable";
    };
    systemd.services.prometheus-postgres-exporter = {
      after = ["postgresql.target"];
      wants = ["postgresql.target"];
    };
  };
}
