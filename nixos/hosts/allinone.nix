# The all-in-one inventory: one machine carries every service and every role.
# Derived from the cluster inventory (same ports, domain and private network),
# so the renderers and profiles treat it like any other topology.
inventory:
inventory
// {
  hosts = {
    allinone = {
      privateAddress = "10.42.0.5";
      services = ["proxy" "database" "cache" "broker" "monitoring" "logging"];
      roles = ["visitors" "chat" "broadcast" "buffs"];
    };
  };
}
