# The AWS deployment's build outputs for one system (docs/cloud.md):
#
#   packages.cloud-image-app   the NixOS Amazon image (VHD) every app instance boots:
#                              nixosConfigurations.cloud-app's system.build.images.amazon
#                              (x86_64-linux; a Hydra job)
#   packages.cloud-images      every cloud host's image plus images.tfvars.json, the
#                              `images` variable of the OpenTofu configuration (built at
#                              deploy time, not by Hydra: five disk images)
#   packages.opentofu-config   main.tf.json, rendered by nixos/lib/opentofu.nix for the
#                              hashicorp/aws version nixpkgs builds
#   apps.tofu                  OpenTofu with that provider (`nix run .#tofu -- ...`)
#   checks.opentofu-validate   `tofu init -backend=false` and `tofu validate` in the
#                              sandbox, offline, with the provider from nixpkgs; its
#                              output is the .terraform.lock.hcl that init wrote
#
# The provider follows the nixpkgs pin: the configuration requires exactly the
# version of pkgs.terraform-providers.hashicorp_aws, `tofu init` takes it from
# the wrapper's plugin directory (NIX_TERRAFORM_PLUGIN_DIR, no registry), and
# the lock file is generated from it. No .terraform.lock.hcl is committed:
# nixpkgs-built providers do not match the registry's checksums, and the
# flake.lock already pins the exact build.
{
  pkgs,
  lib,
  self,
  system,
}: let
  tofu = pkgs.opentofu.withPlugins (p: [p.hashicorp_aws]);
  awsProviderVersion = pkgs.opentofu.plugins.hashicorp_aws.version;
  config = pkgs.writeText "main.tf.json" (builtins.toJSON (import ../nixos/lib/opentofu.nix {
    inventory = import ../nixos/lib/inventory.nix;
    inherit awsProviderVersion;
  }));
  cloudHosts = lib.filterAttrs (name: _: lib.hasPrefix "cloud-" name) self.nixosConfigurations;
  image = host: host.config.system.build.images.amazon;
  images = pkgs.runCommand "hubbub-cloud-images" {nativeBuildInputs = [pkgs.jq];} ''
    mkdir -p $out
    jq -n '{images: $ARGS.named}' ${lib.concatStringsSep " " (lib.mapAttrsToList (name: host: ''
      --arg ${lib.removePrefix "cloud-" name} "$(jq -r .file ${image host}/nix-support/image-info.json)"'')
    cloudHosts)} >$out/images.tfvars.json
  '';
in {
  packages =
    {
      opentofu-config = config;
    }
    // lib.optionalAttrs (system == "x86_64-linux") {
      cloud-image-app = image self.nixosConfigurations.cloud-app;
      cloud-images = images;
    };

  apps.tofu = {
    type = "app";
    program = lib.getExe' tofu "tofu";
    meta.description = "OpenTofu with the hashicorp/aws provider of the nixpkgs pin";
  };

  checks.opentofu-validate = pkgs.runCommand "hubbub-opentofu-validate" {nativeBuildInputs = [tofu];} ''
    export HOME=$TMPDIR TF_IN_AUTOMATION=1
    mkdir work && cd work
    cp ${config} main.tf.json
    tofu init -backend=false -input=false -no-color
    tofu validate -no-color
    mkdir -p $out
    cp .terraform.lock.hcl $out/
  '';
}
