# The checks' tools, built with crane at the versions of nix/tools.toml, the
# ones tests/run installs: the formatter from tools/alejandra, and cargo-audit,
# cargo-deny and deadnix from their crates.io releases (the published crate
# with its own Cargo.lock, as `cargo install --locked` builds it).
#
# Each release is a flake input (`crates`: a `.crate` tarball pinned by its
# narHash in flake.lock), not a fetch inside a derivation: crane reads the
# crate's Cargo.toml and Cargo.lock at evaluation, and from a derivation's
# output that is import-from-derivation, which makes evaluating one system's
# checks build on that system (`nix flake check` on x86_64-linux evaluates
# hydraJobs.*.aarch64-linux too, and Hydra evaluates them before any
# aarch64-linux builder is there). tests/nix/static.sh checks that each input
# is the release nix/tools.toml names.
{
  craneLib,
  pkgs,
  crates,
}: let
  pins = builtins.fromTOML (builtins.readFile ./tools.toml);

  fromCratesIo = name: extra:
    craneLib.buildPackage ({
        pname = name;
        inherit (pins.${name}) version;
        src = crates.${name}.outPath;
        strictDeps = true;
        doCheck = false;
        meta.mainProgram = name;
      }
      // extra);
in {
  alejandra = craneLib.buildPackage {
    src = craneLib.cleanCargoSource ../tools/alejandra;
    strictDeps = true;
    doCheck = false;
    meta.mainProgram = "alejandra";
  };
  deadnix = fromCratesIo "deadnix" {};
  cargo-deny = fromCratesIo "cargo-deny" {};
  # As nixpkgs builds it (pkgs/by-name/ca/cargo-audit): pkg-config, openssl, zlib.
  cargo-audit = fromCratesIo "cargo-audit" {
    nativeBuildInputs = [pkgs.pkg-config];
    buildInputs = [pkgs.openssl pkgs.zlib];
  };
}
