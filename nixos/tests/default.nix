# NixOS VM tests (flake checks, built by Hydra on builders with the `kvm` and
# `nixos-test` features).
{
  pkgs,
  self,
}: {
  vm-allinone = pkgs.testers.runNixOSTest (import ./allinone.nix {inherit self;});
  vm-cluster = pkgs.testers.runNixOSTest (import ./cluster.nix {inherit self;});
}
