# nixosConfigurations of the example hosts, driven by nixos/lib/inventory.nix:
# one configuration per inventory host (lb, app1, app2, data, monitor, ci) and
# `allinone` (every service on one machine). Each host imports every profile;
# the profiles switch themselves on from the host's `services` and `roles`, so
# adding a host is one inventory entry (plus its secrets, docs/deploy.md).
{
  self,
  nixpkgs,
  agenix,
}: let
  inherit (nixpkgs) lib;
  inventory = import ../lib/inventory.nix;

  mkHost = {
    name,
    inventory,
    system ? "x86_64-linux",
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
        ];
    };
in
  lib.mapAttrs (name: _: mkHost {inherit name inventory;}) inventory.hosts
  // {
    allinone = mkHost {
      name = "allinone";
      inventory = import ./allinone.nix inventory;
    };
  }
