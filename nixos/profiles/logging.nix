# Logs. Every host keeps a bounded local journal and ships it with
# systemd-journal-upload to systemd-journal-remote on the logging host over
# HTTPS with mutual TLS (internal CA in secrets/pki; each host's client key and
# the receiver's key come from agenix). The logging host stores one journal
# file per sender under /var/log/journal/remote/ (query them with
# `journalctl --directory=/var/log/journal/remote`, docs/deploy.md).
{
  config,
  lib,
  ...
}: let
  view = config.hubbub.deployment.view;
  ports = view.inventory.ports;
  cfg = config.hubbub.logging;
  isLogHost = view.logHost == view.name;
  shipsJournal = view.logHost != null && !isLogHost;
  hasSenders = lib.length (lib.attrNames view.inventory.hosts) > 1;
in {
  imports = [
    ../modules/deployment.nix
    ./secrets.nix
  ];

  options.hubbub.logging = {
    enable =
      lib.mkEnableOption "journal retention and shipping (the receiver where the inventory puts it)"
      // {
        default = true;
      };
    localMaxUse = lib.mkOption {
      type = lib.types.str;
      default = "2G";
      description = "Disk space the local journal may use (journald SystemMaxUse=).";
    };
    localRetention = lib.mkOption {
      type = lib.types.str;
      default = "1month";
      description = "Age after which local journal entries are dropped (journald MaxRetentionSec=).";
    };
    remoteMaxUse = lib.mkOption {
      type = lib.types.str;
      default = "20G";
      description = "Disk space the received journals may use on the logging host (journal-remote MaxUse=).";
    };
  };

  config = lib.mkIf cfg.enable (lib.mkMerge [
    {
      services.journald.extraConfig = ''
        SystemMaxUse=${cfg.localMaxUse}
        MaxRetentionSec=${cfg.localRetention}
      '';
    }

    (lib.mkIf shipsJournal {
      services.journald.upload = {
        enable = true;
        settings.Upload = {
          URL = "https://${view.addressOf view.logHost}:${toString ports.journalRemote}";
          # Client key (agenix, group systemd-journal: the upload service runs
          # as a dynamic user in that group) and its public certificate.
          ServerKeyFile = config.age.secrets."journal-upload-${view.name}-key".path;
          ServerCertificateFile = "${view.pki}/journal-upload-${view.name}.pem";
          # CA that signed the receiver's certificate.
          TrustedCertificateFile = "${view.pki}/ca.pem";
        };
      };
      systemd.services.systemd-journal-upload = {
        wants = ["network-online.target"];
        after = ["network-online.target"];
      };
    })

    (lib.mkIf (isLogHost && hasSenders) {
      services.journald.remote = {
        enable = true;
        listen = "https";
        port = ports.journalRemote;
        settings.Remote = {
          SplitMode = "host";
          ServerKeyFile = config.age.secrets.journal-remote-key.path;
          ServerCertificateFile = "${view.pki}/journal-remote-${view.name}.pem";
          # Only clients with a certificate from the internal CA may upload.
          TrustedCertificateFile = "${view.pki}/ca.pem";
          MaxUse = cfg.remoteMaxUse;
          KeepFree = "2G";
        };
      };
    })
  ]);
}
