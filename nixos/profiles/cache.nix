# Redis for hubbub (`redis-hubbub.service`): password from agenix
# (requirePassFile is read by the unit's root ExecStartPre, never stored),
# bound to loopback and, when app hosts connect remotely, to the private
# address; append-only persistence; the Prometheus redis exporter.
{
  config,
  lib,
  ...
}: let
  view = config.hubbub.deployment.view;
  ports = view.inventory.ports;
  remoteApps = view.remoteAppHosts != [];
in {
  imports = [
    ../modules/deployment.nix
    ./secrets.nix
  ];

  options.hubbub.cache.enable =
    lib.mkEnableOption "Redis for hubbub on this host"
    // {
      default = view.runs "cache";
      defaultText = lib.literalExpression ''the inventory lists "cache" for this host'';
    };

  config = lib.mkIf config.hubbub.cache.enable {
    services.redis.servers.hubbub = {
      enable = true;
      port = ports.redis;
      bind = lib.concatStringsSep " " (["127.0.0.1"] ++ lib.optional remoteApps view.address);
      requirePassFile = config.age.secrets.redis-password.path;
      appendOnly = true;
      appendFsync = "everysec";
      settings = {
        protected-mode = "yes";
        # A cache: evict the least recently used keys rather than fail writes.
        maxmemory = "256mb";
        maxmemory-policy = "allkeys-lru";
      };
    };
    systemd.services.redis-hubbub = lib.mkIf remoteApps {
      wants = ["network-online.target"];
      after = ["network-online.target"];
    };

    services.prometheus.exporters.redis = {
      enable = true;
      listenAddress = view.address;
      port = ports.redisExporter;
    };
    systemd.services.prometheus-redis-exporter = {
      after = ["redis-hubbub.service"];
      wants = ["redis-hubbub.service"];
      # redis_exporter reads REDIS_ADDR and REDIS_PASSWORD from its environment;
      # the password comes from an agenix environment file read by systemd.
      environment.REDIS_ADDR = "redis://127.0.0.1:${toString ports.redis}";
      serviceConfig.EnvironmentFile = config.age.secrets.redis-exporter-env.path;
    };
  };
}
