# What every example host shares besides the profiles: identity, the
# example admin key for root over SSH (keys only), and a minimal hardware
# stub so the configurations evaluate and build. Replace the stub with each
# machine's hardware-configuration.nix (nixos-generate-config) before
# deploying for real.
{
  config,
  lib,
  ...
}: let
  view = config.hubbub.deployment.view;
  inventory = view.inventory;
in {
  networking.hostName = lib.mkDefault view.name;
  networking.domain = lib.mkDefault inventory.domain;

  # The private network: a static address on the private interface (in the
  # cloud, DHCP hands out the address the infrastructure assigned).
  networking.interfaces.${inventory.privateInterface}.ipv4.addresses = lib.mkIf (!(inventory ? provider)) [
    {
      address = view.address;
      prefixLength = lib.toInt (lib.last (lib.splitString "/" inventory.privateNetwork));
    }
  ];

  users.mutableUsers = false;
  users.users.root.openssh.authorizedKeys.keyFiles = [../tests/keys/INSECURE-admin_ed25519.pub];

  # Hardware stub (see above; the cloud hosts get theirs from nixpkgs'
  # amazon-image.nix).
  boot.loader.grub.device = lib.mkDefault "/dev/vda";
  fileSystems."/" = lib.mkDefault {
    device = "/dev/disk/by-label/nixos";
    fsType = "ext4";
  };

  time.timeZone = "UTC";
  nix.settings.experimental-features = ["nix-command" "flakes"];
  system.stateVersion = "26.05";
}
