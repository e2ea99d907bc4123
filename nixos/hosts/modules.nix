# The modules of one example host: agenix' module, common.nix, the host's
# place in the inventory, and every profile (the ci profile only where the
# inventory says so). nixos/hosts/default.nix builds the hosts from this list;
# tests/nix/hosts.sh evaluates the very same list with stand-ins for nixpkgs.
# Builtins only.
{
  agenixModule,
  name,
  inventory,
}: let
  modules = import ../modules;
in
  [
    agenixModule
    ./common.nix
    {
      hubbub.deployment = {
        inherit inventory;
        host = name;
      };
    }
  ]
  ++ builtins.attrValues (removeAttrs modules ["ci"])
  ++ (
    if builtins.elem "ci" inventory.hosts.${name}.services
    then [modules.ci]
    else []
  )
