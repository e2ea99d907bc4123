# nixosModules of the flake: `default` is services.hubbub alone; the others are
# the stack profiles (nixos/profiles/), which read the inventory through
# hubbub.deployment (host name, inventory) and need agenix' module.
{
  default = ./hubbub.nix;
  hubbub = ./hubbub.nix;
  deployment = ./deployment.nix;
  app = ../profiles/app.nix;
  database = ../profiles/database.nix;
  cache = ../profiles/cache.nix;
  broker = ../profiles/broker.nix;
  proxy = ../profiles/proxy.nix;
  security = ../profiles/security.nix;
  monitoring = ../profiles/monitoring.nix;
  logging = ../profiles/logging.nix;
  secrets = ../profiles/secrets.nix;
  ci = ../profiles/ci.nix;
}
