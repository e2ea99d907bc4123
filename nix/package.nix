# hubbub built with crane, as a callPackage-able function: the flake's
# packages, its overlay and nixosModules.default share this one definition.
#
#   pkgs.callPackage ./nix/package.nix {
#     craneLib = crane.mkLib pkgs;
#     inherit (self) sourceInfo;
#   }
#
# The dependencies are built once (buildDepsOnly, from a source where every
# crate is a dummy), then the package reuses those artifacts: a change under
# src/ rebuilds hubbub only. The build number and commit (nix/version.nix) are
# set on the final package alone, so a new commit never rebuilds the
# dependencies. The result carries `cargoArtifacts` and `commonArgs` in
# passthru for the checks (nix/checks.nix).
{
  lib,
  craneLib,
  sourceInfo ? {},
}: let
  info = import ./version.nix {
    cargoToml = ../Cargo.toml;
    inherit sourceInfo;
  };

  # Cargo sources (Cargo.toml/Cargo.lock, *.rs, *.toml) plus every non-Rust file
  # the crate embeds: assets/ (include_str! in src/http/assets.rs, and the page
  # bodies in assets/pages/ in the roles) and the migration crate. tools/ is a separate cargo
  # project (excluded from the workspace) and stays out, as does a local
  # target/ (a `path:` flake reference copies untracked files too).
  src = lib.fileset.toSource {
    root = ../.;
    fileset =
      lib.fileset.difference (lib.fileset.unions [
        (craneLib.fileset.commonCargoSources ../.)
        ../assets
        ../migration
      ]) (lib.fileset.unions [
        (lib.fileset.maybeMissing ../tools)
        (lib.fileset.maybeMissing ../target)
      ]);
  };

  commonArgs = {
    inherit src;
    inherit (info) pname version;
    strictDeps = true;
  };

  cargoArtifacts = craneLib.buildDepsOnly commonArgs;
in
  craneLib.buildPackage (commonArgs
    // {
      inherit cargoArtifacts;
      # The test suite needs PostgreSQL, Redis and Mosquitto: it runs in the
      # `nextest` check (nix/checks.nix), not here.
      doCheck = false;
      env = {
        HUBBUB_BUILD = info.build;
        HUBBUB_COMMIT = info.commit;
      };
      passthru = {
        inherit cargoArtifacts commonArgs info;
      };
      meta = {
        description = "Live-audience services: visitor counter, chat with SSE broadcast, and buffs";
        license = lib.licenses.mit;
        mainProgram = "hubbub";
        platforms = lib.platforms.linux;
      };
    })
