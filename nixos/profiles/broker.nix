# Mosquitto for hubbub: no anonymous access; a loopback listener for roles on
# this host and, when app hosts connect remotely, a TLS listener (8883) on the
# private address. Users chat, broadcast and buffs authenticate with
# passwords from agenix (passed by the mosquitto module with LoadCredential,
# never in the store) and get the least-privilege ACLs of
# nixos/lib/broker-acl.nix (the same table the tests read).
{
  config,
  lib,
  ...
}: let
  view = config.hubbub.deployment.view;
  ports = view.inventory.ports;
  remoteApps = view.remoteAppHosts != [];
  brokerAcl = import ../lib/broker-acl.nix;

  users = lib.genAttrs ["chat" "broadcast" "buffs"] (user: {
    passwordFile = config.age.secrets."mqtt-${user}".path;
    acl = brokerAcl.aclStrings.${user};
  });
in {
  imports = [
    ../modules/deployment.nix
    ./secrets.nix
  ];

  options.hubbub.broker.enable =
    lib.mkEnableOption "the MQTT broker for hubbub on this host"
    // {
      default = view.runs "broker";
      defaultText = lib.literalExpression ''the inventory lists "broker" for this host'';
    };

  config = lib.mkIf config.hubbub.broker.enable {
    services.mosquitto = {
      enable = true;
      # Mosquitto drops QoS 1 messages for a subscriber once 1000 are queued for
      # it (its default). A broadcast process busy with thousands of SSE clients
      # can fall that far behind under a burst, and a dropped message never
      # reaches its clients; hold up to 100000 (tens of MB) instead.
      settings.max_queued_messages = 100000;
      listeners =
        [
          {
            address = "127.0.0.1";
            port = ports.mqtt;
            inherit users;
            settings.allow_anonymous = false;
          }
        ]
        ++ lib.optional remoteApps {
          address = view.address;
          port = ports.mqtts;
          inherit users;
          settings = {
            allow_anonymous = false;
            # The certificate is public (secrets/pki); the key is an agenix
            # secret owned by mosquitto.
            certfile = "${view.pki}/mqtt-${view.name}.pem";
            cafile = "${view.pki}/ca.pem";
            keyfile = config.age.secrets.mqtt-tls-key.path;
            tls_version = "tlsv1.2";
          };
        };
    };
  };
}
