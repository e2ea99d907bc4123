# The deployed topology as pure data (builtins only): hosts, their private
# addresses and what runs on each. HAProxy backends, Prometheus targets, broker
# listeners and firewall rules are all derived from this file, so adding an app
# host is one entry under `hosts`.
{
  domain = "hubbub.example.org";
  acmeEmail = "ops@example.org";

  # The private network the hosts talk over (internal ports are opened only here).
  privateInterface = "eth1";
  privateNetwork = "10.42.0.0/24";

  # How HAProxy finds the app instances: the DNS name <role>.<domain> has one
  # A record per instance running that role, on the role's port of the plan
  # below (nixos/lib/discovery.nix). With source "inventory", dnsmasq on the
  # proxy host answers from `hosts`; in the cloud (nixos/hosts/cloud.nix)
  # every instance registers itself in AWS Cloud Map at boot and deregisters
  # at shutdown, and the VPC resolver answers.
  discovery = {
    domain = "hubbub.internal";
    source = "inventory";
    nameserver = "127.0.0.1:53";
    # HAProxy server slots per role: the most instances of one role at once.
    maxInstances = 10;
    # How long HAProxy keeps an address that DNS answers no longer list.
    # A stopping instance deregisters, then keeps serving this long plus one
    # resolution interval before it stops (nixos/profiles/cloud.nix).
    holdObsolete = "5s";
  };

  # Port plan, shared by every host.
  ports = {
    public = {
      visitors = 8081;
      chat = 8082;
      broadcast = 8083;
      buffs = 8084;
    };
    admin = {
      visitors = 9464;
      chat = 9465;
      broadcast = 9466;
      buffs = 9467;
    };
    postgres = 5432;
    redis = 6379;
    mqtt = 1883;
    mqtts = 8883;
    nodeExporter = 9100;
    postgresExporter = 9187;
    redisExporter = 9121;
    haproxyMetrics = 8405;
    prometheus = 9090;
    alertmanager = 9093;
    grafana = 3000;
    journalRemote = 19532;
  };

  # The same topology on AWS (nixos/hosts/cloud.nix derives its inventory,
  # nixos/lib/opentofu.nix renders the infrastructure; docs/cloud.md). The
  # hosts with services become instances at their private address above; the
  # app hosts (roles only) become one autoscaling group whose instances boot the
  # NixOS image of nixosConfigurations.cloud-app and register in Cloud Map.
  cloud = {
    region = "eu-central-1";
    # ENA network interface of Nitro instances (predictable name).
    privateInterface = "ens5";
    vpcNetwork = "10.42.0.0/16";
    # Both inside privateNetwork, so the firewall rules stay the same.
    hostSubnet = {
      cidr = "10.42.0.0/26";
      zone = "eu-central-1a";
    };
    appSubnets = [
      {
        cidr = "10.42.0.128/26";
        zone = "eu-central-1a";
      }
      {
        cidr = "10.42.0.192/26";
        zone = "eu-central-1b";
      }
    ];
    # The Route 53 Resolver of the VPC: answers the Cloud Map namespace.
    nameserver = "169.254.169.253:53";
    # Cloud Map answers with at most 8 of the registered addresses, picked at
    # random, and the VPC resolver keeps an answer for its 10 s TTL. At 10
    # instances an answer misses a given address one time in five: three
    # answers in a row (30 s) a few times an hour per instance, six (60 s) a
    # few times a day across the group. HAProxy keeps an address it has not
    # seen for 60 s (and a draining instance waits that long,
    # nixos/profiles/cloud.nix); up to 8 instances, every answer has them all.
    holdObsolete = "60s";
    instanceTypes = {
      lb = "t3.small";
      data = "m6i.large";
      monitor = "t3.medium";
      ci = "m6i.xlarge";
      app = "c6i.large";
    };
    diskGiB = {
      lb = 20;
      data = 100;
      monitor = 50;
      ci = 200;
      app = 20;
    };
    app = {
      minSize = 2;
      maxSize = 10;
      # Target tracking on the group's average CPU (docs/cloud.md says why CPU).
      targetCpuPercent = 50;
      # Seconds from launch until a new instance's CPU counts (boot, agenix,
      # migrations, registration).
      warmupSeconds = 180;
    };
  };

  # `services` names the stack profiles a host carries; `roles` the hubbub roles.
  hosts = {
    lb = {
      privateAddress = "10.42.0.10";
      services = ["proxy"];
      roles = [];
    };
    app1 = {
      privateAddress = "10.42.0.11";
      services = [];
      roles = ["visitors" "chat" "broadcast" "buffs"];
    };
    app2 = {
      privateAddress = "10.42.0.12";
      services = [];
      roles = ["visitors" "chat" "broadcast" "buffs"];
    };
    data = {
      privateAddress = "10.42.0.20";
      services = ["database" "cache" "broker"];
      roles = [];
    };
    monitor = {
      privateAddress = "10.42.0.30";
      services = ["monitoring" "logging"];
      roles = [];
    };
    ci = {
      privateAddress = "10.42.0.40";
      services = ["ci"];
      roles = [];
    };
  };
}
