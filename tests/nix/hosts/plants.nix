# Mistakes planted into the example hosts, one of each kind tests/nix/hosts.sh
# must catch. `hosts`: the hosts evaluated with the plant (the others as they
# are); `modules`/`inventory`: what changes on those hosts; `expect`: a text
# the failure must contain.
let
  allHosts = ["lb" "app1" "app2" "data" "monitor" "ci"];
  withoutCache = inventory:
    inventory
    // {
      hosts =
        inventory.hosts
        // {
          data = inventory.hosts.data // {services = ["database" "broker"];};
        };
    };
in {
  # A wrong type in services.hubbub: a port number where an address is expected.
  wrong-type = {
    hosts = ["app1"];
    modules = _: [{services.hubbub.roles.chat.listen = 8082;}];
    expect = "services.hubbub.roles.chat.listen' is not of type";
  };
  # A wrong type inside the freeform settings: the module's TOML type takes
  # it, hubbub itself does not (Hydra's build runs check-config on it).
  wrong-setting-type = {
    hosts = ["app2"];
    modules = _: [{services.hubbub.settings.database.max_connections = "many";}];
    expect = "database.max_connections";
  };
  # A failed assertion of services.hubbub.
  failed-assertion = {
    hosts = ["app2"];
    modules = _: [{services.hubbub.settings.database.migrate_on_start = true;}];
    expect = "migrate_on_start must be false";
  };
  # The migrate oneshot restarting through the failed state: the roles that
  # require it would fail for good at its first exit 75 (a cold cluster).
  restart-through-failed = {
    hosts = ["app1"];
    modules = _: [({lib, ...}: {systemd.services.hubbub-migrate.serviceConfig.RestartMode = lib.mkForce "normal";})];
    expect = "without RestartMode=direct";
  };
  # journal-remote (plain HTTP, no client certificates) on every address,
  # next to the gateway: anyone on the network could write into the journal.
  exposed-journal-remote = {
    hosts = ["monitor"];
    modules = _: [({lib, ...}: {systemd.sockets.systemd-journal-remote.listenStreams = lib.mkOverride 10 ["" "19533"];})];
    expect = "must listen on loopback only";
  };
  # A credential naming a secret that no agenix entry of the host delivers.
  undelivered-credential = {
    hosts = ["app2"];
    modules = _: [{services.hubbub.credentials.webhook-token = "/run/agenix/webhook-token";}];
    expect = "/run/agenix/webhook-token";
  };
  # A secret the host is not a recipient of: agenix could not decrypt it there.
  undecryptable-secret = {
    hosts = ["app1"];
    modules = _: [
      ({config, ...}: {
        age.secrets.mqtt-tls-key.file = config.hubbub.deployment.secretsDir + "/mqtt-tls-key.age";
      })
    ];
    expect = "cannot decrypt mqtt-tls-key.age";
  };
  # Inventory wiring: app1 built from an inventory where the data host has
  # another address (an old revision, a typo): its database, cache and broker
  # URLs point where nothing listens.
  stale-inventory = {
    hosts = ["app1"];
    inventory = _: inventory:
      inventory
      // {
        hosts =
          inventory.hosts
          // {
            data = inventory.hosts.data // {privateAddress = "10.42.0.21";};
          };
      };
    expect = "no host at 10.42.0.21";
  };
  # Inventory wiring: no host carries the cache any more.
  missing-service = {
    hosts = allHosts;
    inventory = _: withoutCache;
    expect = "no host with the";
  };
  # Inventory wiring: a new app host whose secrets were never created.
  host-without-secrets = {
    hosts = allHosts ++ ["app3"];
    inventory = _: inventory:
      inventory
      // {
        hosts =
          inventory.hosts
          // {
            app3 = {
              privateAddress = "10.42.0.13";
              services = [];
              roles = ["visitors"];
            };
          };
      };
    expect = "journal-upload-app3-key.age";
  };
}
