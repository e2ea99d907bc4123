# vm-cluster: lb, app1, app2 and data from the real inventory, plus a client.
# An SSE client follows a chat channel through the balancer; stopping
# hubbub-broadcast on the app host that serves it makes the client resume
# (Last-Event-ID) through the balancer on the other app host, without losing
# or duplicating a message, including those posted while it reconnected.
# Last, boot in any order: app1's roles are started while the database is
# down; hubbub-migrate gives up, is restarted by systemd, and the roles come
# up once the database is back.
{self}: let
  inventory = import ../lib/inventory.nix;
  mkNode = import ./node.nix {inherit self;};
  ports = inventory.ports;
  appHosts = ["app1" "app2"];
  node = name: {
    imports = [
      (mkNode {inherit name inventory;})
    ];
    # No monitor host in this test: keep the journal local.
    hubbub.logging.enable = false;
    # Short, so that hubbub-migrate gives up (exit 75) and is restarted while
    # the database is down (the last subtest) instead of after 5 minutes.
    services.hubbub.settings =
      if builtins.elem name appHosts
      then {database.startup_wait_secs = 5;}
      else {};
  };
in {
  name = "hubbub-cluster";

  nodes = {
    lb = node "lb";
    app1 = node "app1";
    app2 = node "app2";
    data = node "data";
    client = {
      nodes,
      pkgs,
      ...
    }: {
      networking.hosts.${nodes.lb.networking.primaryIPAddress} = [inventory.domain];
      environment.etc."hubbub-test/proxy-cert.pem".source = ./keys/proxy-cert.pem;
      environment.etc."hubbub-test/sse_follow.py".source = ./sse_follow.py;
      environment.systemPackages = [pkgs.curl pkgs.python3];
    };
  };

  testScript = ''
    import json
    import shlex

    BASE = "https://${inventory.domain}"
    CURL = "curl --silent --show-error --fail --max-time 15 --cacert /etc/hubbub-test/proxy-cert.pem"
    CHANNEL = "failover"
    ADDRESSES = {${
      builtins.concatStringsSep ", " (map (name: ''"${name}": "${inventory.hosts.${name}.privateAddress}"'') appHosts)
    }}
    APPS = {"app1": app1, "app2": app2}


    def post(text: str) -> None:
        body = shlex.quote(json.dumps({"user": "vm-test", "text": text}))
        client.succeed(f"{CURL} -H 'Content-Type: application/json' --data {body} {BASE}/api/chat/{CHANNEL}/messages")


    def received() -> list[dict]:
        lines = client.succeed("cat /tmp/sse.jsonl").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]


    def wait_received(text: str) -> None:
        client.wait_until_succeeds(f"grep -qF {shlex.quote(json.dumps(text))} /tmp/sse.jsonl", timeout=60)


    def sse_clients(name: str) -> int:
        metrics = APPS[name].succeed(f"curl -sf http://{ADDRESSES[name]}:${toString ports.admin.broadcast}/metrics || true")
        total = 0
        for line in metrics.splitlines():
            if line.startswith("hubbub_sse_clients"):
                total += int(float(line.split()[-1]))
        return total


    def serving_app() -> str:
        for name in APPS:
            if sse_clients(name) > 0:
                return name
        raise Exception("no app host holds the SSE client yet")


    start_all()

    with subtest("the cluster comes up"):
        data.wait_for_unit("postgresql.target")
        data.wait_for_unit("redis-hubbub.service")
        data.wait_for_unit("mosquitto.service")
        data.wait_for_open_port(${toString ports.mqtts}, "${inventory.hosts.data.privateAddress}")
        for app in (app1, app2):
            app.wait_for_unit("hubbub-migrate.service")
            for role in ("visitors", "chat", "broadcast", "buffs"):
                app.wait_for_unit(f"hubbub-{role}.service")
        lb.wait_for_unit("haproxy.service")
        lb.wait_for_open_port(443)
        client.wait_for_unit("multi-user.target")
        client.wait_until_succeeds(f"{CURL} {BASE}/healthz", timeout=120)

    with subtest("an SSE client follows the channel through the balancer"):
        client.succeed(
            "systemd-run --unit=sse-follow --property=Type=exec"
            f" python3 /etc/hubbub-test/sse_follow.py {BASE}/api/chat/{CHANNEL}/events /etc/hubbub-test/proxy-cert.pem /tmp/sse.jsonl"
        )
        client.wait_until_succeeds("grep -q '^#connected' /tmp/sse.jsonl", timeout=60)
        post("before failover")
        wait_received("before failover")
        victim: str | None = None
        for _ in range(30):
            try:
                victim = serving_app()
                break
            except Exception:
                client.sleep(1)
        assert victim is not None, "neither app host reports the SSE client"
        survivor = "app2" if victim == "app1" else "app1"

    with subtest("stopping hubbub-broadcast on the serving host: the client resumes on the other"):
        APPS[victim].succeed("systemctl stop hubbub-broadcast.service")
        post("during failover 1")
        post("during failover 2")
        wait_received("during failover 1")
        wait_received("during failover 2")
        post("after failover")
        wait_received("after failover")
        assert sse_clients(survivor) > 0, f"the client did not move to {survivor}"
        reconnects = int(client.succeed("grep -c '^#connected' /tmp/sse.jsonl").strip())
        assert reconnects >= 2, f"the client never reconnected ({reconnects} connection(s))"

    with subtest("no message lost, none duplicated, in order"):
        events = received()
        texts = [event["message"]["text"] for event in events]
        expected = ["before failover", "during failover 1", "during failover 2", "after failover"]
        assert [text for text in texts if text in expected] == expected, texts
        ids = [int(event["message"]["id"]) for event in events]
        assert ids == sorted(set(ids)), f"duplicated or out-of-order ids: {ids}"

    with subtest("boot in any order: roles started while the database is down come up after it"):
        roles = [f"hubbub-{role}.service" for role in ("visitors", "chat", "broadcast", "buffs")]
        data.succeed("systemctl stop postgresql.service")
        # Stops the roles too (they require it).
        app1.succeed("systemctl stop hubbub-migrate.service")
        app1.succeed("systemctl start --no-block " + " ".join(roles))
        # migrate gave up at least once (exit 75) and systemd started it again;
        # the roles' start jobs must still be waiting, not failed ('dependency').
        app1.wait_until_succeeds(
            'test "$(systemctl show --property=NRestarts --value hubbub-migrate.service)" -ge 1', timeout=120
        )
        for role in roles:
            state = app1.succeed(f"systemctl show --property=ActiveState --value {role}").strip()
            assert state != "failed", f"{role} failed while the database was down"
            app1.succeed(f"systemctl list-jobs --no-legend {role} | grep -q start")
        data.succeed("systemctl start postgresql.target")
        app1.wait_for_unit("hubbub-migrate.service")
        for role in roles:
            app1.wait_for_unit(role)
  '';
}
