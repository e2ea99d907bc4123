# The inventory of the AWS deployment, derived from the cluster inventory: the
# same ports, domain, private network and fixed hosts (lb, data, monitor, ci at
# their addresses), the app hosts replaced by one elastic host `app` (the
# autoscaling group: no fixed address, instances in the app subnets), the
# interface name of EC2 instances, and discovery through AWS Cloud Map.
inventory: let
  inherit (inventory) cloud;
  isApp = name: (inventory.hosts.${name}.services or []) == [] && (inventory.hosts.${name}.roles or []) != [];
  fixed = builtins.removeAttrs inventory.hosts (builtins.filter isApp (builtins.attrNames inventory.hosts));
in
  inventory
  // {
    provider = "aws";
    inherit (cloud) privateInterface;
    discovery =
      inventory.discovery
      // {
        source = "aws-cloud-map";
        inherit (cloud) nameserver holdObsolete;
      };
    hosts =
      fixed
      // {
        app = {
          services = [];
          roles = ["visitors" "chat" "broadcast" "buffs"];
          elastic = {
            subnets = map (subnet: subnet.cidr) cloud.appSubnets;
            maxInstances = cloud.app.maxSize;
          };
        };
      };
  }
