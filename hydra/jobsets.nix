# The generated declarative jobsets of the hubbub Hydra project: `main` (taken
# as is from hydra/spec.json) plus one flake jobset per open pull request,
# from a `githubpulls` input (Hydra's GithubPulls plugin: a JSON object of
# the open pull requests keyed by number, as the GitHub API returns them).
#
# Hydra evaluates this file in the project's `.jobsets` jobset (docs/ci.md,
# "Pull requests") with the jobset's inputs as arguments, plus `declInput` and
# `projectName`; only `pulls` is needed. The result's `jobsets` derivation
# writes the specification Hydra applies; it needs no nixpkgs (the sandbox's
# /bin/sh writes the file), so the `.jobsets` evaluation stays cheap.
#
# Pull requests from forks are skipped: their code would run on the builders
# (sandboxed, but with the build machines' resources) without review. Set
# `buildForks = true` in the jobset's inputs (a boolean input) to build them.
{
  pulls,
  buildForks ? false,
  ...
}: let
  main = (builtins.fromJSON (builtins.readFile ./spec.json)).main;

  # "git+https://github.com/OWNER/REPO?ref=main" -> "git+https://github.com/OWNER/REPO"
  repository = builtins.head (builtins.match "([^?]+)[?].*" main.flake);

  open = builtins.fromJSON (builtins.readFile pulls);

  fromFork = pr: (pr.head.repo.full_name or "") != (pr.base.repo.full_name or "");

  wanted = builtins.filter (number: buildForks || !(fromFork open.${number})) (builtins.attrNames open);

  # A git+https flake reference (not github:) so the build gets a revCount,
  # i.e. a build number (nix/version.nix). GitHub serves every pull request's
  # head as refs/pull/<n>/head of the base repository.
  prJobset = number: let
    pr = open.${number};
  in {
    enabled = 1;
    hidden = false;
    description = "PR #${number}: ${pr.title or ""}";
    type = 1;
    flake = "${repository}?ref=refs/pull/${number}/head";
    checkinterval = 300;
    schedulingshares = 20;
    enableemail = false;
    emailoverride = "";
    keepnr = 1;
  };

  jobsets =
    {inherit main;}
    // builtins.listToAttrs (map (number: {
        name = "pr-${number}";
        value = prJobset number;
      })
      wanted);
in {
  jobsets = derivation {
    name = "hubbub-jobsets.json";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    # printf '%s' leaves the JSON's backslash escapes alone (echo may not).
    args = ["-c" "printf '%s' \"$json\" > \"$out\""];
    json = builtins.toJSON jobsets;
    preferLocalBuild = true;
    allowSubstitutes = false;
  };
}
