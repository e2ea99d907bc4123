# nixosConfigurations of the example hosts, driven by nixos/lib/inventory.nix:
# one configuration per inventory host (lb, app1, app2, data, monitor, ci),
# `allinone` (every service on one machine), and the AWS deployment
# (nixos/hosts/cloud.nix): cloud-lb, cloud-data, cloud-monitor, cloud-ci and
# cloud-app, the image of every app instance. Each host imports every profile;
# the profiles switch themselves on from the host's `services` and `roles`, so
# adding a host is one inventory entry (plus its secrets, docs/deploy.md).
{
  self,
  nixpkgs,
  agenix,
}: let
  inherit (nixpkgs) lib;
  inventory = import ../lib/inventory.nix;

  cloudInventory = import ./cloud.nix inventory;

  mkHost = {
    name,
    inventory,
    system ? "x86_64-linux",
    extraModules ? [],
  }:
    lib.nixosSystem {
      modules =
        import ./modules.nix {
          agenixModule = agenix.nixosModules.default;
          inherit name inventory;
        }
        ++ [
          {
            nixpkgs.hostPlatform = system;
            nixpkgs.overlays = [self.overlays.default];
          }
        ]
        ++ extraModules;
    };
in
  lib.mapAttrs (name: _: mkHost {inherit name inventory;}) inventory.hosts
  // {
    allinone = mkHost {
      name = "allinone";
      inventory = import ./allinone.nix inventory;
    };
  }
  // lib.mapAttrs' (name: _:
    lib.nameValuePair "cloud-${name}" (mkHost {
      inherit name;
      inventory = cloudInventory;
      extraModules = [
        "${nixpkgs}/nixos/modules/virtualisation/amazon-image.nix"
        ../profiles/cloud.nix
      ];
    }))
  cloudInventory.hosts
