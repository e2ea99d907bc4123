# Derived views of an inventory (nixos/lib/inventory.nix). Builtins only, so
# `nix-instantiate --eval --strict` runs it without nixpkgs.
#
#   topology = import ./topology.nix inventory;   # or import ./topology.nix { inherit inventory; }
#
#   hostNames                all host names, sorted
#   hostsWith service        names of the hosts carrying a stack service ("proxy", "database", ...)
#   hostsWithRole role       names of the hosts running a hubbub role
#   appHostNames             names of the hosts running at least one role
#   appHosts.<role>          [ { name; address; publicPort; adminPort; } ] for every known role
#                            (an empty list when no host runs it); the HAProxy backends
#   databaseHost, cacheHost, brokerHost, proxyHost, monitorHost, logHost
#                            { name; address; } of the first host carrying the service, or null
#   trustedProxies           "<address>/32" of every proxy host (hubbub's http.trusted_proxies)
#   scrapeTargets.<job>      [ { host; target = "address:port"; } ]; jobs: node, hubbub-<role>,
#                            postgres, redis, haproxy, prometheus
#   scrapeConfigs            Prometheus scrape_configs (a list) built from scrapeTargets; every
#                            target carries a `host` label (not `role`: hubbub's own metrics
#                            have a `role` label that a target label would shadow)
#   firewallPorts.<host>     sorted TCP ports to open on that host's private interface
#   publicPorts.<host>       sorted TCP ports open on every interface: SSH, plus 80 and 443 where
#                            the proxy or the ci service runs (nixos/profiles/security.nix checks
#                            the host's firewall against it)
#   sourcesOf name           the CIDRs a host's connections come from: "<address>/32", or the
#                            subnets of an elastic host
#
# Elastic hosts (an entry with `elastic.subnets` and no privateAddress: the app
# autoscaling group of nixos/hosts/cloud.nix) have no fixed address: HAProxy finds
# them through DNS, Prometheus through `dns_sd_configs` on the discovery names,
# and they are left out of appHosts and the static scrape targets.
#
# Adding a host to the inventory updates every view.
arg: let
  inventory = arg.inventory or arg;
  inherit (inventory) hosts ports;

  roles = ["visitors" "chat" "broadcast" "buffs"];
  hostNames = builtins.attrNames hosts;
  addressOf = name: hosts.${name}.privateAddress or null;
  isElastic = name: hosts.${name} ? elastic;
  fixedHostNames = builtins.filter (name: !(isElastic name)) hostNames;
  elasticHostNames = builtins.filter isElastic hostNames;
  sourcesOf = name:
    if isElastic name
    then hosts.${name}.elastic.subnets
    else ["${addressOf name}/32"];

  hostsWith = service: builtins.filter (name: builtins.elem service (hosts.${name}.services or [])) hostNames;
  hostsWithRole = role: builtins.filter (name: builtins.elem role (hosts.${name}.roles or [])) hostNames;
  appHostNames = builtins.filter (name: (hosts.${name}.roles or []) != []) hostNames;

  # App hosts other than `name`: they reach `name`'s services over the private network.
  remoteApps = name: builtins.filter (other: other != name) appHostNames;

  hostRef = name: {
    inherit name;
    address = addressOf name;
  };
  firstWith = service: let
    found = hostsWith service;
  in
    if found == []
    then null
    else hostRef (builtins.head found);

  appHosts = builtins.listToAttrs (map (role: {
      name = role;
      value =
        map (name: {
          inherit name;
          address = addressOf name;
          publicPort = ports.public.${role};
          adminPort = ports.admin.${role};
        })
        (builtins.filter (name: !(isElastic name)) (hostsWithRole role));
    })
    roles);

  target = port: name: {
    host = name;
    target = "${addressOf name}:${toString port}";
  };

  scrapeTargets =
    {
      node = map (target ports.nodeExporter) fixedHostNames;
      postgres = map (target ports.postgresExporter) (hostsWith "database");
      redis = map (target ports.redisExporter) (hostsWith "cache");
      haproxy = map (target ports.haproxyMetrics) (hostsWith "proxy");
      prometheus = map (target ports.prometheus) (hostsWith "monitoring");
    }
    // builtins.listToAttrs (map (role: {
        name = "hubbub-${role}";
        value = map (target ports.admin.${role}) (builtins.filter (name: !(isElastic name)) (hostsWithRole role));
      })
      roles);

  # Elastic hosts are scraped through DNS: the discovery name of a role (for the
  # node exporter, of the host's first role) on the job's port, with the
  # instance's address as `host` label.
  dnsTargets =
    {
      node =
        map (name: {
          name = "${builtins.head hosts.${name}.roles}.${inventory.discovery.domain}";
          port = ports.nodeExporter;
        })
        elasticHostNames;
    }
    // builtins.listToAttrs (map (role: {
        name = "hubbub-${role}";
        value =
          if builtins.any isElastic (hostsWithRole role)
          then [
            {
              name = "${role}.${inventory.discovery.domain}";
              port = ports.admin.${role};
            }
          ]
          else [];
      })
      roles);

  scrapeConfigs = map (job: let
    dns = dnsTargets.${job} or [];
  in
    {
      job_name = job;
      static_configs =
        map (t: {
          targets = [t.target];
          labels.host = t.host;
        })
        scrapeTargets.${job};
    }
    // (
      if dns == []
      then {}
      else {
        dns_sd_configs =
          map (d: {
            names = [d.name];
            type = "A";
            inherit (d) port;
            refresh_interval = "30s";
          })
          dns;
        relabel_configs = [
          {
            # Only where no static target set `host`.
            source_labels = ["host" "__address__"];
            separator = ";";
            regex = ";([^:]+):[0-9]+";
            target_label = "host";
          }
        ];
      }
    ))
  (builtins.filter (job: scrapeTargets.${job} != [] || (dnsTargets.${job} or []) != []) (builtins.attrNames scrapeTargets));

  # Sorted, without duplicates.
  uniqueSorted = list:
    builtins.foldl' (acc: x:
      if acc != [] && builtins.elemAt acc (builtins.length acc - 1) == x
      then acc
      else acc ++ [x]) [] (builtins.sort builtins.lessThan list);

  optional = cond: list:
    if cond
    then list
    else [];

  portsOf = name: let
    h = hosts.${name};
    services = h.services or [];
    has = service: builtins.elem service services;
    remote = remoteApps name != [];
  in
    uniqueSorted (
      [ports.nodeExporter]
      # HAProxy reaches the public listeners, Prometheus the admin ones.
      ++ map (role: ports.public.${role}) (h.roles or [])
      ++ map (role: ports.admin.${role}) (h.roles or [])
      ++ optional (has "database") ([ports.postgresExporter] ++ optional remote [ports.postgres])
      ++ optional (has "cache") ([ports.redisExporter] ++ optional remote [ports.redis])
      ++ optional (has "broker" && remote) [ports.mqtts]
      ++ optional (has "proxy") [ports.haproxyMetrics]
      ++ optional (has "monitoring") [ports.prometheus ports.grafana]
      ++ optional (has "logging") [ports.journalRemote]
    );
  publicPortsOf = name: let
    services = hosts.${name}.services or [];
  in
    [22] ++ optional (builtins.elem "proxy" services || builtins.elem "ci" services) [80 443];
in {
  inherit hostNames hostsWith hostsWithRole appHostNames appHosts scrapeTargets scrapeConfigs sourcesOf;
  databaseHost = firstWith "database";
  cacheHost = firstWith "cache";
  brokerHost = firstWith "broker";
  proxyHost = firstWith "proxy";
  monitorHost = firstWith "monitoring";
  logHost = firstWith "logging";
  trustedProxies = map (name: "${addressOf name}/32") (hostsWith "proxy");
  firewallPorts = builtins.listToAttrs (map (name: {
      inherit name;
      value = portsOf name;
    })
    hostNames);
  publicPorts = builtins.listToAttrs (map (name: {
      inherit name;
      value = publicPortsOf name;
    })
    hostNames);
}
