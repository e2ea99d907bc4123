{
  description = "hubbub: live-audience services (visitor counter, chat with SSE broadcast, buffs)";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";
    crane.url = "github:ipetkov/crane";
    agenix = {
      url = "github:ryantm/agenix";
      inputs.nixpkgs.follows = "nixpkgs";
      # Only the NixOS module and the CLI are used: no nix-darwin, no home-manager.
      inputs.darwin.follows = "";
      inputs.home-manager.follows = "";
    };
    # RustSec advisories for the cargo-audit check (a plain source, not a flake).
    advisory-db = {
      url = "github:rustsec/advisory-db";
      flake = false;
    };
    # The crates.io releases of the checks' tools (nix/tools.nix, versions in
    # nix/tools.toml): inputs, so that crane reads their Cargo.lock without
    # import-from-derivation.
    crate-cargo-audit = {
      type = "tarball";
      url = "https://static.crates.io/crates/cargo-audit/cargo-audit-0.22.2.crate";
      flake = false;
    };
    crate-cargo-deny = {
      type = "tarball";
      url = "https://static.crates.io/crates/cargo-deny/cargo-deny-0.20.2.crate";
      flake = false;
    };
    crate-deadnix = {
      type = "tarball";
      url = "https://static.crates.io/crates/deadnix/deadnix-1.3.1.crate";
      flake = false;
    };
  };

  outputs = {
    self,
    nixpkgs,
    crane,
    agenix,
    advisory-db,
    crate-cargo-audit,
    crate-cargo-deny,
    crate-deadnix,
  }: let
    inherit (nixpkgs) lib;

    systems = ["x86_64-linux" "aarch64-linux"];

    # The one package definition (nix/package.nix), for any package set: the
    # flake's packages, the overlay and nixosModules.default all use it.
    mkHubbub = pkgs:
      pkgs.callPackage ./nix/package.nix {
        craneLib = crane.mkLib pkgs;
        inherit (self) sourceInfo;
      };

    perSystem = system: let
      pkgs = nixpkgs.legacyPackages.${system};
      craneLib = crane.mkLib pkgs;
      hubbub = mkHubbub pkgs;
      # The checks' tools at the versions tests/run installs (nix/tools.toml).
      tools = import ./nix/tools.nix {
        inherit pkgs craneLib;
        crates = {
          cargo-audit = crate-cargo-audit;
          cargo-deny = crate-cargo-deny;
          deadnix = crate-deadnix;
        };
      };
      rustAndNixChecks = import ./nix/checks.nix {
        inherit pkgs craneLib hubbub advisory-db tools;
      };
      vmTests = import ./nixos/tests {inherit pkgs self;};
      # The AWS deployment: images, the OpenTofu configuration and its check.
      cloud = import ./nix/cloud.nix {inherit pkgs lib self system;};
      serve = pkgs.writeShellApplication {
        name = "hubbub-serve";
        text = ''exec ${lib.getExe hubbub} serve "$@"'';
      };
    in {
      packages =
        {
          default = hubbub;
          inherit hubbub;
          image = pkgs.callPackage ./nix/image.nix {inherit hubbub;};
        }
        // cloud.packages;

      apps =
        {
          default = {
            type = "app";
            program = lib.getExe serve;
            meta.description = "Run every hubbub role (`hubbub serve`) with the default configuration";
          };
        }
        // cloud.apps;

      checks = rustAndNixChecks // vmTests // cloud.checks;

      devShells.default = craneLib.devShell {
        # The build inputs of the Rust and Nix checks (not of the VM tests).
        checks = rustAndNixChecks;
        packages = [
          pkgs.postgresql
          pkgs.redis
          pkgs.mosquitto
          pkgs.haproxy
          pkgs.cargo-nextest
          tools.cargo-audit
          tools.cargo-deny
          tools.alejandra
          tools.deadnix
          agenix.packages.${system}.default
        ];
      };

      # The same alejandra as the nix-format check, the dev shell and tests/run.
      formatter = tools.alejandra;

      # Hydra's jobs on this system: the packages, every check (the VM tests
      # included; `hubbub` is already a package) and the closures of the
      # example hosts built for this system.
      # (cloud-images, five disk images, is built at deploy time only.)
      hydraJobs =
        removeAttrs self.packages.${system} ["default" "cloud-images"]
        // removeAttrs self.checks.${system} ["hubbub"]
        // lib.mapAttrs' (name: host: lib.nameValuePair "host-${name}" host.config.system.build.toplevel)
        (lib.filterAttrs (_: host: host.pkgs.stdenv.hostPlatform.system == system) self.nixosConfigurations);

      aggregate = constituents:
        pkgs.releaseTools.aggregate {
          name = "hubbub-release-${system}";
          inherit constituents;
          meta.description = "Every hubbub job of ${system}: a deployment waits for this one";
        };
    };

    eachSystem = lib.genAttrs systems perSystem;
    output = name: lib.mapAttrs (_: outputs: outputs.${name}) eachSystem;
  in {
    packages = output "packages";
    apps = output "apps";
    checks = output "checks";
    devShells = output "devShells";
    formatter = output "formatter";

    # `nix flake check` (some Nix versions) wants the arguments named final and prev.
    # deadnix: skip
    overlays.default = final: prev: {hubbub = mkHubbub final;};

    # The profiles as they are (nixos/modules/default.nix); `default` (and its
    # alias `hubbub`) is services.hubbub with its package defaulting to the one
    # Hydra built and tested for this system (or, elsewhere, the same
    # definition built with the host's package set). No overlay is imposed on
    # the importing configuration.
    nixosModules = let
      modules = import ./nixos/modules;
      hubbubModule = {
        lib,
        pkgs,
        ...
      }: {
        imports = [modules.default];
        services.hubbub.package = lib.mkDefault (self.packages.${pkgs.stdenv.hostPlatform.system}.default or (mkHubbub pkgs));
      };
    in
      modules
      // {
        default = hubbubModule;
        hubbub = hubbubModule;
      };

    nixosConfigurations = import ./nixos/hosts {inherit self nixpkgs agenix;};

    # hydraJobs.<job>.<system>, plus release.<system> (nix/hydra-jobs.nix).
    hydraJobs = import ./nix/hydra-jobs.nix {
      inherit systems;
      jobsFor = system: eachSystem.${system}.hydraJobs;
      aggregate = system: eachSystem.${system}.aggregate;
    };
  };
}
