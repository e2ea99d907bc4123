# Stand-ins for what the host configurations take from nixpkgs and agenix,
# for tests/nix/hosts.sh: our modules, with their real option types and
# assertions, evaluated by nixpkgs' own module system (lib.evalModules)
# without nixpkgs.
#
# - Below the namespaces declared here (services.<name>, users, nix, ...)
#   every value is accepted as it is (freeform `loose`): nixpkgs' modules are
#   not here to check them. Lists of several definitions concatenate.
# - The options our modules read, or whose merging matters (lists that
#   several modules extend, mkForce/mkAfter on strings, systemd unit keys),
#   are declared with the types and defaults nixpkgs (26.05) and agenix
#   (b027ee29) give them.
# - `pkgs` is a set of inert stand-in derivations: nothing is built.
{
  lib,
  config,
  ...
}: let
  inherit (lib) mkOption types;

  fakePackage = name: {
    type = "derivation";
    inherit name;
    pname = name;
    version = "0";
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
    meta.mainProgram = name;
  };
  builder = name: _: fakePackage name;

  # pkgs/pkgs-lib/formats.nix: the TOML value type.
  tomlValue =
    types.nullOr (types.oneOf [
      types.bool
      types.int
      types.float
      types.str
      types.path
      (types.attrsOf tomlValue)
      (types.listOf tomlValue)
    ])
    // {description = "TOML value";};

  pkgs =
    lib.genAttrs [
      "hubbub"
      "haproxy"
      "openssl"
      "coreutils"
      "gnugrep"
      "gnused"
      "gzip"
      "util-linux"
      "zstd"
      "postgresql"
    ]
    fakePackage
    // {
      formats.toml = _: {
        type = types.attrsOf tomlValue;
        generate = builder;
      };
      runCommand = name: _: _: fakePackage name;
      writeText = builder;
      writeShellScript = builder;
      linkFarm = builder;
      writeShellApplication = args: fakePackage args.name;
    };

  # Anything: attribute sets merge, lists concatenate, other values must agree.
  loose = types.mkOptionType {
    name = "loose";
    description = "anything (a stand-in)";
    merge = loc: defs: let
      values = map (def: def.value) defs;
    in
      if lib.all builtins.isAttrs values && !(lib.any lib.isDerivation values)
      then (types.attrsOf loose).merge loc defs
      else if lib.all builtins.isList values
      then lib.concatLists values
      else lib.mergeEqualOption loc defs;
  };
  # A namespace nixpkgs declares: freeform, plus `options` where it matters.
  namespace = options:
    mkOption {
      type = types.submodule {
        freeformType = types.attrsOf loose;
        inherit options;
      };
      default = {};
    };
  anyValue = namespace {};

  # nixos/lib/systemd-unit-options.nix: a unit setting is an atom or a list;
  # lists of several definitions concatenate, atoms must agree.
  unitOption = types.mkOptionType {
    name = "systemd option";
    merge = loc: defs: let
      defs' = lib.filterOverrides defs;
    in
      if lib.any (def: builtins.isList def.value) defs'
      then lib.concatMap (def: lib.toList def.value) defs'
      else lib.mergeEqualOption loc defs';
  };
  strings = mkOption {
    type = types.listOf types.str;
    default = [];
  };
  unit = types.submodule {
    freeformType = types.attrsOf loose;
    options = {
      description = mkOption {
        type = types.str;
        default = "";
      };
      wantedBy = strings;
      requiredBy = strings;
      wants = strings;
      requires = strings;
      after = strings;
      before = strings;
      environment = mkOption {
        type = types.attrsOf (types.nullOr (types.oneOf [types.str types.path types.package]));
        default = {};
      };
      script = mkOption {
        type = types.lines;
        default = "";
      };
      serviceConfig = mkOption {
        type = types.attrsOf unitOption;
        default = {};
      };
      unitConfig = mkOption {
        type = types.attrsOf unitOption;
        default = {};
      };
      listenStreams = strings;
    };
  };
  units = mkOption {
    type = types.attrsOf unit;
    default = {};
  };
  freeform = anyValue;
  enable = mkOption {
    type = types.bool;
    default = false;
  };
in {
  config = {
    _module.args.pkgs = pkgs;
    # nixos/modules/services/networking/ssh/sshd.nix: the one nixpkgs module we
    # use that opens a public port by itself (openFirewall defaults to true).
    networking.firewall.allowedTCPPorts =
      lib.mkIf (config.services.openssh.enable && config.services.openssh.openFirewall)
      config.services.openssh.ports;
  };

  options = {
    # nixos/modules/misc/assertions.nix
    assertions = mkOption {
      type = types.listOf types.unspecified;
      default = [];
    };
    warnings = mkOption {
      type = types.listOf types.str;
      default = [];
    };

    # nixos/modules/system/boot/systemd.nix
    systemd.services = units;
    systemd.sockets = units;
    systemd.timers = units;
    systemd.tmpfiles.rules = strings;

    # nixos/modules/services/networking/firewall.nix, nftables.nix
    networking.hostName = anyValue;
    networking.domain = anyValue;
    networking.interfaces = anyValue;
    networking.nftables = anyValue;
    networking.firewall = {
      enable = enable;
      allowPing = anyValue;
      logRefusedConnections = anyValue;
      allowedTCPPorts = mkOption {
        type = types.listOf types.port;
        default = [];
      };
      allowedTCPPortRanges = mkOption {
        type = types.listOf (types.attrsOf types.port);
        default = [];
      };
      extraInputRules = mkOption {
        type = types.lines;
        default = "";
      };
    };

    environment.systemPackages = mkOption {
      type = types.listOf types.package;
      default = [];
    };
    environment.etc = mkOption {
      type = types.attrsOf (types.submodule {freeformType = types.attrsOf loose;});
      default = {};
    };

    users = anyValue;
    security = anyValue;
    nix = anyValue;
    boot = anyValue;
    fileSystems = anyValue;
    time = anyValue;
    nixpkgs = anyValue;
    system = anyValue;
    services.redis = anyValue;
    services.mosquitto = anyValue;
    services.prometheus = anyValue;
    services.grafana = anyValue;
    services.haproxy = anyValue;
    services.hydra = anyValue;
    services.nginx = anyValue;
    services.openssh = namespace {
      inherit enable;
      openFirewall = mkOption {
        type = types.bool;
        default = true;
      };
      ports = mkOption {
        type = types.listOf types.port;
        default = [22];
      };
    };
    services.fail2ban = anyValue;
    services.dnsmasq = anyValue;

    # nixos/modules/services/databases/postgresql.nix, postgresql-backup.nix
    services.postgresql = {
      inherit enable;
      package = mkOption {
        type = types.package;
        default = pkgs.postgresql;
      };
      settings = freeform;
      authentication = mkOption {
        type = types.lines;
        default = "";
      };
      ensureDatabases = strings;
      ensureUsers = mkOption {
        type = types.listOf (types.attrsOf loose);
        default = [];
      };
    };
    services.postgresqlBackup = namespace {
      location = mkOption {
        type = types.path;
        default = "/var/backup/postgresql";
      };
    };

    # nixos/modules/system/boot/systemd/journald*.nix (26.05 still has
    # extraConfig; newer ones settings.Journal; remote.listen is an enum).
    services.journald = {
      extraConfig = mkOption {
        type = types.lines;
        default = "";
      };
      remote = {
        inherit enable;
        output = anyValue;
        listen = mkOption {
          type = types.enum ["https" "http"];
          default = "https";
        };
        port = mkOption {
          type = types.port;
          default = 19532;
        };
        settings = freeform;
      };
      upload = {
        inherit enable;
        settings = freeform;
      };
    };

    # nixos/modules/services/networking/harmonia.nix (26.05: services.harmonia.cache.*)
    services.harmonia.cache = freeform;

    # agenix modules/age.nix
    age.secrets = mkOption {
      default = {};
      type = types.attrsOf (types.submodule ({
        config,
        name,
        ...
      }: {
        options = {
          name = mkOption {
            type = types.str;
            default = name;
          };
          file = mkOption {type = types.path;};
          path = mkOption {
            type = types.str;
            default = "/run/agenix/${config.name}";
          };
          mode = mkOption {
            type = types.str;
            default = "0400";
          };
          owner = mkOption {
            type = types.str;
            default = "0";
          };
          group = mkOption {
            type = types.str;
            default = "0";
          };
          symlink = mkOption {
            type = types.bool;
            default = true;
          };
        };
      }));
    };
  };
}
