# A host of the AWS deployment (nixos/hosts/cloud.nix; imported with
# nixpkgs' virtualisation/amazon-image.nix by nixos/hosts/default.nix for the
# cloud-* configurations). Booted from the NixOS image of its configuration
# (`system.build.images.amazon`); nothing is evaluated at boot.
#
#   - amazon-init is off: user data is JSON read by the units below, never a
#     Nix expression to switch to (as srvos does).
#   - Secrets: the host's age identity (a SecureString in SSM Parameter Store,
#     /hubbub/<host>/age-identity, readable by this instance's role only) is
#     fetched once through the instance role into /var/lib/hubbub-identity,
#     then agenix installs the secrets as it does at activation. No secret is
#     in the image, the user data or the OpenTofu state. A fixed host reboots
#     once after the first fetch so that every unit starts with its secrets;
#     app instances order their units after the fetch instead.
#   - App instances (the elastic host `app`): identity (host name from
#     /etc/ec2-metadata/hostname, instance id and address from IMDSv2), roles
#     listening on the instance's address, registration in Cloud Map once every
#     role is ready, and on termination (the autoscaling lifecycle hook, or a
#     shutdown) deregistration, a drain while HAProxy's DNS answers forget the
#     address, SIGTERM to the roles, then the hook's completion. An instance
#     whose roles do not become ready (or that cannot register) withdraws
#     what it registered, marks itself unhealthy and is replaced. Instances
#     killed before they could deregister leave records behind: every
#     instance sweeps, every few minutes, the registrations of instances the
#     group no longer has.
{
  config,
  lib,
  pkgs,
  ...
}: let
  view = config.hubbub.deployment.view;
  inherit (view) inventory;
  cfg = config.hubbub.cloud;
  elastic = view.self ? elastic;
  roles = view.self.roles;
  ports = inventory.ports;

  identityDir = "/var/lib/hubbub-identity";
  identityFile = "${identityDir}/age.key";
  instanceDir = "/run/hubbub-instance";
  userData = "/etc/ec2-metadata/user-data";

  # Seconds between deregistering and stopping the roles: Cloud Map's change
  # reaching Route 53 (within 60 s), the record's TTL in the VPC resolver
  # (10 s), HAProxy keeping an address it no longer sees (holdObsolete) and its
  # resolution interval (1 s), plus a margin.
  holdSeconds = lib.toInt (lib.removeSuffix "s" inventory.discovery.holdObsolete);
  drainSeconds = 60 + 10 + holdSeconds + 1 + 4;

  roleUnits = map (role: "hubbub-${role}.service") roles;

  # IMDSv2: a session token per call (tokens expire; the lifecycle loop runs
  # for the instance's whole life).
  imds = ''
    imds() {
      local token
      token=$(curl -sf --retry 10 --retry-connrefused --retry-delay 1 -X PUT \
        -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' http://169.254.169.254/latest/api/token) || return 1
      curl -sf --retry 5 --retry-delay 1 -H "X-aws-ec2-metadata-token: $token" "http://169.254.169.254/latest/$1"
    }
  '';
  setting = key: "jq -er ${lib.escapeShellArg key} ${userData}";

  # agenix' own installation steps (what it runs at activation, and in its
  # sysusers unit), run again once the identity is there.
  # With systemd-sysusers or userborn, agenix installs from its own unit
  # instead of activation scripts (modules/age.nix at b027ee29).
  agenixInstall =
    if config.systemd.services ? agenix-install-secrets
    then "systemctl restart agenix-install-secrets.service"
    else
      pkgs.writeShellScript "hubbub-agenix-install" (lib.concatLines (map
        (step: config.system.activationScripts.${step}.text)
        ["agenixNewGeneration" "agenixInstall" "agenixChown"]));

  fetchIdentity = pkgs.writeShellScript "hubbub-fetch-identity" ''
    set -euo pipefail
    if [ -s ${identityFile} ]; then exit 0; fi
    ${imds}
    region=$(imds meta-data/placement/region)
    parameter=${lib.escapeShellArg "/hubbub/${view.name}/age-identity"}
    install -d -m 0700 ${identityDir}
    umask 077
    # The value goes from the API to the file, never to the command line or the journal.
    aws ssm get-parameter --region "$region" --name "$parameter" --with-decryption \
      --query Parameter.Value --output text >${identityFile}.tmp
    [ -s ${identityFile}.tmp ] || { echo "empty identity in $parameter" >&2; exit 1; }
    mv ${identityFile}.tmp ${identityFile}
    ${agenixInstall}
    ${lib.optionalString (!elastic) ''
      echo "identity installed; rebooting once so that every unit starts with its secrets"
      systemctl --no-block reboot
    ''}
  '';

  instanceIdentity = pkgs.writeShellScript "hubbub-instance-identity" ''
    set -euo pipefail
    ${imds}
    instance_id=$(imds meta-data/instance-id)
    address=$(imds meta-data/local-ipv4)
    # e.g. ip-10-42-0-150.eu-central-1.compute.internal -> ip-10-42-0-150
    hostname=$(cut -d. -f1 /etc/ec2-metadata/hostname)
    hostnamectl --transient set-hostname "$hostname"
    install -d -m 0755 ${instanceDir}
    printf 'INSTANCE_ID=%s\nADDRESS=%s\n' "$instance_id" "$address" >${instanceDir}/identity.env
    ${lib.concatMapStrings (role: ''
        printf 'HUBBUB_HTTP__LISTEN=%s:%s\nHUBBUB_ADMIN__LISTEN=%s:%s\n' \
          "$address" ${toString ports.public.${role}} "$address" ${toString ports.admin.${role}} >${instanceDir}/${role}.env
      '')
      roles}
  '';

  # `deregister_all`: withdraws this instance from every role's service.
  # Idempotent: deregistering what is not registered is an error it ignores.
  deregisterAll = ''
    deregister_all() {
      ${lib.concatMapStrings (role: ''
        aws servicediscovery deregister-instance --region "$region" \
          --service-id "$(${setting ".discovery.${role}"})" --instance-id "$INSTANCE_ID" >/dev/null 2>&1 ||
          echo "deregistering from ${role} failed (or it was not registered)" >&2
      '')
      roles}
    }
  '';

  register = pkgs.writeShellScript "hubbub-register" ''
    set -euo pipefail
    . ${instanceDir}/identity.env
    region=$(${setting ".region"})
    # A registration that fails half-way withdraws the roles registered so far:
    # the unit fails, the instance is replaced, and nothing stays in DNS.
    ${deregisterAll}
    trap '[ "$?" = 0 ] || deregister_all' EXIT
    # HAProxy sends traffic as soon as the address is in DNS: only when ready.
    ${lib.concatMapStrings (role: ''
        for i in $(seq 1 120); do
          curl -sf -o /dev/null "http://$ADDRESS:${toString ports.public.${role}}/readyz" && break
          [ "$i" = 120 ] && { echo "${role} not ready after 120 s" >&2; exit 1; }
          sleep 1
        done
      '')
      roles}
    ${lib.concatMapStrings (role: ''
        aws servicediscovery register-instance --region "$region" \
          --service-id "$(${setting ".discovery.${role}"})" \
          --instance-id "$INSTANCE_ID" --attributes "AWS_INSTANCE_IPV4=$ADDRESS" >/dev/null
      '')
      roles}
    echo "registered $ADDRESS as ${lib.concatStringsSep ", " roles}"
  '';

  deregister = pkgs.writeShellScript "hubbub-deregister" ''
    set -uo pipefail
    . ${instanceDir}/identity.env
    region=$(${setting ".region"})
    ${deregisterAll}
    deregister_all
    echo "deregistered; draining for ${toString drainSeconds} s"
    sleep ${toString drainSeconds}
  '';

  # Polls the instance's target lifecycle state; on termination: drain, stop
  # the roles (SIGTERM), then let the autoscaling group go on.
  lifecycle = pkgs.writeShellScript "hubbub-lifecycle" ''
    set -uo pipefail
    ${imds}
    . ${instanceDir}/identity.env
    while [ "$(imds meta-data/autoscaling/target-lifecycle-state || echo unknown)" != Terminated ]; do
      sleep 5
    done
    echo "terminating: draining"
    # Deregisters and drains when the instance was registered ...
    systemctl stop hubbub-discovery.service
    # ... and withdraws anything left when it was not (a failed registration).
    region=$(${setting ".region"})
    ${deregisterAll}
    deregister_all
    systemctl stop ${lib.concatStringsSep " " roleUnits}
    aws autoscaling complete-lifecycle-action --region "$(${setting ".region"})" \
      --lifecycle-action-result CONTINUE --instance-id "$INSTANCE_ID" \
      --lifecycle-hook-name "$(${setting ".lifecycleHook"})" \
      --auto-scaling-group-name "$(${setting ".autoScalingGroup"})"
  '';

  # An instance whose roles never become ready is no use: the group replaces it.
  unhealthy = pkgs.writeShellScript "hubbub-unhealthy" ''
    set -euo pipefail
    . ${instanceDir}/identity.env
    echo "registration failed; marking $INSTANCE_ID unhealthy so the group replaces it" >&2
    aws autoscaling set-instance-health --region "$(${setting ".region"})" \
      --instance-id "$INSTANCE_ID" --health-status Unhealthy --no-should-respect-grace-period
  '';

  # Registrations of instances the group no longer has: killed (hardware,
  # a hung kernel, the hook's heartbeat timing out) before they deregistered.
  # Cloud Map never expires them; they would hold HAProxy slots and crowd the
  # 8 addresses a MULTIVALUE answer carries. The registrations are listed
  # before the group, and an instance is in its group from launch, before it
  # registers: a live instance is never swept.
  sweep = pkgs.writeShellScript "hubbub-discovery-sweep" ''
    set -euo pipefail
    . ${instanceDir}/identity.env
    region=$(${setting ".region"})
    group=$(${setting ".autoScalingGroup"})
    ${lib.concatMapStrings (role: ''
        registered_${role}=$(aws servicediscovery list-instances --region "$region" \
          --service-id "$(${setting ".discovery.${role}"})" --query 'Instances[].Id' --output json | jq -r '.[]')
      '')
      roles}
    members=$(aws autoscaling describe-auto-scaling-groups --region "$region" --auto-scaling-group-names "$group" \
      --query 'AutoScalingGroups[0].Instances[].InstanceId' --output json | jq -r '.[]')
    # A wrong or empty answer must not sweep everything: it has to list this instance.
    grep -qxF "$INSTANCE_ID" <<<"$members" || { echo "$INSTANCE_ID is not in $group's answer; not sweeping" >&2; exit 1; }
    ${lib.concatMapStrings (role: ''
        for id in $registered_${role}; do
          grep -qxF "$id" <<<"$members" && continue
          if aws servicediscovery deregister-instance --region "$region" \
            --service-id "$(${setting ".discovery.${role}"})" --instance-id "$id" >/dev/null; then
            echo "removed the ${role} registration of $id, which $group no longer has"
          fi
        done
      '')
      roles}
  '';

  tools = [pkgs.awscli2 pkgs.curl pkgs.jq pkgs.coreutils pkgs.gnugrep pkgs.systemd];
in {
  imports = [../modules/deployment.nix];

  options.hubbub.cloud.enable =
    lib.mkEnableOption "the AWS specifics of this host (identity, secrets, discovery)"
    // {
      default = (inventory.provider or null) == "aws";
      defaultText = lib.literalExpression ''inventory.provider == "aws"'';
    };

  config = lib.mkIf cfg.enable (lib.mkMerge [
    {
      assertions = [
        {
          assertion = inventory.discovery.source == "aws-cloud-map";
          message = "hubbub.cloud: the AWS inventory must discover app instances through Cloud Map (nixos/hosts/cloud.nix).";
        }
      ];

      virtualisation.amazon-init.enable = false;
      # Fixed hosts keep their inventory name; app instances take theirs from
      # the metadata at boot (hubbub-instance-identity).
      networking.hostName =
        if elastic
        then ""
        else view.name;

      age.identityPaths = [identityFile];

      systemd.services.hubbub-fetch-identity = {
        description = "Fetch this host's age identity from SSM Parameter Store and install the secrets";
        wantedBy = ["multi-user.target"];
        wants = ["network-online.target"];
        after = ["network-online.target"];
        path = tools ++ [pkgs.mount];
        restartIfChanged = false;
        # A throttled or briefly unreachable SSM endpoint at boot is retried
        # (AWS CLI standard retry mode), not fatal.
        environment = {
          AWS_RETRY_MODE = "standard";
          AWS_MAX_ATTEMPTS = "10";
        };
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
          ExecStart = fetchIdentity;
        };
      };
    }

    (lib.mkIf elastic {
      systemd.timers.hubbub-discovery-sweep = {
        wantedBy = ["timers.target"];
        timerConfig = {
          OnBootSec = "10min";
          OnUnitActiveSec = "10min";
          # The instances of the group do not all ask at once.
          RandomizedDelaySec = "5min";
        };
      };
      systemd.services =
        {
          hubbub-instance-identity = {
            description = "Instance identity from the EC2 metadata: host name, instance id, address";
            wantedBy = ["multi-user.target"];
            wants = ["network-online.target"];
            after = ["network-online.target" "fetch-ec2-metadata.service"];
            path = tools;
            restartIfChanged = false;
            serviceConfig = {
              Type = "oneshot";
              RemainAfterExit = true;
              ExecStart = instanceIdentity;
            };
          };

          # Started after the roles, so stopped before them: at shutdown the
          # instance deregisters and drains before its roles get SIGTERM.
          # `wants`, not `requires`: when a role cannot start (no identity,
          # no database), this unit still runs, finds the role not ready and
          # fails, and the instance is replaced instead of idling in the group.
          hubbub-discovery = {
            description = "Register this instance's roles in Cloud Map while they serve";
            wantedBy = ["multi-user.target"];
            onFailure = ["hubbub-unhealthy.service"];
            requires = ["hubbub-instance-identity.service"];
            wants = roleUnits;
            after = ["hubbub-instance-identity.service"] ++ roleUnits;
            path = tools;
            restartIfChanged = false;
            serviceConfig = {
              Type = "oneshot";
              RemainAfterExit = true;
              ExecStart = register;
              ExecStop = deregister;
              TimeoutStartSec = "10min";
              TimeoutStopSec = "${toString (drainSeconds + 60)}s";
            };
          };

          hubbub-unhealthy = {
            description = "Have the autoscaling group replace this instance";
            path = tools;
            serviceConfig = {
              Type = "oneshot";
              ExecStart = unhealthy;
            };
          };

          hubbub-discovery-sweep = {
            description = "Remove the Cloud Map registrations of instances the group no longer has";
            requires = ["hubbub-instance-identity.service"];
            after = ["hubbub-instance-identity.service" "hubbub-discovery.service"];
            path = tools;
            serviceConfig = {
              Type = "oneshot";
              ExecStart = sweep;
            };
          };

          hubbub-lifecycle = {
            description = "Drain when the autoscaling group terminates this instance";
            wantedBy = ["multi-user.target"];
            after = ["hubbub-discovery.service"];
            path = tools;
            serviceConfig = {
              Type = "simple";
              ExecStart = lifecycle;
              Restart = "on-failure";
              RestartSec = "5s";
            };
          };

          hubbub-migrate = {
            requires = ["hubbub-fetch-identity.service"];
            after = ["hubbub-fetch-identity.service"];
          };
          systemd-journal-upload = lib.mkIf config.services.journald.upload.enable {
            requires = ["hubbub-fetch-identity.service"];
            after = ["hubbub-fetch-identity.service"];
          };
        }
        // lib.genAttrs (map (role: "hubbub-${role}") roles) (unit: {
          requires = ["hubbub-fetch-identity.service" "hubbub-instance-identity.service"];
          after = ["hubbub-fetch-identity.service" "hubbub-instance-identity.service"];
          # The instance's address, known at boot only; overrides the
          # module's Environment= (EnvironmentFile= wins in systemd).
          serviceConfig.EnvironmentFile = "${instanceDir}/${lib.removePrefix "hubbub-" unit}.env";
        });
    })
  ]);
}
