# Host lockdown: nftables firewall (public: SSH, plus HTTP/HTTPS on the proxy
# host; every internal port only on the private interface, from the private
# network), OpenSSH with keys only, fail2ban with the sshd jail and, where the
# buffs role runs, the `hubbub-auth` jail fed by the role's authentication
# failure log line (filter: nixos/files/fail2ban/hubbub-auth.conf).
{
  config,
  lib,
  ...
}: let
  view = config.hubbub.deployment.view;
  inventory = view.inventory;
  cfg = config.hubbub.security;
  topology = import ../lib/topology.nix inventory;

  internalPorts = topology.firewallPorts.${view.name} or [];
  publicPorts = config.networking.firewall.allowedTCPPorts ++ lib.concatMap (range: lib.range range.from range.to) config.networking.firewall.allowedTCPPortRanges;
  allowedPublic = [22 80 443] ++ cfg.extraPublicTCPPorts;
  unexpectedPublic = lib.filter (port: !(lib.elem port allowedPublic)) publicPorts;
  # What nixos/lib/topology.nix (and so the AWS security groups of
  # nixos/lib/opentofu.nix) says this host opens publicly.
  expectedPublic = lib.sort lib.lessThan (lib.unique ((topology.publicPorts.${view.name} or [22]) ++ cfg.extraPublicTCPPorts));
  actualPublic = lib.sort lib.lessThan (lib.unique publicPorts);
in {
  imports = [../modules/deployment.nix];

  options.hubbub.security = {
    enable =
      lib.mkEnableOption "the hubbub host lockdown (firewall, SSH, fail2ban)"
      // {
        default = true;
      };
    extraPublicTCPPorts = lib.mkOption {
      type = lib.types.listOf lib.types.port;
      default = [];
      description = ''
        Ports besides 22, 80 and 443 that may be open on every interface.
        Anything else in networking.firewall.allowedTCPPorts fails the build:
        internal services belong on the private interface.
      '';
    };
    authJail = {
      maxretry = lib.mkOption {
        type = lib.types.ints.positive;
        default = 5;
        description = "Failed buffs authentications within `findtime` before a client is banned.";
      };
      findtime = lib.mkOption {
        type = lib.types.str;
        default = "10m";
        description = "Window in which failures are counted.";
      };
      bantime = lib.mkOption {
        type = lib.types.str;
        default = "1h";
        description = "How long a client stays banned (doubles for repeat offenders).";
      };
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = actualPublic == expectedPublic;
        message = ''
          networking.firewall opens ${lib.concatMapStringsSep ", " toString actualPublic} on every interface, but
          nixos/lib/topology.nix (publicPorts, which the AWS security groups mirror) says
          ${lib.concatMapStringsSep ", " toString expectedPublic}. Update publicPortsOf there.
        '';
      }
      {
        assertion = unexpectedPublic == [];
        message = ''
          networking.firewall opens ${lib.concatMapStringsSep ", " toString unexpectedPublic} on every interface,
          but only 22, 80 and 443 may be public. Open internal ports on the private
          interface (nixos/lib/topology.nix derives them from the inventory), or list
          a deliberate exception in hubbub.security.extraPublicTCPPorts.
        '';
      }
    ];

    networking.nftables.enable = true;
    networking.firewall = {
      enable = true;
      allowPing = true;
      logRefusedConnections = false; # scanners would flood the journal shipped to the monitor
      # Internal services: only on the private interface, only from the private network.
      extraInputRules = lib.optionalString (internalPorts != []) ''
        iifname "${inventory.privateInterface}" ip saddr ${inventory.privateNetwork} tcp dport { ${lib.concatMapStringsSep ", " toString internalPorts} } accept comment "hubbub internal services"
      '';
    };

    services.openssh = {
      enable = true;
      openFirewall = true; # port 22, public
      settings = {
        PasswordAuthentication = false;
        KbdInteractiveAuthentication = false;
        PermitRootLogin = "prohibit-password";
        X11Forwarding = false;
      };
    };

    services.fail2ban = {
      enable = true;
      maxretry = 5;
      bantime = "10m";
      bantime-increment = {
        enable = true;
        maxtime = "1w";
      };
      # Never ban the private network: the proxy, the monitor and the app hosts live there.
      ignoreIP = [inventory.privateNetwork];
      jails.hubbub-auth = lib.mkIf (view.hasRole "buffs") {
        settings = {
          filter = "hubbub-auth";
          backend = "systemd";
          port = "http,https";
          inherit (cfg.authJail) maxretry findtime bantime;
        };
      };
    };

    # The filter ships as a file (a string `filter` on a jail is ignored by
    # some fail2ban module versions); the jail names it.
    environment.etc."fail2ban/filter.d/hubbub-auth.conf" = lib.mkIf (view.hasRole "buffs") {
      source = ../files/fail2ban/hubbub-auth.conf;
    };
  };
}
