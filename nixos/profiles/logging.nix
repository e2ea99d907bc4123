# Logs. Every host keeps a bounded local journal and ships it with
# systemd-journal-upload to the logging host over HTTPS, presenting its own
# client certificate (internal CA in secrets/pki; each host's key from agenix).
#
# On the logging host, HAProxy (the "journal gateway", its own unit) terminates
# TLS on the private address and lets in only clients whose certificate the
# internal CA signed (`verify required`), forwarding them to
# systemd-journal-remote, which listens on loopback over plain HTTP: nixpkgs
# builds systemd without GnuTLS, so journal-remote cannot do TLS (its TLS
# settings were silently ignored). The receiver writes under
# /var/log/journal/remote/; every entry keeps its sender's _HOSTNAME
# (`journalctl --directory=/var/log/journal/remote _HOSTNAME=app1`,
# docs/deploy.md). The gateway configuration is nixos/lib/journal-gateway.nix,
# which tests/nix/log-shipping.sh runs with the real daemons.
{
  config,
  lib,
  options,
  pkgs,
  ...
}: let
  view = config.hubbub.deployment.view;
  ports = view.inventory.ports;
  cfg = config.hubbub.logging;
  isLogHost = view.logHost == view.name;
  shipsJournal = view.logHost != null && !isLogHost;
  hasSenders = lib.length (lib.attrNames view.inventory.hosts) > 1;

  # journal-remote listens here, loopback only; the gateway forwards to it.
  receiverPort = ports.journalRemote + 1;
  gatewayConfig = pkgs.writeText "hubbub-journal-gateway.cfg" (import ../lib/journal-gateway.nix {
    listen = "${view.address}:${toString ports.journalRemote}";
    receiver = "127.0.0.1:${toString receiverPort}";
    clientCa = "${view.pki}/ca.pem";
  });

  journalLimits = {
    SystemMaxUse = cfg.localMaxUse;
    MaxRetentionSec = cfg.localRetention;
  };
  # services.journald.extraConfig is removed in nixpkgs 26.11; settings.Journal
  # replaces it. Set whichever this nixpkgs declares (as ci.nix does for harmonia).
  journaldSettings = options.services.journald ? settings;
  # journald.remote's `listen` (https|http) is removed with its TLS options in
  # newer nixpkgs, which always listen over HTTP; where it is declared, its
  # default is https, which this systemd cannot serve.
  remoteListen = (options.services.journald.remote.listen.type.name or "") == "enum";
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
      services.journald =
        if journaldSettings
        then {settings.Journal = journalLimits;}
        else {extraConfig = lib.concatStrings (lib.mapAttrsToList (key: value: "${key}=${value}\n") journalLimits);};
    }

    (lib.mkIf shipsJournal {
      services.journald.upload = {
        enable = true;
        settings.Upload = {
          # The journal gateway on the logging host (HTTPS; TLS by libcurl).
          URL = "https://${view.addressOf view.logHost}:${toString ports.journalRemote}";
          # Client key (agenix, group systemd-journal: the upload service runs
          # as a dynamic user in that group) and its public certificate, which
          # the gateway requires.
          ServerKeyFile = config.age.secrets."journal-upload-${view.name}-key".path;
          ServerCertificateFile = "${view.pki}/journal-upload-${view.name}.pem";
          # CA that signed the gateway's certificate.
          TrustedCertificateFile = "${view.pki}/ca.pem";
        };
      };
      systemd.services.systemd-journal-upload = {
        wants = ["network-online.target"];
        after = ["network-online.target"];
      };
    })

    (lib.mkIf (isLogHost && hasSenders) {
      services.journald.remote =
        {
          enable = true;
          port = receiverPort;
          settings.Remote = {
            # Behind the gateway every connection comes from 127.0.0.1, so all
            # senders share one file; each entry keeps its _HOSTNAME.
            SplitMode = "host";
            MaxUse = cfg.remoteMaxUse;
            KeepFree = "2G";
          };
        }
        // lib.optionalAttrs remoteListen {listen = "http";};
      # Loopback only: the gateway is the one way in.
      systemd.sockets.systemd-journal-remote.listenStreams = lib.mkForce [
        ""
        "127.0.0.1:${toString receiverPort}"
      ];

      systemd.services.hubbub-journal-gateway = {
        description = "TLS with client certificates in front of systemd-journal-remote";
        wantedBy = ["multi-user.target"];
        # It listens on the private address.
        wants = ["network-online.target"];
        after = ["network-online.target" "systemd-journal-remote.socket"];
        serviceConfig =
          removeAttrs (import ../modules/hardening.nix) ["User" "Group" "StateDirectory" "StateDirectoryMode"]
          // {
            Type = "notify";
            ExecStartPre = "${lib.getExe pkgs.haproxy} -c -q -f ${gatewayConfig}";
            ExecStart = "${lib.getExe pkgs.haproxy} -Ws -f ${gatewayConfig}";
            ExecReload = "${pkgs.coreutils}/bin/kill -USR2 $MAINPID";
            KillMode = "mixed";
            SuccessExitStatus = "143";
            Restart = "always";
            RestartSec = "2s";
            # The receiver's certificate (public) and key (agenix, root-only:
            # systemd reads it) as `server.pem` and `server.pem.key` in
            # $CREDENTIALS_DIRECTORY, where the configuration looks.
            LoadCredential = [
              "server.pem:${view.pki}/journal-remote-${view.name}.pem"
              "server.pem.key:${config.age.secrets.journal-remote-key.path}"
            ];
            # HAProxy sizes its file limit from maxconn (setrlimit: @resources).
            LimitNOFILE = 4096;
            SystemCallFilter = [
              "@system-service"
              "~@privileged"
            ];
          };
      };
    })
  ]);
}
