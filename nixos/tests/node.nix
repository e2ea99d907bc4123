# A VM-test node that is one host of an inventory: the same profiles as the
# real hosts (nixos/hosts), with the test-only differences spelled out here:
# the INSECURE example host key as agenix identity, the inventory address as an
# extra address on the test network's eth1, a self-signed certificate instead of
# ACME, and this flake's package.
{self}: {
  name,
  inventory,
}: {
  lib,
  pkgs,
  ...
}: let
  modules = import ../modules;
  host = inventory.hosts.${name};
in {
  imports =
    [self.inputs.agenix.nixosModules.default]
    ++ lib.attrValues (removeAttrs modules ["ci"]);

  hubbub.deployment = {
    inherit inventory;
    host = name;
  };

  # INSECURE test key (nixos/tests/keys/README.md), read from the store.
  age.identityPaths = [(./keys + "/INSECURE-${name}_ed25519")];

  services.hubbub.package = self.packages.${pkgs.stdenv.hostPlatform.system}.default;

  # The test driver puts every node on 192.168.1.0/24 (eth1); add the
  # inventory's private address beside it.
  networking.interfaces.${inventory.privateInterface}.ipv4.addresses = [
    {
      address = host.privateAddress;
      prefixLength = 24;
    }
  ];

  # The proxy serves a self-signed certificate (no ACME server in a VM test).
  hubbub.proxy = lib.mkIf (lib.elem "proxy" host.services) {
    acme = false;
    certificateFile = "/etc/hubbub-test/proxy-full.pem";
  };
  environment.etc."hubbub-test/proxy-full.pem" = lib.mkIf (lib.elem "proxy" host.services) {
    source = ./keys/INSECURE-proxy-full.pem;
    mode = "0440";
    group = "haproxy";
  };

  environment.systemPackages = [pkgs.curl pkgs.jq];
  virtualisation.memorySize = 2048;
  virtualisation.cores = 2;
}
