# Pure-Nix checks (builtins only, no nixpkgs) run by tests/nix/static.sh:
#   nix-instantiate --eval --strict --json tests/nix/static-eval.nix \
#     --argstr cargoVersion 0.1.0 --argstr pullsFile /path/to/pulls.json
# Result: a list of { name; ok; detail; }, one per check; `generatedJobsets` of
# the hydra/jobsets.nix check is handed to the key check in static.sh.
{
  cargoVersion,
  pullsFile,
}: let
  root = ../..;
  check = name: ok: detail: {inherit name ok detail;};
  show = builtins.toJSON;

  # nix/version.nix: version from Cargo.toml, build number and commit from the
  # flake's source info (revCount, rev, dirtyRev), with their fallbacks.
  version = sourceInfo:
    import (root + "/nix/version.nix") {
      cargoToml = root + "/Cargo.toml";
      inherit sourceInfo;
    };
  rev = "0123456789abcdef0123456789abcdef01234567";
  clean = version {
    inherit rev;
    revCount = 42;
  };
  dirty = version {dirtyRev = "${rev}-dirty";};
  none = version {};

  # nix/hydra-jobs.nix with stand-in derivations: jobs transposed to
  # <job>.<system>, a job only on the systems that have it, and release.<system>
  # aggregating every job of its system.
  drv = name: {
    type = "derivation";
    inherit name;
  };
  hydraJobs = import (root + "/nix/hydra-jobs.nix") {
    systems = ["x86_64-linux" "aarch64-linux"];
    jobsFor = system:
      {
        hubbub = drv "hubbub-${system}";
        clippy = drv "clippy-${system}";
      }
      // (
        if system == "x86_64-linux"
        then {host-ci = drv "host-ci";}
        else {}
      );
    aggregate = system: constituents: {
      type = "derivation";
      name = "release-${system}";
      constituents = builtins.sort builtins.lessThan (map (c: c.name) constituents);
    };
  };
  hydraShape = builtins.mapAttrs (_: builtins.attrNames) hydraJobs;

  # hydra/jobsets.nix over a githubpulls-style input.
  generated = builtins.fromJSON (import (root + "/hydra/jobsets.nix") {pulls = pullsFile;}).jobsets.json;

  # flake.nix: inputs, the outputs' arguments, and the output names (the
  # names and nixosModules need no nixpkgs: the values stay unevaluated).
  flake = import (root + "/flake.nix");
  inputNames = builtins.attrNames flake.inputs;
  outputs = flake.outputs {
    self = {};
    nixpkgs = {};
    crane = {};
    agenix = {};
    advisory-db = {};
    crate-cargo-audit = {};
    crate-cargo-deny = {};
    crate-deadnix = {};
  };
  wantedOutputs = ["apps" "checks" "devShells" "formatter" "hydraJobs" "nixosConfigurations" "nixosModules" "overlays" "packages"];
  wantedModules = ["broker" "cache" "ci" "database" "default" "hubbub" "logging" "monitoring" "proxy" "secrets" "security"];
  missingModules = builtins.filter (name: !(outputs.nixosModules ? ${name})) wantedModules;

  # The inventory is pure data: every host has an address in the private
  # network's prefix, a unique one, and only known roles and services.
  inv = import (root + "/nixos/lib/inventory.nix");
  roles = ["visitors" "chat" "broadcast" "buffs"];
  services = ["proxy" "database" "cache" "broker" "monitoring" "logging" "ci"];
  prefix = builtins.head (builtins.match "([0-9]+\\.[0-9]+\\.[0-9]+)\\.0/24" inv.privateNetwork);
  badHosts = builtins.filter (n: let
    h = inv.hosts.${n};
  in
    builtins.match "${prefix}\\.[0-9]+" h.privateAddress
    == null
    || builtins.any (r: !(builtins.elem r roles)) h.roles
    || builtins.any (s: !(builtins.elem s services)) h.services) (builtins.attrNames inv.hosts);
  addresses = map (n: inv.hosts.${n}.privateAddress) (builtins.attrNames inv.hosts);
  uniqueAddresses =
    builtins.length addresses
    == builtins.length (builtins.attrNames (builtins.listToAttrs (map (a: {
        name = a;
        value = 1;
      })
      addresses)));
in {
  inherit generated;
  checks = [
    (check "nix/version.nix: version from Cargo.toml, build = revCount, commit = rev"
      (clean.pname == "hubbub" && clean.version == cargoVersion && clean.build == "42" && clean.commit == rev && clean.long == "${cargoVersion} (build 42, commit ${rev})")
      (show clean))
    (check "nix/version.nix: a dirty tree gives build 0 and the dirtyRev"
      (dirty.build == "0" && dirty.commit == "${rev}-dirty")
      (show dirty))
    (check "nix/version.nix: no source info gives build 0 and commit \"dirty\""
      (none.build == "0" && none.commit == "dirty")
      (show none))
    (check "nix/hydra-jobs.nix: hydraJobs.<job>.<system>, a job only where it exists"
      (hydraShape
        == {
          clippy = ["aarch64-linux" "x86_64-linux"];
          host-ci = ["x86_64-linux"];
          hubbub = ["aarch64-linux" "x86_64-linux"];
          release = ["aarch64-linux" "x86_64-linux"];
        })
      (show hydraShape))
    (check "nix/hydra-jobs.nix: release.<system> aggregates every job of that system"
      (hydraJobs.release.x86_64-linux.constituents
        == ["clippy-x86_64-linux" "host-ci" "hubbub-x86_64-linux"]
        && hydraJobs.release.aarch64-linux.constituents == ["clippy-aarch64-linux" "hubbub-aarch64-linux"])
      (show (builtins.mapAttrs (_: r: r.constituents) hydraJobs.release)))
    (check "hydra/jobsets.nix: main from hydra/spec.json plus one flake jobset per same-repository pull request"
      (builtins.attrNames generated
        == ["main" "pr-12"]
        && generated.main == (builtins.fromJSON (builtins.readFile (root + "/hydra/spec.json"))).main
        && generated.pr-12.type == 1
        && builtins.match "git\\+https://[^?]+[?]ref=refs/pull/12/head" generated.pr-12.flake != null)
      (show generated))
    (check "flake.nix: inputs are exactly nixpkgs, crane, agenix, advisory-db and the tools' crates"
      (inputNames == ["advisory-db" "agenix" "crane" "crate-cargo-audit" "crate-cargo-deny" "crate-deadnix" "nixpkgs"])
      (show inputNames))
    (check "flake.nix: outputs takes self and every input"
      (builtins.attrNames (builtins.functionArgs flake.outputs) == builtins.sort builtins.lessThan (inputNames ++ ["self"]))
      (show (builtins.functionArgs flake.outputs)))
    (check "flake.nix: agenix follows nixpkgs and drops darwin and home-manager"
      (flake.inputs.agenix.inputs
        == {
          nixpkgs.follows = "nixpkgs";
          darwin.follows = "";
          home-manager.follows = "";
        }
        && flake.inputs.advisory-db.flake == false)
      (show flake.inputs))
    (check "flake.nix: outputs ${builtins.concatStringsSep ", " wantedOutputs}"
      (builtins.all (name: outputs ? ${name}) wantedOutputs && builtins.attrNames outputs.overlays == ["default"])
      (show (builtins.attrNames outputs)))
    (check "flake.nix: nixosModules has services.hubbub and every profile"
      (missingModules == [])
      "missing: ${show missingModules}")
    (check "inventory: addresses, roles and services are consistent"
      (badHosts == [] && uniqueAddresses)
      (show {inherit badHosts uniqueAddresses;}))
  ];
}
