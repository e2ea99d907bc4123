# hydraJobs from per-system job sets, with builtins only (tests/nix/static.sh
# evaluates it with stand-in derivations):
#
#   jobsFor   system -> { <job> = derivation; } (the jobs that exist on that system)
#   aggregate system -> [ derivation ] -> derivation (pkgs.releaseTools.aggregate)
#
# returns { <job>.<system> = derivation; release.<system> = aggregate; }, the
# layout Hydra and `nix flake check` expect. `release.<system>` succeeds only
# when every other job of that system does: it is what a deployment waits for.
{
  systems,
  jobsFor,
  aggregate,
}: let
  bySystem = builtins.listToAttrs (map (system: {
      name = system;
      value = jobsFor system;
    })
    systems);

  jobNames = builtins.attrNames (builtins.foldl' (acc: system: acc // bySystem.${system}) {} systems);

  # { <system> = drv; } for the systems that have the job.
  perJob = job:
    builtins.listToAttrs (map (system: {
      name = system;
      value = bySystem.${system}.${job};
    }) (builtins.filter (system: bySystem.${system} ? ${job}) systems));
in
  assert builtins.all (system: !(bySystem.${system} ? release)) systems
  || throw "nix/hydra-jobs.nix: `release` is the aggregate job; rename the job called release";
    builtins.listToAttrs (map (job: {
        name = job;
        value = perJob job;
      })
      jobNames)
    // {
      release = builtins.listToAttrs (map (system: {
          name = system;
          value = aggregate system (builtins.attrValues bySystem.${system});
        })
        systems);
    }
