# The hubbub roles of this host, wired to the rest of the inventory: the
# database (local socket with peer authentication, or TCP with a password),
# Redis, the broker (loopback, or TLS on the private network), the proxy's
# address as trusted proxy, and every secret passed as a systemd credential.
{
  config,
  lib,
  ...
}: let
  view = config.hubbub.deployment.view;
  inherit (view) inventory hasRole;
  ports = inventory.ports;
  secretPath = name: config.age.secrets.${name}.path;

  local = host: host == view.name;
  databaseLocal = local view.databaseHost;
  brokerLocal = local view.brokerHost;
  cacheLocal = local view.cacheHost;

  brokerRoles = lib.filter hasRole ["chat" "broadcast" "buffs"];
  # An elastic host (the AWS app group) learns its address at boot: its units
  # get the listeners from an EnvironmentFile (nixos/profiles/cloud.nix), which
  # overrides these.
  listenHost =
    if view.address != null
    then view.address
    else "0.0.0.0";
  proxyAddresses =
    lib.optional (view.proxyHost != null) "${view.addressOf view.proxyHost}/32"
    ++ lib.optional (local view.proxyHost) "127.0.0.1/32";
in {
  imports = [
    ../modules/deployment.nix
    ../modules/hubbub.nix
    ./secrets.nix
  ];

  options.hubbub.app.enable =
    lib.mkEnableOption "the hubbub roles the inventory assigns to this host"
    // {
      default = view.self.roles != [];
      defaultText = lib.literalExpression "the host has roles in the inventory";
    };

  config = lib.mkIf config.hubbub.app.enable {
    assertions = [
      {
        assertion = view.databaseHost != null && view.cacheHost != null && (brokerRoles == [] || view.brokerHost != null);
        message = ''
          Host ${view.name} runs hubbub roles, but the inventory has no host with the
          "database", "cache" or "broker" service. Add them to a host's `services`.
        '';
      }
    ];

    services.hubbub = {
      enable = true;
      ipAddressAllow = ["localhost" inventory.privateNetwork];

      # Each role gets only its own secrets (least privilege): its broker
      # password, the visitor salt (visitors), the admin tokens (buffs).
      roles = lib.genAttrs view.self.roles (role: {
        # On the private address: HAProxy (lb) and Prometheus (monitor) reach
        # these over the private network; the firewall opens them there only.
        listen = "${listenHost}:${toString ports.public.${role}}";
        adminListen = "${listenHost}:${toString ports.admin.${role}}";
        settings = lib.mkMerge [
          (lib.mkIf (lib.elem role brokerRoles) {
            mqtt = {
              username = role;
              password_file = "mqtt-${role}";
            };
          })
          (lib.mkIf (role == "visitors") {visitors.salt_file = "visitors-salt";})
          (lib.mkIf (role == "buffs") {buffs.admin_token_file = "buffs-admin-tokens";})
        ];
        credentials = lib.mkMerge [
          (lib.mkIf (lib.elem role brokerRoles) {"mqtt-${role}" = secretPath "mqtt-${role}";})
          (lib.mkIf (role == "visitors") {visitors-salt = secretPath "hubbub-visitors-salt";})
          (lib.mkIf (role == "buffs") {buffs-admin-tokens = secretPath "hubbub-buffs-admin-tokens";})
        ];
      });

      settings = {
        http.trusted_proxies = proxyAddresses;
        # Without a database, cache or broker host the assertion above says
        # so; the URLs are left unset rather than failing on a null host.
        database = lib.mkIf (view.databaseHost != null) (
          if databaseLocal
          then {
            # Unix socket, peer authentication as the OS user `hubbub`
            # (DynamicUser=yes, User=hubbub): no password.
            url = "postgresql:///hubbub?host=/run/postgresql&user=hubbub";
          }
          else {
            url = "postgres://hubbub@${view.addressOf view.databaseHost}:${toString ports.postgres}/hubbub";
            password_file = "db-password";
          }
        );
        redis = lib.mkIf (view.cacheHost != null) {
          url = "redis://${
            if cacheLocal
            then "127.0.0.1"
            else view.addressOf view.cacheHost
          }:${toString ports.redis}";
          password_file = "redis-password";
        };
        mqtt = lib.mkIf (brokerRoles != [] && view.brokerHost != null) (
          if brokerLocal
          then {url = "mqtt://127.0.0.1:${toString ports.mqtt}";}
          else {
            url = "mqtts://${view.addressOf view.brokerHost}:${toString ports.mqtts}";
            # Public CA certificate of the internal PKI (a store path is fine).
            ca_file = "${view.pki}/ca.pem";
          }
        );
        visitors.owner_name = lib.mkDefault inventory.domain;
      };

      credentials = lib.mkMerge [
        (lib.mkIf (view.cacheHost != null) {redis-password = secretPath "redis-password";})
        (lib.mkIf (!databaseLocal) {db-password = secretPath "db-hubbub-password";})
      ];
    };
  };
}
