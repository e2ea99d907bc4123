# The flake's checks for one system (besides the VM tests, nixos/tests/):
# clippy, rustfmt, the test suite under nextest, rustdoc, cargo-audit against
# the pinned advisory-db, cargo-deny (deny.toml), and the Nix formatting and
# dead-code checks. The Rust checks reuse the package's dependency artifacts,
# so they compile hubbub but never the dependencies again. cargo-audit,
# cargo-deny, alejandra and deadnix are `tools` (nix/tools.nix): the versions of
# nix/tools.toml, which tests/run installs and runs with the same arguments.
{
  pkgs,
  craneLib,
  hubbub,
  advisory-db,
  tools,
}: let
  inherit (pkgs) lib;
  inherit (hubbub) cargoArtifacts commonArgs;

  # crane's cargoAudit and cargoDeny with our builds of the two tools.
  craneLibTools = craneLib.overrideScope (_final: _prev: {
    inherit (tools) cargo-audit cargo-deny;
  });

  # Every .nix file of the repository, for the formatter and deadnix.
  nixFiles = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.fileFilter (file: file.hasExt "nix") ../.;
  };
in {
  inherit hubbub;

  clippy = craneLib.cargoClippy (commonArgs
    // {
      inherit cargoArtifacts;
      # As tests/run: every workspace member, every target.
      cargoExtraArgs = "--locked --workspace";
      cargoClippyExtraArgs = "--all-targets -- --deny warnings";
    });

  fmt = craneLib.cargoFmt {
    inherit (commonArgs) src pname version;
  };

  # The integration tests start throwaway PostgreSQL, Redis and Mosquitto
  # servers on loopback inside the build sandbox. The test support
  # (tests/support/process.rs) finds the daemons on PATH, which
  # nativeCheckInputs provides; it reads no other variable. `kill` (tests/cli.rs)
  # comes from util-linux. Two suites need what a sandbox cannot give and stay
  # in tests/run: `browser` (Chromium), `e2e` (renders the HAProxy config
  # with nix-instantiate and runs fail2ban-regex) and `scale` (nix-instantiate,
  # HAProxy, dnsmasq).
  nextest = craneLib.cargoNextest (commonArgs
    // {
      inherit cargoArtifacts;
      partitions = 1;
      cargoNextestExtraArgs = "--workspace --no-fail-fast -E 'not (binary_id(hubbub::browser) | binary_id(hubbub::e2e) | binary_id(hubbub::scale))'";
      nativeCheckInputs = [
        pkgs.postgresql
        pkgs.redis
        pkgs.mosquitto
        pkgs.util-linux
      ];
      # tests/live.rs refuses a subscription with it (mosquitto_ctrl is in $out/bin).
      MOSQUITTO_DYNSEC_PLUGIN = "${pkgs.mosquitto.lib}/lib/mosquitto_dynamic_security.so";
    });

  doc = craneLib.cargoDoc (commonArgs
    // {
      inherit cargoArtifacts;
      cargoDocExtraArgs = "--no-deps --workspace";
    });

  # `cargo audit -n -d <advisory-db> --ignore yanked`; the ignore list is
  # .cargo/audit.toml (in commonArgs.src: crane keeps every audit.toml).
  audit = craneLibTools.cargoAudit {
    inherit (commonArgs) src pname version;
    inherit advisory-db;
  };

  # bans, licenses and sources (crane's default cargoDenyChecks) per deny.toml.
  deny = craneLibTools.cargoDeny {
    inherit (commonArgs) src pname version;
  };

  nix-format = pkgs.runCommand "hubbub-nix-format" {nativeBuildInputs = [tools.alejandra];} ''
    alejandra --check ${nixFiles}
    touch $out
  '';

  deadnix = pkgs.runCommand "hubbub-deadnix" {nativeBuildInputs = [tools.deadnix];} ''
    deadnix --fail ${nixFiles}
    touch $out
  '';
}
