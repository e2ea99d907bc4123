# One example host evaluated as nixos/hosts/default.nix builds it (the module
# list of nixos/hosts/modules.nix), by nixpkgs' lib.evalModules, with
# ./stand-ins.nix in place of nixpkgs' options and agenix' module. The result
# (JSON) is what tests/nix/hosts.sh checks: the failed assertions and
# warnings, and what the cross-host checks need. Forcing it type-checks every
# option of ours that the host sets.
#
#   nix-instantiate --eval --strict --json tests/nix/hosts/eval.nix \
#     --arg lib 'import <nixpkgs.lib>/lib' --argstr host app1 [--argstr plant NAME]
{
  lib,
  host,
  plant ? "",
}: let
  root = ../../..;
  cluster = import (root + "/nixos/lib/inventory.nix");
  planted =
    if plant == ""
    then {}
    else (import ./plants.nix).${plant};
  plantedFor = attr: default: (planted.${attr} or (_: default)) host;

  inventory =
    (planted.inventory or (_: inventory: inventory)) host
    (
      if host == "allinone"
      then import (root + "/nixos/hosts/allinone.nix") cluster
      else cluster
    );

  eval = lib.evalModules {
    modules =
      import (root + "/nixos/hosts/modules.nix") {
        agenixModule = ./stand-ins.nix;
        name = host;
        inherit inventory;
      }
      ++ plantedFor "modules" [];
  };
  inherit (eval) config;

  hubbub = config.services.hubbub;
  # The settings each hubbub unit's TOML file is rendered from, as
  # nixos/modules/hubbub.nix computes them (mkConfigFile): the global settings
  # for migrate, merged with the role's own for each role; nulls dropped.
  dropNulls = value:
    if builtins.isAttrs value
    then lib.mapAttrs (_: dropNulls) (lib.filterAttrs (_: v: v != null) value)
    else if builtins.isList value
    then map dropNulls value
    else value;
  units = lib.mapAttrs (_: unit: {
    inherit (unit) wants requires after wantedBy environment;
    serviceConfig = lib.filterAttrs (_: v: !(lib.isDerivation v)) unit.serviceConfig;
  }) (lib.filterAttrs (name: _: name != "postgresql-setup") config.systemd.services);
  redis = config.services.redis.servers.hubbub or {};
  mosquitto = config.services.mosquitto or {};
  firewallRules = config.networking.firewall.extraInputRules;
in {
  inherit host;
  address = config.hubbub.deployment.view.address;
  failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
  inherit (config) warnings;

  hubbub =
    if hubbub.enable
    then {
      inherit (hubbub) settings credentials openFirewall ipAddressAllow;
      roles = lib.mapAttrs (_: role: {inherit (role) enable listen adminListen settings credentials;}) hubbub.roles;
      # unit -> { settings; credentials (names); } for `hubbub check-config`
      rendered =
        {
          migrate = {
            settings = dropNulls hubbub.settings;
            credentials = builtins.attrNames hubbub.credentials;
          };
        }
        // lib.mapAttrs (_: role: {
          settings = dropNulls (lib.recursiveUpdate hubbub.settings role.settings);
          credentials = builtins.attrNames (hubbub.credentials // role.credentials);
        }) (lib.filterAttrs (_: role: role.enable) hubbub.roles);
    }
    else null;
  inherit units;
  sockets = lib.mapAttrs (_: s: s.listenStreams) config.systemd.sockets;
  ageSecrets =
    lib.mapAttrs (_: s: {
      inherit (s) path owner group mode;
      file = baseNameOf (toString s.file);
    })
    config.age.secrets;

  postgresql = {
    inherit (config.services.postgresql) enable authentication;
    listen_addresses = config.services.postgresql.settings.listen_addresses or "localhost";
    port = config.services.postgresql.settings.port or 5432;
  };
  redis = {
    enable = redis.enable or false;
    bind = redis.bind or "";
    port = redis.port or 0;
  };
  mqttListeners =
    if mosquitto.enable or false
    then map (l: {inherit (l) address port;}) mosquitto.listeners
    else [];
  journald = {
    upload = config.services.journald.upload.settings.Upload.URL or null;
    remote = config.services.journald.remote.enable;
  };
  haproxy = config.services.haproxy.config or "";
  scrapeTargets = lib.concatMap (job: lib.concatMap (c: c.targets) (job.static_configs or [])) (config.services.prometheus.scrapeConfigs or []);
  firewall = {
    inherit (config.networking.firewall) allowedTCPPorts;
    # `iifname … tcp dport { a, b } accept`: the private-network ports.
    private = let
      m = builtins.match ".*tcp dport [{] ([0-9, ]+) [}].*" (builtins.replaceStrings ["\n"] [" "] firewallRules);
    in
      if m == null
      then []
      else map lib.toInt (lib.splitString ", " (builtins.head m));
  };
}
