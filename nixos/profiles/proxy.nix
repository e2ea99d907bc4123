# HAProxy at the edge: TLS on 443, 80 redirecting to HTTPS (and answering
# ACME HTTP-01 challenges), path routing to the role pools, /readyz health
# checks, HSTS, per-client limits and the Prometheus endpoint on the private
# address. The whole haproxy.cfg comes from the pure renderer
# nixos/lib/haproxy.nix. The pools are found through DNS
# (<role>.hubbub.internal): on a static inventory (discovery source
# "inventory") dnsmasq on this host answers, on loopback only, with the app
# hosts of the inventory (nixos/lib/discovery.nix); in the cloud the VPC
# resolver answers from AWS Cloud Map.
#
# HAProxy wants key and certificate chain in one PEM file. With ACME that is
# /var/lib/acme/<domain>/full.pem (key + full chain, written by the NixOS acme
# module, group-readable by haproxy); otherwise `certificateFile` names such a
# file outside the store.
{
  config,
  lib,
  pkgs,
  ...
}: let
  view = config.hubbub.deployment.view;
  inventory = view.inventory;
  cfg = config.hubbub.proxy;
  domain = inventory.domain;
  acmeChallengeAddress = "127.0.0.1:8402";
  certificate =
    if cfg.acme
    then "/var/lib/acme/${domain}/full.pem"
    else cfg.certificateFile;

  # For the "certificate expiring soon" alert: the node exporter's textfile
  # collector (nixos/profiles/monitoring.nix) publishes the expiry time.
  textfileDir = "/var/lib/prometheus-node-exporter-text";
  certificateMetric = pkgs.writeShellScript "hubbub-tls-expiry-metric" ''
    set -euo pipefail
    end=$(${pkgs.openssl}/bin/openssl x509 -noout -enddate -in ${lib.escapeShellArg certificate} | ${pkgs.coreutils}/bin/cut -d= -f2)
    file=${textfileDir}/hubbub_tls.prom
    {
      echo '# HELP hubbub_tls_certificate_expiry_timestamp_seconds Unix time when the edge TLS certificate expires.'
      echo '# TYPE hubbub_tls_certificate_expiry_timestamp_seconds gauge'
      echo "hubbub_tls_certificate_expiry_timestamp_seconds{domain=\"${domain}\"} $(${pkgs.coreutils}/bin/date -d "$end" +%s)"
    } > "$file.tmp"
    ${pkgs.coreutils}/bin/mv "$file.tmp" "$file"
  '';

  # dnsmasq from nixpkgs (services.dnsmasq: enable, resolveLocalQueries,
  # settings), answering for the discovery domain from a store file.
  staticDiscovery = inventory.discovery.source == "inventory";
  discovery = import ../lib/discovery.nix {
    inherit inventory;
    hostsFile = "${pkgs.writeText "hubbub-discovery-hosts" (import ../lib/discovery.nix {inherit inventory;}).hosts}";
  };

  haproxyConfig = import ../lib/haproxy.nix {
    inherit inventory certificate;
    acmeChallenge =
      if cfg.acme
      then acmeChallengeAddress
      else null;
  };
in {
  imports = [../modules/deployment.nix];

  options.hubbub.proxy = {
    enable =
      lib.mkEnableOption "HAProxy in front of the hubbub roles on this host"
      // {
        default = view.runs "proxy";
        defaultText = lib.literalExpression ''the inventory lists "proxy" for this host'';
      };
    acme = lib.mkOption {
      type = lib.types.bool;
      default = true;
      description = "Obtain the certificate for the inventory's domain with ACME (HTTP-01 through HAProxy).";
    };
    certificateFile = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "/run/agenix/proxy-full.pem";
      description = ''
        Without ACME: a PEM file holding the private key and the certificate
        chain, readable by the haproxy user, outside the Nix store.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.acme || cfg.certificateFile != null;
        message = "hubbub.proxy: set certificateFile (key + chain in one PEM) when acme = false.";
      }
      {
        assertion = cfg.certificateFile == null || !(lib.hasPrefix builtins.storeDir cfg.certificateFile);
        message = ''
          hubbub.proxy.certificateFile points into the world-readable Nix store and
          would publish the TLS private key. Use a path outside it (e.g. an agenix secret).
        '';
      }
    ];

    security.acme = lib.mkIf cfg.acme {
      acceptTerms = true;
      defaults.email = inventory.acmeEmail;
      certs.${domain} = {
        # lego answers HTTP-01 on loopback; HAProxy forwards
        # /.well-known/acme-challenge/ on port 80 to it.
        listenHTTP = acmeChallengeAddress;
        group = "haproxy";
        reloadServices = ["haproxy.service"];
      };
    };

    services.haproxy = {
      enable = true;
      config = haproxyConfig;
    };

    services.dnsmasq = lib.mkIf staticDiscovery {
      enable = true;
      # Only HAProxy asks it; the host keeps its own resolver configuration.
      resolveLocalQueries = false;
      inherit (discovery) settings;
    };

    systemd.services.haproxy = lib.mkMerge [
      {
        # Backends live on the private network, found through DNS.
        wants = ["network-online.target"] ++ lib.optional staticDiscovery "dnsmasq.service";
        after = ["network-online.target"] ++ lib.optional staticDiscovery "dnsmasq.service";
      }
      (lib.mkIf cfg.acme {
        # acme-<domain>.service puts a self-signed placeholder in place, so
        # HAProxy starts before the real certificate exists; lego's order
        # (acme-order-renew-<domain>.service) must find HAProxy up to answer
        # the HTTP-01 challenge, and reloads it (reloadServices) on success.
        wants = ["acme-${domain}.service"];
        after = ["acme-${domain}.service"];
        before = ["acme-order-renew-${domain}.service"];
      })
    ];

    networking.firewall.allowedTCPPorts = [80 443];

    systemd.services.hubbub-tls-expiry-metric = {
      description = "Publish the edge certificate's expiry time for Prometheus";
      after = ["haproxy.service"];
      serviceConfig = {
        Type = "oneshot";
        ExecStart = certificateMetric;
      };
    };
    systemd.timers.hubbub-tls-expiry-metric = {
      wantedBy = ["timers.target"];
      timerConfig = {
        OnBootSec = "2min";
        OnUnitActiveSec = "1h";
      };
    };
  };
}
