# One host of the AWS deployment (cloud-lb, cloud-data, cloud-monitor, cloud-ci,
# cloud-app) evaluated as nixos/hosts/default.nix builds it: the module list of
# nixos/hosts/modules.nix for the inventory of nixos/hosts/cloud.nix, plus
# nixos/profiles/cloud.nix, by nixpkgs' lib.evalModules with the stand-ins of
# tests/nix/hosts/stand-ins.nix. nixpkgs' amazon-image.nix is not here: what
# the cloud profile sets and reads of it and of agenix is declared below as
# nixpkgs and agenix declare it. tests/nix/cloud.sh checks the result (JSON).
#
#   nix-instantiate --eval --strict --json tests/nix/cloud-hosts.nix \
#     --arg lib 'import <nixpkgs.lib>/lib' --argstr host app [--arg sysusers true]
{
  lib,
  host,
  # agenix with systemd-sysusers or userborn: its own unit instead of activation scripts
  sysusers ? false,
}: let
  root = ../..;
  inventory = import (root + "/nixos/hosts/cloud.nix") (import (root + "/nixos/lib/inventory.nix"));
  inherit (lib) mkOption types;

  fake = name: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
  };
  # The stand-ins' inert packages, plus what the cloud profile uses; scripts
  # keep their text so that cloud.sh can run them.
  standInPkgs =
    (import ./hosts/stand-ins.nix {
      inherit lib;
      config = {};
    })
    .config
    ._module
    .args
    .pkgs;
  pkgs =
    standInPkgs
    // lib.genAttrs ["awscli2" "curl" "jq" "gnugrep" "systemd" "mount"] fake
    // {
      # The store path depends on the text, as it does in nixpkgs: a script
      # used by another one is evaluated with it.
      writeShellScript = name: text:
        fake name
        // {
          inherit text;
          outPath = "/nix/store/${builtins.substring 0 32 (builtins.hashString "sha256" text)}-${name}";
        };
    };

  cloudStandIns = {
    options = {
      # nixos/modules/virtualisation/amazon-init.nix
      virtualisation.amazon-init.enable = mkOption {
        type = types.bool;
        default = true;
      };
      # agenix modules/age.nix (b027ee29)
      age.identityPaths = mkOption {
        type = types.listOf types.path;
        default = [];
      };
    };
    config = {
      _module.args.pkgs = lib.mkForce pkgs;
      # agenix modules/age.nix (b027ee29): activation scripts, or its own
      # unit when systemd-sysusers or userborn creates the users.
      system.activationScripts = lib.mkIf (!sysusers) {
        agenixNewGeneration.text = "echo agenix-new-generation";
        agenixInstall.text = "echo agenix-install";
        agenixChown.text = "echo agenix-chown";
      };
      systemd.services.agenix-install-secrets = lib.mkIf sysusers {
        serviceConfig.Type = "oneshot";
      };
    };
  };

  eval = lib.evalModules {
    modules =
      import (root + "/nixos/hosts/modules.nix") {
        agenixModule = ./hosts/stand-ins.nix;
        name = host;
        inherit inventory;
      }
      ++ [cloudStandIns (root + "/nixos/profiles/cloud.nix")];
  };
  inherit (eval) config;

  text = value:
    if builtins.isAttrs value && value ? text
    then value.text
    else null;
  unit = u: {
    inherit (u) wants requires after wantedBy environment;
    onFailure = u.onFailure or [];
    environmentFile = u.serviceConfig.EnvironmentFile or null;
    timeoutStop = u.serviceConfig.TimeoutStopSec or null;
    start = text (u.serviceConfig.ExecStart or null);
    stop = text (u.serviceConfig.ExecStop or null);
  };
in {
  inherit host;
  failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
  inherit (config) warnings;
  amazonInit = config.virtualisation.amazon-init.enable;
  identityPaths = config.age.identityPaths;
  units = lib.mapAttrs (_: unit) (lib.filterAttrs (name: _: lib.hasPrefix "hubbub" name) config.systemd.services);
  timers = builtins.attrNames config.systemd.timers;
  firewall = {
    inherit (config.networking.firewall) allowedTCPPorts extraInputRules;
  };
}
