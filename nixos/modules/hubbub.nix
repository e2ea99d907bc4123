# services.hubbub: one systemd unit per role (`hubbub-<role>.service`) plus a
# `hubbub-migrate.service` oneshot that every role requires and follows.
#
# Boot in any order: migrate (and serve) wait for the database up to
# database.startup_wait_secs; past that migrate exits 75 and systemd starts it
# again while the roles' start jobs wait, so the roles start exactly when the
# migrations have run, however late the database host comes up. That waiting
# needs RestartMode=direct: by default an auto-restarting unit passes through
# the failed state, which fails the start jobs of every unit that Requires= it
# (result 'dependency'), and nothing starts those roles again.
#
# Secrets never enter the Nix store: `credentials` maps a credential name to a
# path outside the store (for example an agenix secret under /run/agenix),
# systemd passes it with LoadCredential=, and every `*_file` setting names the
# credential (a relative path, which hubbub resolves against
# $CREDENTIALS_DIRECTORY).
#
# PostgreSQL on the same host: the units run with DynamicUser=yes and
# User=hubbub. nss-systemd resolves the transient UID to the name `hubbub`, so
# a client connecting over /run/postgresql is authenticated by `peer` as the
# database role `hubbub` (see nixos/profiles/database.nix), without a password.
{
  config,
  lib,
  pkgs,
  ...
}: let
  inherit (lib) mkOption mkEnableOption mkIf types;

  cfg = config.services.hubbub;
  format = pkgs.formats.toml {};
  hardening = import ./hardening.nix;
  limits = import ./limits.nix;

  knownRoles = {
    visitors = {
      listen = 8081;
      admin = 9464;
    };
    chat = {
      listen = 8082;
      admin = 9465;
    };
    broadcast = {
      listen = 8083;
      admin = 9466;
    };
    buffs = {
      listen = 8084;
      admin = 9467;
    };
  };

  enabledRoles = lib.filterAttrs (_: role: role.enable) cfg.roles;
  unknownRoles = lib.filter (name: !(knownRoles ? ${name})) (lib.attrNames cfg.roles);

  # TOML has no null: drop unset optional keys before rendering.
  dropNulls = value:
    if builtins.isAttrs value
    then lib.mapAttrs (_: dropNulls) (lib.filterAttrs (_: v: v != null) value)
    else if builtins.isList value
    then map dropNulls value
    else value;

  placeholderSecret = "hubbub-build-time-placeholder-0123456789abcdef0123456789abcdef";

  # Like the atticd module: validate the rendered file with the binary at
  # build time, with placeholder credentials, so unknown keys fail the build.
  mkConfigFile = name: settings: let
    file = format.generate "hubbub-${name}.toml" (dropNulls settings);
  in
    if !cfg.checkConfig
    then file
    else
      pkgs.runCommand "hubbub-${name}-checked.toml" {
        nativeBuildInputs = [cfg.package];
        preferLocalBuild = true;
      } ''
        mkdir -p creds state
        ${lib.concatMapStrings (credential: ''
          printf '%s\n' ${placeholderSecret} > creds/${lib.escapeShellArg credential}
        '') (lib.attrNames allCredentials)}
        CREDENTIALS_DIRECTORY="$PWD/creds" STATE_DIRECTORY="$PWD/state" \
          hubbub --config ${file} check-config > /dev/null
        ln -s ${file} $out
      '';

  roleSettings = name: lib.recursiveUpdate cfg.settings cfg.roles.${name}.settings;
  migrateConfigFile = mkConfigFile "migrate" cfg.settings;
  roleConfigFile = name: mkConfigFile name (roleSettings name);

  exe = lib.getExe' cfg.package "hubbub";

  databaseUrl = cfg.settings.database.url;
  localDatabase =
    config.services.postgresql.enable
    && databaseUrl != null
    && lib.hasPrefix "postgres" databaseUrl
    && lib.any (marker: lib.hasInfix marker databaseUrl) [
      "/run/postgresql"
      "localhost"
      "127.0.0.1"
      "[::1]"
    ];

  # Every `*_file` setting (global and per role) whose value is relative names
  # a credential; collect them as { path = "mqtt.password_file"; value; }.
  fileReferences = prefix: attrs:
    lib.concatLists (lib.mapAttrsToList (key: value:
      if builtins.isAttrs value
      then fileReferences "${prefix}${key}." value
      else if lib.hasSuffix "_file" key && builtins.isString value
      then [
        {
          path = "${prefix}${key}";
          inherit value;
        }
      ]
      else [])
    attrs);
  globalFileReferences = fileReferences "services.hubbub.settings." (dropNulls cfg.settings);
  roleFileReferences = name: role: fileReferences "services.hubbub.roles.${name}.settings." (dropNulls role.settings);
  allFileReferences = globalFileReferences ++ lib.concatLists (lib.mapAttrsToList roleFileReferences cfg.roles);
  # Relative `*_file` values must name a credential the unit receives.
  dangling = credentials: lib.filter (ref: !(lib.hasPrefix "/" ref.value) && !(credentials ? ${ref.value}));
  danglingReferences =
    dangling cfg.credentials globalFileReferences
    ++ lib.concatLists (lib.mapAttrsToList
      (name: role: dangling (cfg.credentials // role.credentials) (roleFileReferences name role))
      cfg.roles);

  allCredentials =
    cfg.credentials
    // lib.foldl' (acc: role: acc // role.credentials) {} (lib.attrValues cfg.roles);
  storeCredentials = lib.filterAttrs (_: path: lib.hasPrefix builtins.storeDir path) allCredentials;
  relativeCredentials = lib.filterAttrs (_: path: !(lib.hasPrefix "/" path)) allCredentials;
  storeFileSettings = lib.filter (ref: lib.hasPrefix builtins.storeDir ref.value && !(lib.hasSuffix "ca_file" ref.path)) allFileReferences;

  listenPort = address: lib.toInt (lib.last (lib.splitString ":" address));
  listenAddresses = lib.concatLists (lib.mapAttrsToList (_: role: [role.listen role.adminListen]) enabledRoles);

  unitDependencies = {
    wants = ["network-online.target"];
    after = ["network-online.target"] ++ lib.optional localDatabase "postgresql.target";
    requires = lib.optional localDatabase "postgresql.target";
  };

  loadCredentials = credentials: lib.mapAttrsToList (name: path: "${name}:${path}") credentials;

  sharedServiceConfig =
    hardening
    // lib.optionalAttrs (cfg.ipAddressAllow != null) {
      IPAddressDeny = "any";
      IPAddressAllow = cfg.ipAddressAllow;
    };

  stopTimeout = (cfg.settings.shutdown_timeout_secs or 10) + 5;
  # `serve` waits up to database.startup_wait_secs for the database before it
  # tells systemd it is ready: the start timeout must not cut that short.
  startTimeout = cfg.settings.database.startup_wait_secs + 60;

  roleUnit = name: role: {
    name = "hubbub-${name}";
    value = {
      description = "hubbub ${name} role";
      wantedBy = ["multi-user.target"];
      wants = unitDependencies.wants;
      requires = ["hubbub-migrate.service"] ++ unitDependencies.requires;
      after = ["hubbub-migrate.service"] ++ unitDependencies.after;
      environment = {
        HUBBUB_HTTP__LISTEN = role.listen;
        HUBBUB_ADMIN__LISTEN = role.adminListen;
        HUBBUB_DATABASE__MIGRATE_ON_START = "false";
      };
      serviceConfig =
        sharedServiceConfig
        // limits.serviceConfig cfg.openFilesLimit
        // {
          Type = "notify";
          NotifyAccess = "main";
          LoadCredential = loadCredentials (cfg.credentials // role.credentials);
          ExecStart = "${exe} --config ${roleConfigFile name} serve ${name}";
          Restart = "on-failure";
          RestartSec = "2s";
          TimeoutStartSec = "${toString startTimeout}s";
          TimeoutStopSec = "${toString stopTimeout}s";
        };
    };
  };

  roleModule = {name, ...}: {
    options = {
      enable =
        mkEnableOption "the hubbub ${name} role on this host"
        // {
          default = true;
        };
      listen = mkOption {
        type = types.str;
        default = "127.0.0.1:${toString (knownRoles.${name}.listen or 8080)}";
        example = "10.42.0.11:8081";
        description = "Public listener (`http.listen`) of this role, passed as HUBBUB_HTTP__LISTEN.";
      };
      adminListen = mkOption {
        type = types.str;
        default = "127.0.0.1:${toString (knownRoles.${name}.admin or 9464)}";
        example = "10.42.0.11:9464";
        description = "Admin listener (`admin.listen`, serves /metrics), passed as HUBBUB_ADMIN__LISTEN.";
      };
      credentials = mkOption {
        type = types.attrsOf types.str;
        default = {};
        example = {
          mqtt-chat = "/run/agenix/mqtt-chat";
        };
        description = ''
          Credentials for this role's unit only (least privilege: e.g. its own
          broker password), added to {option}`services.hubbub.credentials`.
        '';
      };
      settings = mkOption {
        inherit (format) type;
        default = {};
        example = {
          mqtt = {
            username = "chat";
            password_file = "mqtt-chat";
          };
        };
        description = ''
          Settings for this role only, merged over
          {option}`services.hubbub.settings` (for example its own broker user).
        '';
      };
    };
  };

  nullOrStr = description:
    mkOption {
      type = types.nullOr types.str;
      default = null;
      inherit description;
    };
in {
  options.services.hubbub = {
    enable = mkEnableOption "hubbub, the visitor counter, chat and buffs service";

    package = lib.mkPackageOption pkgs "hubbub" {};

    settings = mkOption {
      default = {};
      description = ''
        hubbub configuration, rendered to TOML with `pkgs.formats.toml`
        (see `hubbub check-config`). Unknown keys are errors. Listen addresses
        are set per role in {option}`services.hubbub.roles`. Secrets are never
        written here: every `*_file` key names an entry of
        {option}`services.hubbub.credentials`.
      '';
      type = types.submodule {
        freeformType = format.type;
        options = {
          database = {
            url = nullOrStr ''
              Database URL, e.g. `postgresql:///hubbub?host=/run/postgresql&user=hubbub`
              (local socket, peer authentication) or `postgres://hubbub@10.42.0.20:5432/hubbub`
              (remote, with `database.password_file`).
            '';
            password_file = nullOrStr "Credential name holding the database password (remote PostgreSQL only).";
            startup_wait_secs = mkOption {
              type = types.ints.unsigned;
              default = 300;
              description = ''
                How long `hubbub migrate` and `hubbub serve` wait at start for
                the database to accept a connection (retrying with backoff)
                before they exit with status 75; hubbub-migrate.service is then
                started again, so a cluster converges whichever host boots first.
              '';
            };
            migrate_on_start = mkOption {
              type = types.bool;
              default = false;
              description = ''
                Must stay false: migrations run in `hubbub-migrate.service`,
                which every role requires and follows.
              '';
            };
          };
          redis = {
            url = nullOrStr "Redis URL, e.g. `redis://127.0.0.1:6379`.";
            password_file = nullOrStr "Credential name holding the Redis password.";
          };
          mqtt = {
            url = nullOrStr "Broker URL, `mqtt://127.0.0.1:1883` or `mqtts://10.42.0.20:8883`.";
            username = nullOrStr "Broker user; usually set per role.";
            password_file = nullOrStr "Credential name holding the broker password; usually set per role.";
            ca_file = nullOrStr "CA certificate for `mqtts://` (public, may be a store path).";
          };
          visitors.salt_file = nullOrStr "Credential name holding the visitor-hash salt.";
          buffs.admin_token_file = nullOrStr "Credential name holding the buffs admin tokens (one per line).";
          http.trusted_proxies = mkOption {
            type = types.listOf types.str;
            default = [];
            example = ["10.42.0.10/32"];
            description = "Proxies whose X-Forwarded-For is trusted (CIDR list).";
          };
        };
      };
    };

    roles = mkOption {
      type = types.attrsOf (types.submodule roleModule);
      default = {};
      example = {
        visitors = {};
        chat.listen = "10.42.0.11:8082";
      };
      description = ''
        The roles (`visitors`, `chat`, `broadcast`, `buffs`) that run on this
        host, each as `hubbub-<role>.service`.
      '';
    };

    credentials = mkOption {
      type = types.attrsOf types.str;
      default = {};
      example = {
        redis-password = "/run/agenix/redis-password";
      };
      description = ''
        Credential name → absolute path of a file outside the Nix store,
        passed to every hubbub unit with systemd's `LoadCredential=`. The
        files may stay root-only (systemd reads them). Nix path literals are
        rejected on purpose: they would copy the secret into the store.
      '';
    };

    checkConfig = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Validate each rendered configuration with `hubbub check-config` at
        build time (credentials replaced by placeholders).
      '';
    };

    ipAddressAllow = mkOption {
      type = types.nullOr (types.listOf types.str);
      default = null;
      example = ["localhost" "10.42.0.0/24"];
      description = ''
        When set, the units get `IPAddressDeny=any` plus this
        `IPAddressAllow=` list: hubbub then only talks to (and accepts
        connections from) these networks.
      '';
    };

    openFilesLimit = mkOption {
      type = types.ints.positive;
      default = limits.openFiles;
      example = 262144;
      description = ''
        `LimitNOFILE=` of every role unit (soft and hard limit of open files).
        A broadcast instance needs one per SSE client plus a few hundred; the
        systemd default of 1,024 caps it at about a thousand clients.
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the public and admin ports of the enabled roles in the firewall (all interfaces).";
    };
  };

  config = mkIf cfg.enable {
    assertions =
      [
        {
          assertion = unknownRoles == [];
          message = ''
            services.hubbub.roles: unknown role(s) ${lib.concatStringsSep ", " unknownRoles}.
            Valid roles: ${lib.concatStringsSep ", " (lib.attrNames knownRoles)}.
          '';
        }
        {
          assertion = enabledRoles == {} || databaseUrl != null;
          message = ''
            services.hubbub.settings.database.url is not set, but roles run on this host.
            Either import nixosModules.database on this host (local PostgreSQL, peer
            authentication; it sets the URL), or point it at the database host, e.g.
              services.hubbub.settings.database.url = "postgres://hubbub@10.42.0.20:5432/hubbub";
              services.hubbub.settings.database.password_file = "db-password";
              services.hubbub.credentials.db-password = config.age.secrets.db-hubbub-password.path;
          '';
        }
        {
          assertion = storeCredentials == {};
          message = ''
            services.hubbub.credentials: ${lib.concatStringsSep ", " (lib.attrNames storeCredentials)}
            point into the world-readable Nix store. Keep secrets outside it, e.g. with agenix:
              age.secrets.<name>.file = ../secrets/<name>.age;
              services.hubbub.credentials.<name> = config.age.secrets.<name>.path;
          '';
        }
        {
          assertion = relativeCredentials == {};
          message = ''
            services.hubbub.credentials: ${lib.concatStringsSep ", " (lib.attrNames relativeCredentials)}
            must be absolute paths (e.g. /run/agenix/<name>).
          '';
        }
        {
          assertion = danglingReferences == [];
          message = ''
            These settings name credentials that services.hubbub.credentials does not define:
            ${lib.concatMapStringsSep "\n" (ref: "  ${ref.path} = \"${ref.value}\"") danglingReferences}
            Add services.hubbub.credentials.<name> = "/run/agenix/<name>"; for each.
          '';
        }
        {
          assertion = storeFileSettings == [];
          message = ''
            These settings point into the Nix store, which is world-readable:
            ${lib.concatMapStringsSep "\n" (ref: "  ${ref.path} = \"${ref.value}\"") storeFileSettings}
            Name a credential instead (services.hubbub.credentials).
          '';
        }
        {
          assertion = !cfg.settings.database.migrate_on_start;
          message = ''
            services.hubbub.settings.database.migrate_on_start must be false:
            migrations run once in hubbub-migrate.service before the roles start.
          '';
        }
        {
          assertion = lib.length listenAddresses == lib.length (lib.unique listenAddresses);
          message = ''
            services.hubbub.roles: two listeners share an address
            (${lib.concatStringsSep " " listenAddresses}); give each role its own ports.
          '';
        }
      ]
      ++ lib.mapAttrsToList (name: role: {
        assertion = !(role.settings ? http && role.settings.http ? listen) && !(role.settings ? admin && role.settings.admin ? listen);
        message = "services.hubbub.roles.${name}: set `listen`/`adminListen`, not settings.http.listen or settings.admin.listen.";
      })
      cfg.roles;

    warnings =
      lib.optional (enabledRoles != {} && cfg.settings.redis.url == null)
      "services.hubbub: settings.redis.url is not set; hubbub runs without its shared cache."
      ++ lib.optional (lib.any (name: enabledRoles ? ${name}) ["chat" "broadcast" "buffs"] && cfg.settings.mqtt.url == null)
      "services.hubbub: the chat/broadcast/buffs roles run but settings.mqtt.url is not set.";

    systemd.services =
      {
        hubbub-migrate = {
          description = "hubbub database migrations";
          wantedBy = ["multi-user.target"];
          inherit (unitDependencies) wants after requires;
          serviceConfig =
            sharedServiceConfig
            // {
              Type = "oneshot";
              RemainAfterExit = true;
              # Its "waiting for the database" status shows in systemctl status.
              NotifyAccess = "main";
              LoadCredential = loadCredentials cfg.credentials;
              ExecStart = "${exe} --config ${migrateConfigFile} migrate";
              # Exit 75: the database did not answer within startup_wait_secs.
              # Start again; a configuration error (2) or a failed migration
              # (1) is final.
              Restart = "on-failure";
              RestartSec = "10s";
              RestartPreventExitStatus = [1 2];
              # Restart without passing through `failed` (systemd >= 254): the
              # roles' start jobs keep waiting for this one instead of failing
              # with 'dependency' at its first exit 75 and never coming back.
              RestartMode = "direct";
            };
        };
      }
      // lib.mapAttrs' roleUnit enabledRoles;

    networking.firewall.allowedTCPPorts = mkIf cfg.openFirewall (map listenPort listenAddresses);
  };
}
