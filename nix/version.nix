# hubbub's name, version and build identity, with builtins only (no nixpkgs),
# so tests/nix/static.sh can evaluate it with nix-instantiate.
#
#   version  [package].version of Cargo.toml
#   build    the flake's revCount: an auto-incrementing build number on a git
#            checkout (Hydra, `nix build` in a clone); "0" when the source has
#            none (a tarball, a dirty tree)
#   commit   the flake's rev, else its dirtyRev ("<rev>-dirty"), else "dirty"
#
# `sourceInfo` is the flake's `self.sourceInfo` (only rev, dirtyRev and
# revCount are read).
# build and commit go into HUBBUB_BUILD and HUBBUB_COMMIT of the final package
# only (nix/package.nix), never into the dependency build.
{
  cargoToml,
  sourceInfo ? {},
}: let
  package = (builtins.fromTOML (builtins.readFile cargoToml)).package;
  build = toString (sourceInfo.revCount or 0);
  commit = sourceInfo.rev or sourceInfo.dirtyRev or "dirty";
in {
  pname = package.name;
  inherit (package) version;
  inherit build commit;
  # What `hubbub --version` prints (src/build_info.rs).
  long = "${package.version} (build ${build}, commit ${commit})";
}
