# Where this host sits in the inventory. Imported by every profile: the
# profiles read `hubbub.deployment.view` (derived from nixos/lib/inventory.nix
# through nixos/lib/topology.nix) to decide what to run and whom to talk to,
# so adding a host to the inventory is enough to update HAProxy backends,
# Prometheus targets and firewall rules everywhere.
{
  config,
  lib,
  ...
}: let
  inherit (lib) mkOption types;
  cfg = config.hubbub.deployment;
  inventory = cfg.inventory;
  hosts = inventory.hosts;

  hostsWith = service: lib.filter (name: lib.elem service hosts.${name}.services) (lib.attrNames hosts);
  hostsWithRole = role: lib.filter (name: lib.elem role hosts.${name}.roles) (lib.attrNames hosts);
  appHosts = lib.filter (name: hosts.${name}.roles != []) (lib.attrNames hosts);
  firstWith = service: let
    found = hostsWith service;
  in
    if found == []
    then null
    else lib.head found;
  addressOf = name: hosts.${name}.privateAddress or null;
in {
  options.hubbub.deployment = {
    inventory = mkOption {
      type = types.attrs;
      default = import ../lib/inventory.nix;
      defaultText = lib.literalExpression "import ../lib/inventory.nix";
      description = "The topology (pure data): hosts, private addresses, services and roles.";
    };

    host = mkOption {
      type = types.str;
      example = "app1";
      description = "The name of this host in the inventory.";
    };

    secretsDir = mkOption {
      type = types.path;
      default = ../../secrets;
      defaultText = lib.literalExpression "../../secrets";
      description = ''
        Directory holding the agenix files (`<name>.age`, encrypted: they may
        enter the store) and the public certificates under `pki/`.
      '';
    };

    view = mkOption {
      type = types.attrs;
      readOnly = true;
      internal = true;
      description = "Derived view of the inventory for this host (read by the profiles).";
    };
  };

  config = {
    assertions = [
      {
        assertion = hosts ? ${cfg.host};
        message = ''
          hubbub.deployment.host = "${cfg.host}" is not a host of the inventory
          (known: ${lib.concatStringsSep ", " (lib.attrNames hosts)}). Add it to nixos/lib/inventory.nix.
        '';
      }
    ];

    hubbub.deployment.view = rec {
      inherit inventory hostsWith hostsWithRole appHosts addressOf;
      # The CIDRs a host connects from: its address, or an elastic host's subnets.
      inherit (import ../lib/topology.nix inventory) sourcesOf;
      name = cfg.host;
      self =
        hosts.${cfg.host}
        or {
          privateAddress = "127.0.0.1";
          services = [];
          roles = [];
        };
      # null on an elastic host: its instances learn their address at boot.
      address = self.privateAddress or null;
      runs = service: lib.elem service self.services;
      hasRole = role: lib.elem role self.roles;

      # The single host carrying a service (null when none does).
      databaseHost = firstWith "database";
      cacheHost = firstWith "cache";
      brokerHost = firstWith "broker";
      proxyHost = firstWith "proxy";
      monitorHost = firstWith "monitoring";
      logHost = firstWith "logging";

      # App hosts other than this one: they reach this host's services over the
      # private network (TCP PostgreSQL, Redis on the private address, MQTT over TLS).
      remoteAppHosts = lib.filter (host: host != cfg.host) appHosts;

      pki = cfg.secretsDir + "/pki";
      ports = inventory.ports;
    };
  };
}
