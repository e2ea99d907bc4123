# Metrics. On every host: the node exporter on the private address (with
# the textfile collector, where the database host reports its last good
# backup). On the monitoring host: Prometheus scraping every target the
# inventory implies (nixos/lib/topology.nix), the alert rules of
# nixos/lib/alert-rules.nix, Alertmanager (receiver URL from agenix through an
# environment file) and Grafana with the hubbub dashboard provisioned and its
# admin password and secret key read from agenix files (`$__file{...}`).
{
  config,
  lib,
  pkgs,
  ...
}: let
  view = config.hubbub.deployment.view;
  inventory = view.inventory;
  ports = inventory.ports;
  cfg = config.hubbub.monitoring;
  topology = import ../lib/topology.nix inventory;
  isMonitor = view.runs "monitoring";
  textfileDir = "/var/lib/prometheus-node-exporter-text";

  alertRules = pkgs.writeText "hubbub-alerts.rules.json" (import ../lib/alert-rules.nix);

  dashboards = pkgs.linkFarm "hubbub-grafana-dashboards" [
    {
      name = "hubbub.json";
      path = ../files/grafana/hubbub.json;
    }
  ];

  secretFile = name: "$__file{${config.age.secrets.${name}.path}}";
in {
  imports = [
    ../modules/deployment.nix
    ./secrets.nix
  ];

  options.hubbub.monitoring = {
    enable =
      lib.mkEnableOption "metrics for this host (node exporter; the monitoring stack where the inventory puts it)"
      // {
        default = true;
      };
    retention = lib.mkOption {
      type = lib.types.str;
      default = "30d";
      description = "How long Prometheus keeps samples.";
    };
  };

  config = lib.mkIf cfg.enable (lib.mkMerge [
    {
      services.prometheus.exporters.node = {
        enable = true;
        listenAddress = view.address;
        port = ports.nodeExporter;
        enabledCollectors = ["systemd" "textfile"];
        extraFlags = ["--collector.textfile.directory=${textfileDir}"];
      };
      systemd.tmpfiles.rules = ["d ${textfileDir} 0755 root root - -"];
    }

    # The database host: a metric for "backup older than 26 h", written only
    # after a dump succeeded.
    (lib.mkIf (view.runs "database") {
      systemd.services."postgresqlBackup-hubbub".serviceConfig.ExecStartPost = [
        "+${pkgs.writeShellScript "hubbub-backup-metric" ''
          file=${textfileDir}/hubbub_backup.prom
          printf '# HELP hubbub_backup_last_success_timestamp_seconds Unix time of the last successful database dump.\n# TYPE hubbub_backup_last_success_timestamp_seconds gauge\nhubbub_backup_last_success_timestamp_seconds{database="hubbub"} %s\n' "$(date +%s)" > "$file.tmp"
          mv "$file.tmp" "$file"
        ''}"
      ];
    })

    (lib.mkIf isMonitor {
      services.prometheus = {
        enable = true;
        listenAddress = view.address;
        port = ports.prometheus;
        retentionTime = cfg.retention;
        globalConfig = {
          scrape_interval = "15s";
          evaluation_interval = "15s";
        };
        scrapeConfigs = topology.scrapeConfigs;
        ruleFiles = [alertRules];
        alertmanagers = [
          {
            static_configs = [{targets = ["127.0.0.1:${toString ports.alertmanager}"];}];
          }
        ];

        alertmanager = {
          enable = true;
          listenAddress = "127.0.0.1";
          port = ports.alertmanager;
          # The receiver URL is a secret: it comes from an agenix environment
          # file and envsubst fills it in at start. amtool cannot check the
          # placeholder at build time, hence checkConfig = false.
          environmentFile = config.age.secrets.alertmanager-env.path;
          checkConfig = false;
          configuration = {
            route = {
              receiver = "hubbub-webhook";
              group_by = ["alertname" "instance"];
              group_wait = "30s";
              group_interval = "5m";
              repeat_interval = "4h";
            };
            receivers = [
              {
                name = "hubbub-webhook";
                webhook_configs = [
                  {
                    url = "$HUBBUB_ALERT_WEBHOOK_URL";
                    send_resolved = true;
                  }
                ];
              }
            ];
          };
        };
      };

      services.grafana = {
        enable = true;
        settings = {
          server = {
            http_addr = view.address;
            http_port = ports.grafana;
            domain = "${view.name}.${inventory.domain}";
          };
          security = {
            admin_user = "admin";
            admin_password = secretFile "grafana-admin-password";
            secret_key = secretFile "grafana-secret-key";
            disable_gravatar = true;
          };
          users.allow_sign_up = false;
          analytics.reporting_enabled = false;
        };
        provision = {
          enable = true;
          datasources.settings = {
            apiVersion = 1;
            datasources = [
              {
                name = "Prometheus";
                type = "prometheus";
                uid = "prometheus";
                access = "proxy";
                url = "http://${view.address}:${toString ports.prometheus}";
                isDefault = true;
              }
            ];
          };
          dashboards.settings = {
            apiVersion = 1;
            providers = [
              {
                name = "hubbub";
                options.path = dashboards;
                disableDeletion = true;
              }
            ];
          };
        };
      };
    })
  ]);
}
