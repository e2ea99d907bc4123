# The AWS deployment of the whole topology as an OpenTofu configuration
# (`main.tf.json`: JSON syntax, rendered from the inventory; builtins only).
#
#   builtins.toJSON (import ./opentofu.nix { inventory = import ./inventory.nix; })
#
# Arguments: inventory (the cluster inventory; its `cloud` section and
# nixos/hosts/cloud.nix give the AWS shape); awsProviderVersion: the exact
# hashicorp/aws version to require (the flake passes the one nixpkgs builds,
# so `tofu init` fails if they drift), or null for any.
#
# What it provisions, all from the inventory so that addresses, ports and
# firewall rules have one source:
#   - a VPC (cloud.vpcNetwork) with an internet gateway; the fixed hosts' subnet
#     (cloud.hostSubnet) and the app subnets (cloud.appSubnets), all inside
#     privateNetwork, each instance with a public IPv4 address for egress;
#   - one security group per host whose ingress rules are exactly the host's
#     nftables rules (nixos/profiles/security.nix): topology.firewallPorts from
#     privateNetwork, topology.publicPorts from anywhere; all egress allowed;
#   - the NixOS images (variable `images`: host -> the image file built by
#     `nix build .#cloud-images`) uploaded to S3, imported as snapshots (the
#     `vmimport` service role) and registered as AMIs;
#   - the fixed hosts (lb, data, monitor, ci) as instances at their inventory
#     addresses, booting their own image (lb with an Elastic IP); a new image
#     does not replace them (ignore_changes: they are updated with
#     `nixos-rebuild switch`, and data holds the database);
#   - the app tier: a launch template (the cloud-app image, IMDSv2 only, user
#     data = JSON, never Nix), an autoscaling group over the app subnets with a
#     termination lifecycle hook (instances drain before they go) and
#     rolling instance refresh, and a target-tracking policy on average CPU;
#   - discovery: a Cloud Map private DNS namespace (discovery.domain) with one
#     MULTIVALUE A-record service per role, where app instances register;
#   - an instance role per host: read its age identity from SSM Parameter
#     Store (/hubbub/<host>/age-identity, a SecureString created by hand, so
#     no secret is in the image or in the OpenTofu state); the app role also
#     registers in Cloud Map and completes its lifecycle actions.
{
  inventory,
  awsProviderVersion ? null,
}: let
  cloudInventory = import ../hosts/cloud.nix inventory;
  topology = import ./topology.nix cloudInventory;
  inherit (inventory) cloud;
  inherit (cloudInventory) hosts privateNetwork;
  roles = ["visitors" "chat" "broadcast" "buffs"];

  hostNames = builtins.attrNames hosts;
  fixedHosts = builtins.filter (name: !(hosts.${name} ? elastic)) hostNames;
  appGroup = "app";
  hookName = "hubbub-app-drain";
  groupName = "hubbub-app";

  ref = expression: "\${${expression}}";
  listToAttrs' = f: list: builtins.listToAttrs (map f list);
  toJSON = builtins.toJSON;

  tags = name: {Name = "hubbub-${name}";};

  appSubnetIds = builtins.genList (i: "app_${toString i}") (builtins.length cloud.appSubnets);

  # --- security groups: exactly the nftables rules ---------------------------
  ingress = host: let
    rule = scope: cidr: port: {
      name = "${host}_${scope}_${toString port}";
      value = {
        security_group_id = ref "aws_security_group.${host}.id";
        ip_protocol = "tcp";
        from_port = port;
        to_port = port;
        cidr_ipv4 = cidr;
        description = "${scope} ${toString port}";
      };
    };
  in
    map (rule "private" privateNetwork) topology.firewallPorts.${host}
    ++ map (rule "public" "0.0.0.0/0") topology.publicPorts.${host};

  # --- instance roles ------------------------------------------------------------
  assumeEc2 = toJSON {
    Version = "2012-10-17";
    Statement = [
      {
        Effect = "Allow";
        Principal.Service = "ec2.amazonaws.com";
        Action = "sts:AssumeRole";
      }
    ];
  };
  identityParameter = host: "/hubbub/${host}/age-identity";
  parameterArn = host: "arn:aws:ssm:${cloud.region}:${ref "data.aws_caller_identity.current.account_id"}:parameter${identityParameter host}";
  hostPolicy = host:
    toJSON {
      Version = "2012-10-17";
      Statement =
        [
          {
            Sid = "AgeIdentity";
            Effect = "Allow";
            Action = ["ssm:GetParameter"];
            Resource = [(parameterArn host)];
          }
        ]
        ++ (
          if host == appGroup
          then [
            {
              # Register and deregister itself; list the registrations so
              # that hubbub-discovery-sweep can remove those of instances the
              # group no longer has (killed before they could deregister).
              Sid = "Discovery";
              Effect = "Allow";
              Action = ["servicediscovery:RegisterInstance" "servicediscovery:DeregisterInstance" "servicediscovery:ListInstances"];
              Resource = map (role: ref "aws_service_discovery_service.${role}.arn") roles;
            }
            {
              # Cloud Map writes the records into the namespace's hosted zone
              # with the caller's permissions (Cloud Map's API permissions
              # reference). An IAM resource is an ARN: `hosted_zone` is the
              # zone's id only.
              Sid = "DiscoveryRecords";
              Effect = "Allow";
              Action = ["route53:ChangeResourceRecordSets" "route53:GetHostedZone"];
              Resource = ["arn:aws:route53:::hostedzone/${ref "aws_service_discovery_private_dns_namespace.hubbub.hosted_zone"}"];
            }
            {
              # No resource-level permissions for these two (list and describe calls).
              Sid = "DiscoveryLookups";
              Effect = "Allow";
              Action = ["route53:ListHostedZonesByName" "autoscaling:DescribeAutoScalingGroups"];
              Resource = ["*"];
            }
            {
              Sid = "Drain";
              Effect = "Allow";
              Action = ["autoscaling:CompleteLifecycleAction" "autoscaling:RecordLifecycleActionHeartbeat" "autoscaling:SetInstanceHealth"];
              Resource = ["arn:aws:autoscaling:${cloud.region}:${ref "data.aws_caller_identity.current.account_id"}:autoScalingGroup:*:autoScalingGroupName/${groupName}"];
            }
          ]
          else []
        );
    };

  # --- images --------------------------------------------------------------------
  image = host: "var.images[\"${host}\"]";
  vmimportTrust = toJSON {
    Version = "2012-10-17";
    Statement = [
      {
        Effect = "Allow";
        Principal.Service = "vmie.amazonaws.com";
        Action = "sts:AssumeRole";
        Condition.StringEquals."sts:ExternalId" = "vmimport";
      }
    ];
  };
  vmimportPolicy = toJSON {
    Version = "2012-10-17";
    Statement = [
      {
        Effect = "Allow";
        Action = ["s3:GetBucketLocation" "s3:GetObject" "s3:ListBucket"];
        Resource = [(ref "aws_s3_bucket.images.arn") "${ref "aws_s3_bucket.images.arn"}/*"];
      }
      {
        Effect = "Allow";
        Action = ["ec2:ModifySnapshotAttribute" "ec2:CopySnapshot" "ec2:RegisterImage" "ec2:Describe*"];
        Resource = "*";
      }
    ];
  };

  rootVolume = host: {
    volume_size = cloud.diskGiB.${host};
    volume_type = "gp3";
    encrypted = true;
  };
  imdsV2 = {
    http_endpoint = "enabled";
    http_tokens = "required";
    http_put_response_hop_limit = 1;
  };

  # What an app instance reads from /etc/ec2-metadata/user-data (JSON, never
  # evaluated): where to register and how to finish its lifecycle hook.
  appUserData = {
    region = cloud.region;
    identityParameter = identityParameter appGroup;
    discovery =
      listToAttrs' (role: {
        name = role;
        value = ref "aws_service_discovery_service.${role}.id";
      })
      roles;
    autoScalingGroup = groupName;
    lifecycleHook = hookName;
  };
in
  assert cloud.app.maxSize
  <= inventory.discovery.maxInstances
  || throw "opentofu.nix: cloud.app.maxSize (${toString cloud.app.maxSize}) exceeds discovery.maxInstances, HAProxy's slots per role";
  assert cloud.app.minSize >= 1 || throw "opentofu.nix: cloud.app.minSize must be at least 1"; {
    terraform.required_providers.aws =
      {source = "hashicorp/aws";}
      // (
        if awsProviderVersion == null
        then {}
        else {version = "= ${awsProviderVersion}";}
      );

    provider.aws = {
      inherit (cloud) region;
      default_tags.tags.project = "hubbub";
    };

    variable.images = {
      type = "map(string)";
      description = "Host name -> path of its NixOS Amazon image (VHD), as `nix build .#cloud-images` lays them out.";
    };

    data.aws_caller_identity.current = {};

    locals.app_user_data = appUserData;

    output = {
      lb_public_ipv4.value = ref "aws_eip.lb.public_ip";
      app_autoscaling_group.value = ref "aws_autoscaling_group.app.name";
      discovery_namespace.value = ref "aws_service_discovery_private_dns_namespace.hubbub.id";
    };

    resource = {
      aws_vpc.hubbub = {
        cidr_block = cloud.vpcNetwork;
        enable_dns_support = true;
        enable_dns_hostnames = true;
        tags = tags "vpc";
      };
      aws_internet_gateway.hubbub = {
        vpc_id = ref "aws_vpc.hubbub.id";
        tags = tags "igw";
      };
      aws_route_table.public = {
        vpc_id = ref "aws_vpc.hubbub.id";
        tags = tags "public";
      };
      aws_route.internet = {
        route_table_id = ref "aws_route_table.public.id";
        destination_cidr_block = "0.0.0.0/0";
        gateway_id = ref "aws_internet_gateway.hubbub.id";
      };
      aws_subnet =
        {
          hosts = {
            vpc_id = ref "aws_vpc.hubbub.id";
            cidr_block = cloud.hostSubnet.cidr;
            availability_zone = cloud.hostSubnet.zone;
            map_public_ip_on_launch = true;
            tags = tags "hosts";
          };
        }
        // builtins.listToAttrs (builtins.genList (i: let
          subnet = builtins.elemAt cloud.appSubnets i;
        in {
          name = "app_${toString i}";
          value = {
            vpc_id = ref "aws_vpc.hubbub.id";
            cidr_block = subnet.cidr;
            availability_zone = subnet.zone;
            map_public_ip_on_launch = true;
            tags = tags "app-${toString i}";
          };
        }) (builtins.length cloud.appSubnets));
      aws_route_table_association = listToAttrs' (subnet: {
        name = subnet;
        value = {
          subnet_id = ref "aws_subnet.${subnet}.id";
          route_table_id = ref "aws_route_table.public.id";
        };
      }) (["hosts"] ++ appSubnetIds);

      aws_security_group =
        listToAttrs' (host: {
          name = host;
          value = {
            name = "hubbub-${host}";
            description = "hubbub ${host}: the host's nftables rules";
            vpc_id = ref "aws_vpc.hubbub.id";
            tags = tags host;
          };
        })
        hostNames;
      aws_vpc_security_group_ingress_rule = builtins.listToAttrs (builtins.concatMap ingress hostNames);
      aws_vpc_security_group_egress_rule =
        listToAttrs' (host: {
          name = "${host}_all";
          value = {
            security_group_id = ref "aws_security_group.${host}.id";
            ip_protocol = "-1";
            cidr_ipv4 = "0.0.0.0/0";
            description = "all egress";
          };
        })
        hostNames;

      aws_iam_role =
        listToAttrs' (host: {
          name = host;
          value = {
            name = "hubbub-${host}";
            assume_role_policy = assumeEc2;
          };
        })
        hostNames
        // {
          vmimport = {
            name = "vmimport";
            assume_role_policy = vmimportTrust;
          };
        };
      aws_iam_role_policy =
        listToAttrs' (host: {
          name = host;
          value = {
            name = "hubbub-${host}";
            role = ref "aws_iam_role.${host}.id";
            policy = hostPolicy host;
          };
        })
        hostNames
        // {
          vmimport = {
            name = "vmimport";
            role = ref "aws_iam_role.vmimport.id";
            policy = vmimportPolicy;
          };
        };
      aws_iam_instance_profile =
        listToAttrs' (host: {
          name = host;
          value = {
            name = "hubbub-${host}";
            role = ref "aws_iam_role.${host}.name";
          };
        })
        hostNames;

      aws_s3_bucket.images = {
        bucket_prefix = "hubbub-images-";
        force_destroy = true;
      };
      aws_s3_bucket_public_access_block.images = {
        bucket = ref "aws_s3_bucket.images.id";
        block_public_acls = true;
        block_public_policy = true;
        ignore_public_acls = true;
        restrict_public_buckets = true;
      };
      # The key carries the image's store path hash: a new build is a new object.
      aws_s3_object =
        listToAttrs' (host: {
          name = host;
          value = {
            bucket = ref "aws_s3_bucket.images.id";
            key = "${host}/${ref "basename(dirname(${image host}))"}.vhd";
            source = ref (image host);
          };
        })
        hostNames;
      aws_ebs_snapshot_import =
        listToAttrs' (host: {
          name = host;
          value = {
            role_name = ref "aws_iam_role.vmimport.name";
            disk_container = {
              format = "VHD";
              user_bucket = {
                s3_bucket = ref "aws_s3_bucket.images.id";
                s3_key = ref "aws_s3_object.${host}.key";
              };
            };
            tags = tags host;
          };
        })
        hostNames;
      aws_ami =
        listToAttrs' (host: {
          name = host;
          value = {
            name = "hubbub-${host}-${ref "aws_ebs_snapshot_import.${host}.id"}";
            architecture = "x86_64";
            virtualization_type = "hvm";
            # nixpkgs' amazon image without ec2.efi: GRUB on BIOS (its
            # image-info.json says legacy-bios). Without it the instance type
            # picks, and UEFI-only types would not boot the image.
            boot_mode = "legacy-bios";
            ena_support = true;
            root_device_name = "/dev/xvda";
            ebs_block_device = {
              device_name = "/dev/xvda";
              snapshot_id = ref "aws_ebs_snapshot_import.${host}.id";
              volume_type = "gp3";
              delete_on_termination = true;
            };
          };
        })
        hostNames;

      aws_instance =
        listToAttrs' (host: {
          name = host;
          value = {
            ami = ref "aws_ami.${host}.id";
            instance_type = cloud.instanceTypes.${host};
            subnet_id = ref "aws_subnet.hosts.id";
            private_ip = hosts.${host}.privateAddress;
            vpc_security_group_ids = [(ref "aws_security_group.${host}.id")];
            iam_instance_profile = ref "aws_iam_instance_profile.${host}.name";
            root_block_device = rootVolume host;
            metadata_options = imdsV2;
            tags = tags host;
            # Updated in place with nixos-rebuild; data keeps the database.
            lifecycle.ignore_changes = ["ami"];
          };
        })
        fixedHosts;
      aws_eip.lb = {
        domain = "vpc";
        instance = ref "aws_instance.lb.id";
        tags = tags "lb";
      };

      aws_service_discovery_private_dns_namespace.hubbub = {
        name = inventory.discovery.domain;
        vpc = ref "aws_vpc.hubbub.id";
        description = "hubbub app instances, one A record per instance and role";
      };
      aws_service_discovery_service =
        listToAttrs' (role: {
          name = role;
          value = {
            name = role;
            dns_config = {
              namespace_id = ref "aws_service_discovery_private_dns_namespace.hubbub.id";
              routing_policy = "MULTIVALUE";
              dns_records = {
                ttl = 10;
                type = "A";
              };
            };
          };
        })
        roles;

      aws_launch_template.app = {
        name_prefix = "hubbub-app-";
        image_id = ref "aws_ami.app.id";
        instance_type = cloud.instanceTypes.app;
        vpc_security_group_ids = [(ref "aws_security_group.app.id")];
        iam_instance_profile.name = ref "aws_iam_instance_profile.app.name";
        metadata_options = imdsV2 // {instance_metadata_tags = "disabled";};
        block_device_mappings = {
          device_name = "/dev/xvda";
          ebs = rootVolume appGroup // {delete_on_termination = true;};
        };
        # 1-minute CPU metrics: target tracking reacts within minutes.
        monitoring.enabled = true;
        user_data = ref "base64encode(jsonencode(local.app_user_data))";
        update_default_version = true;
        tag_specifications = {
          resource_type = "instance";
          tags = tags "app";
        };
      };

      aws_autoscaling_group.app = {
        name = groupName;
        min_size = cloud.app.minSize;
        max_size = cloud.app.maxSize;
        vpc_zone_identifier = map (subnet: ref "aws_subnet.${subnet}.id") appSubnetIds;
        health_check_type = "EC2";
        health_check_grace_period = cloud.app.warmupSeconds;
        default_instance_warmup = cloud.app.warmupSeconds;
        launch_template = {
          id = ref "aws_launch_template.app.id";
          version = ref "aws_launch_template.app.latest_version";
        };
        # A new image rolls out one instance at a time, launching before terminating.
        instance_refresh = {
          strategy = "Rolling";
          preferences = {
            min_healthy_percentage = 100;
            max_healthy_percentage = 200;
          };
        };
        # Terminating instances first deregister and drain (nixos/profiles/cloud.nix).
        initial_lifecycle_hook = {
          name = hookName;
          lifecycle_transition = "autoscaling:EC2_INSTANCE_TERMINATING";
          default_result = "CONTINUE";
          heartbeat_timeout = 300;
        };
        tag = {
          key = "Name";
          value = "hubbub-app";
          propagate_at_launch = true;
        };
        # The scaling policy owns the size between min and max.
        lifecycle.ignore_changes = ["desired_capacity"];
      };
      aws_autoscaling_policy.app_cpu = {
        name = "hubbub-app-cpu";
        autoscaling_group_name = ref "aws_autoscaling_group.app.name";
        policy_type = "TargetTrackingScaling";
        target_tracking_configuration = {
          predefined_metric_specification.predefined_metric_type = "ASGAverageCPUUtilization";
          target_value = cloud.app.targetCpuPercent;
        };
      };
    };
  }
