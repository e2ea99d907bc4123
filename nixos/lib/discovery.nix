# Service discovery of the app instances through DNS, and the dnsmasq that
# answers on a static inventory. Builtins only.
#
#   discovery = import ./discovery.nix { inventory = import ./inventory.nix; };
#
#   domain           inventory.discovery.domain ("hubbub.internal")
#   names.<role>     "<role>.<domain>": one A record per instance running the role; what
#                    HAProxy's server-template (nixos/lib/haproxy.nix) resolves
#   records          [ { address; names; } ]: the hosts of the inventory that run roles and
#                    have a fixed private address (elastic hosts register themselves)
#   hosts            those records in hosts(5) format, dnsmasq's `addn-hosts`
#   settings         services.dnsmasq.settings: answers for <domain> only, from the files
#                    below, never forwards, listens on listenAddress:port only
#   config           the same settings as dnsmasq.conf text, rendered the way nixpkgs'
#                    dnsmasq module renders `settings` (pkgs.formats.keyValue with
#                    lists as repeated keys; true -> bare key), for `dnsmasq --test` and
#                    the tests, which run Debian's dnsmasq with it
#
# Arguments: inventory (or { inventory }); hostsFile: a file holding `hosts` (the NixOS
# profile passes a store path), null for none; hostsDir: a directory dnsmasq watches
# (inotify) for hosts(5) files, one per instance, null for none; listenAddress and port
# (default: inventory.discovery.nameserver); extraSettings, merged last (the tests set
# pid-file and user).
{
  inventory,
  hostsFile ? null,
  hostsDir ? null,
  listenAddress ? null,
  port ? null,
  extraSettings ? {},
}: let
  inherit (inventory) hosts;
  inherit (inventory.discovery) domain nameserver;
  roles = ["visitors" "chat" "broadcast" "buffs"];

  nameserverParts = builtins.match "([0-9.]+):([0-9]+)" nameserver;
  address =
    if listenAddress != null
    then listenAddress
    else builtins.elemAt nameserverParts 0;
  dnsPort =
    if port != null
    then port
    else builtins.fromJSON (builtins.elemAt nameserverParts 1);

  names = builtins.listToAttrs (map (role: {
      name = role;
      value = "${role}.${domain}";
    })
    roles);

  fixedAppHosts = builtins.filter (name: (hosts.${name}.roles or []) != [] && (hosts.${name}.privateAddress or null) != null) (builtins.attrNames hosts);
  records =
    map (name: {
      address = hosts.${name}.privateAddress;
      names = map (role: names.${role}) hosts.${name}.roles;
    })
    fixedAppHosts;

  optionalAttrs = cond: attrs:
    if cond
    then attrs
    else {};

  settings =
    {
      listen-address = address;
      port = dnsPort;
      bind-interfaces = true;
      # Authoritative for the discovery domain, nothing else: no upstream
      # servers, no /etc/hosts, unknown names under the domain are NXDOMAIN.
      no-resolv = true;
      no-hosts = true;
      local = "/${domain}/";
      domain-needed = true;
    }
    // optionalAttrs (hostsFile != null) {addn-hosts = hostsFile;}
    // optionalAttrs (hostsDir != null) {hostsdir = hostsDir;}
    // extraSettings;

  # nixpkgs: nixos/modules/services/networking/dnsmasq.nix (formatKeyValue,
  # pkgs.formats.keyValue { listsAsDuplicateKeys = true; }).
  line = name: value:
    if value == true
    then name
    else if value == false
    then "# setting `${name}` explicitly set to false"
    else "${name}=${toString value}";
  lines = name: value:
    if builtins.isList value
    then map (line name) value
    else [(line name value)];
  config = builtins.concatStringsSep "\n" (builtins.concatLists (map (name: lines name settings.${name}) (builtins.attrNames settings))) + "\n";
in {
  inherit domain names records settings config;
  hosts = builtins.concatStringsSep "" (map (r: "${r.address} ${builtins.concatStringsSep " " r.names}\n") records);
}
