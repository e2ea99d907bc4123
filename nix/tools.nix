# The checks' tools, built with crane at the versions of nix/tools.toml, the
# ones tests/run installs: the formatter from tools/alejandra, and cargo-audit,
# cargo-deny and deadnix from their crates.io releases (the published crate with
# its Cargo.lock, vendored by crane, as `cargo install --locked` builds it).
{
  pkgs,
  craneLib,
}: let
  pins = builtins.fromTOML (builtins.readFile ./tools.toml);

  fromCratesIo = name: extra: let
    pin = pins.${name};
  in
    craneLib.buildPackage ({
        pname = name;
        inherit (pin) version;
        src = craneLib.downloadCargoPackage {
          inherit name;
          inherit (pin) version checksum;
          source = "registry+https://github.com/rust-lang/crates.io-index";
        };
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
