# The CI host (`nixosModules.ci`, imported by hosts whose inventory entry lists
# the "ci" service): Hydra with its PostgreSQL, building the flake's hydraJobs
# on this machine (kvm and nixos-test features, for the VM tests) and on any
# extra builders; a binary cache (harmonia) serving this host's store, every
# path signed on the fly with a key from agenix; nginx with ACME in front of
# both. Pipeline and operations: docs/ci.md.
{
  config,
  lib,
  options,
  ...
}: let
  view = config.hubbub.deployment.view;
  inventory = view.inventory;
  cfg = config.hubbub.ci;

  hydraPort = 3000;
  cachePort = 5000;

  # harmonia's options moved from services.harmonia.* to services.harmonia.cache.*
  # (the flat names remain as renamed aliases that warn). Set whichever this
  # nixpkgs declares, so the configuration evaluates without warnings on both.
  harmoniaCache = {
    enable = true;
    # Read by systemd (LoadCredential=) as root: the key stays root-only in /run/agenix.
    signKeyPaths = [config.age.secrets.binary-cache-key.path];
    settings = {
      bind = "127.0.0.1:${toString cachePort}";
      # cache.nixos.org has 40: clients prefer the official cache for what both have.
      priority = 50;
    };
  };
  nestedHarmonia = options.services.harmonia ? cache;
in {
  imports = [
    ../modules/deployment.nix
    ./secrets.nix
  ];

  options.hubbub.ci = {
    enable =
      lib.mkEnableOption "Hydra, the binary cache and the build machines of the CI host"
      // {
        default = view.runs "ci";
        defaultText = lib.literalExpression ''the inventory lists "ci" for this host'';
      };

    hydraDomain = lib.mkOption {
      type = lib.types.str;
      default = "ci.${inventory.domain}";
      defaultText = lib.literalExpression ''"ci.''${inventory.domain}"'';
      description = "Public name of the Hydra web interface (HTTPS, certificate from ACME).";
    };

    cacheDomain = lib.mkOption {
      type = lib.types.str;
      default = "cache.${inventory.domain}";
      defaultText = lib.literalExpression ''"cache.''${inventory.domain}"'';
      description = ''
        Public name of the binary cache. Clients add `https://<cacheDomain>` to
        nix.settings.substituters and the public key (secrets/pki/binary-cache-key.pub)
        to nix.settings.trusted-public-keys.
      '';
    };

    localSystems = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = ["x86_64-linux"];
      description = "Systems this host builds for itself (the hydraJobs of other systems need `remoteBuilders`).";
    };

    localMaxJobs = lib.mkOption {
      type = lib.types.ints.positive;
      default = 4;
      description = "Builds Hydra runs at once on this host.";
    };

    remoteBuilders = lib.mkOption {
      type = lib.types.listOf lib.types.attrs;
      default = [];
      example = lib.literalExpression ''
        [
          {
            hostName = "arm-builder.example.org";
            protocol = "ssh-ng";
            sshUser = "hydra-builder";
            sshKey = config.age.secrets.hydra-builder-ssh-key.path;
            systems = ["aarch64-linux"];
            supportedFeatures = ["kvm" "nixos-test" "big-parallel" "benchmark"];
            maxJobs = 8;
          }
        ]
      '';
      description = ''
        More build machines (entries of nix.buildMachines), e.g. an aarch64-linux
        builder with /dev/kvm for that system's VM tests. Their SSH key must be an
        agenix secret readable by hydra-queue-runner, never a store path.
      '';
    };

    githubAuthorizationFile = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "/run/agenix/hydra-github-authorization";
      description = ''
        A file outside the store holding a `<github_authorization>` block
        (`example-org = token ghp_...`), included into hydra.conf: the GitHub
        API calls of the `githubpulls` input get a higher rate limit and can
        reach private repositories. Must be readable by the hydra group.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    services.hydra = {
      enable = true;
      hydraURL = "https://${cfg.hydraDomain}";
      notificationSender = "hydra@${inventory.domain}";
      listenHost = "127.0.0.1";
      port = hydraPort;
      # Fetch what cache.nixos.org has instead of rebuilding nixpkgs.
      useSubstitutes = true;
      extraConfig = lib.optionalString (cfg.githubAuthorizationFile != null) ''
        Include ${cfg.githubAuthorizationFile}
      '';
    };

    # Hydra's database: the module creates the hydra role and database on this
    # PostgreSQL (hydra-init) and authenticates its users by ident over the socket.
    services.postgresql.enable = true;

    # Build machines: this host first. hostName "localhost" with protocol null is
    # the local store (no SSH); Hydra's queue runner reads /etc/nix/machines.
    nix.buildMachines =
      [
        {
          hostName = "localhost";
          protocol = null;
          systems = cfg.localSystems;
          supportedFeatures = ["kvm" "nixos-test" "big-parallel" "benchmark"];
          maxJobs = cfg.localMaxJobs;
        }
      ]
      ++ cfg.remoteBuilders;

    nix.settings = {
      # The VM tests (`vm-allinone`, `vm-cluster`) require kvm and nixos-test.
      system-features = ["kvm" "nixos-test" "big-parallel" "benchmark"];
      # Collect garbage when the store's disk runs low; Hydra's GC roots keep
      # the builds of the last `keepnr` evaluations of each jobset.
      min-free = 20 * 1024 * 1024 * 1024;
      max-free = 100 * 1024 * 1024 * 1024;
    };

    services.harmonia =
      if nestedHarmonia
      then {cache = harmoniaCache;}
      else harmoniaCache;

    services.nginx = {
      enable = true;
      recommendedTlsSettings = true;
      recommendedProxySettings = true;
      recommendedOptimisation = true;
      virtualHosts.${cfg.hydraDomain} = {
        enableACME = true;
        forceSSL = true;
        locations."/".proxyPass = "http://127.0.0.1:${toString hydraPort}";
      };
      virtualHosts.${cfg.cacheDomain} = {
        enableACME = true;
        forceSSL = true;
        locations."/" = {
          proxyPass = "http://127.0.0.1:${toString cachePort}";
          # NARs are large and streamed: do not buffer them to disk.
          extraConfig = ''
            proxy_buffering off;
          '';
        };
      };
    };

    security.acme = {
      acceptTerms = true;
      defaults.email = inventory.acmeEmail;
    };

    # 80 (ACME, redirect) and 443 are the public ports every host may open
    # (nixos/profiles/security.nix).
    networking.firewall.allowedTCPPorts = [80 443];
  };
}
