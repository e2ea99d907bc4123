# agenix wiring: declares, for this host, exactly the secrets its services and
# roles need (from the inventory), with the owner and mode each consumer
# requires. Needs agenix' NixOS module (agenix.nixosModules.default).
#
# Decrypted secrets land in /run/agenix/<name> (a ramfs). Consumers that run
# with DynamicUser (hubbub, PostgreSQL setup, Alertmanager) get them through
# systemd LoadCredential=/EnvironmentFile=, read by systemd as root, so those
# stay root:root 0400, as does the journal gateway's key (LoadCredential=);
# static users (mosquitto, grafana) own their files; journal-upload
# (DynamicUser in the systemd-journal group) reads its key through the group.
{
  config,
  lib,
  ...
}: let
  deployment = config.hubbub.deployment;
  view = deployment.view;
  inherit (view) runs hasRole;

  hasRoles = view.self.roles != [];
  remoteApps = view.remoteAppHosts != [];
  brokerRoles = lib.filter hasRole ["chat" "broadcast" "buffs"];
  isLogHost = view.logHost == view.name;
  shipsJournal = view.logHost != null && !isLogHost;

  secret = name: attrs: {
    inherit name;
    value =
      {
        file = deployment.secretsDir + "/${name}.age";
        mode = "0400";
      }
      // attrs;
  };

  wanted = lib.concatLists [
    # hubbub roles on this host
    (lib.optionals hasRoles [(secret "redis-password" {})])
    (lib.optionals (hasRoles && !(runs "database")) [(secret "db-hubbub-password" {})])
    (map (role: secret "mqtt-${role}" {}) brokerRoles)
    (lib.optional (hasRole "visitors") (secret "hubbub-visitors-salt" {}))
    (lib.optional (hasRole "buffs") (secret "hubbub-buffs-admin-tokens" {}))
    # database: the role password for remote app hosts (set in postgresql-setup)
    (lib.optional (runs "database" && remoteApps) (secret "db-hubbub-password" {}))
    # cache
    (lib.optionals (runs "cache") [
      (secret "redis-password" {})
      (secret "redis-exporter-env" {})
    ])
    # broker: passwords go through LoadCredential; the TLS key is read by mosquitto itself
    (lib.optionals (runs "broker") (map (role: secret "mqtt-${role}" {}) ["chat" "broadcast" "buffs"]))
    (lib.optional (runs "broker" && remoteApps) (secret "mqtt-tls-key" {owner = "mosquitto";}))
    # monitoring
    (lib.optionals (runs "monitoring") [
      (secret "alertmanager-env" {})
      (secret "grafana-admin-password" {owner = "grafana";})
      (secret "grafana-secret-key" {owner = "grafana";})
    ])
    # logging
    # the journal gateway's TLS key, read by systemd (LoadCredential=)
    (lib.optional (isLogHost && lib.length (lib.attrNames view.inventory.hosts) > 1)
      (secret "journal-remote-key" {}))
    (lib.optional shipsJournal (secret "journal-upload-${view.name}-key" {
      group = "systemd-journal";
      mode = "0440";
    }))
    # ci (binary cache signing key, used by nixos/profiles/ci.nix)
    (lib.optional (runs "ci") (secret "binary-cache-key" {}))
  ];

  # A secret may be wanted twice (e.g. redis-password on an all-in-one host);
  # listToAttrs keeps the first definition of each name.
  secrets = lib.listToAttrs wanted;
  missing = lib.filter (name: !(builtins.pathExists secrets.${name}.file)) (lib.attrNames secrets);
in {
  imports = [../modules/deployment.nix];

  options.hubbub.secrets.enable =
    lib.mkEnableOption "the agenix secrets this host needs according to the inventory"
    // {
      default = true;
    };

  config = lib.mkIf config.hubbub.secrets.enable {
    assertions = [
      {
        assertion = missing == [];
        message = ''
          Host ${view.name} needs these secrets, which do not exist yet:
          ${lib.concatMapStringsSep "\n" (name: "  ${toString deployment.secretsDir}/${name}.age") missing}
          Add a rule for each to secrets/secrets.nix (this host's SSH host key among the
          recipients), then create it with `cd secrets && agenix -e <name>.age`.
        '';
      }
    ];

    age.secrets = secrets;
  };
}
