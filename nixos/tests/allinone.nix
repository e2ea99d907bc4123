# vm-allinone: the `allinone` host (every service, every role) and a client.
# Through HAProxy over TLS: the visitor page, a chat message received over SSE,
# buff creation with and without the admin token; Prometheus sees every target
# up; repeated authentication failures get the client banned by fail2ban; the
# backup unit runs and hubbub-db-restore restores it into a scratch database;
# hubbub-migrate ran before every role.
{self}: let
  inventory = import ../hosts/allinone.nix (import ../lib/inventory.nix);
  mkNode = import ./node.nix {inherit self;};
  host = inventory.hosts.allinone;
  ports = inventory.ports;
in {
  name = "hubbub-allinone";

  nodes = {
    allinone = mkNode {
      name = "allinone";
      inherit inventory;
    };

    client = {
      nodes,
      pkgs,
      ...
    }: {
      networking.hosts.${nodes.allinone.networking.primaryIPAddress} = [inventory.domain];
      environment.etc."hubbub-test/proxy-cert.pem".source = ./keys/proxy-cert.pem;
      environment.systemPackages = [pkgs.curl pkgs.jq];
    };
  };

  testScript = {nodes, ...}: ''
    import json
    import shlex

    ROLES = ["visitors", "chat", "broadcast", "buffs"]
    BASE = "https://${inventory.domain}"
    CURL = "curl --silent --show-error --max-time 15 --cacert /etc/hubbub-test/proxy-cert.pem"
    CLIENT_IP = "${nodes.client.networking.primaryIPAddress}"
    PRIVATE = "${host.privateAddress}"
    # A buff the admin token may create (POST /api/buffs, Authorization: Bearer).
    BUFF = {"question": "Is the VM test green?", "answers": ["yes", "no"]}
    MESSAGE = "hello from the allinone VM test"


    def status(method: str, path: str, body: object = None, headers: list[str] | None = None) -> str:
        args = [CURL, "-o /dev/null -w '%{http_code}'", "-X", method]
        for header in headers or []:
            args += ["-H", shlex.quote(header)]
        if body is not None:
            args += ["-H 'Content-Type: application/json'", "--data", shlex.quote(json.dumps(body))]
        args.append(shlex.quote(BASE + path))
        return client.succeed(" ".join(args)).strip()


    def monotonic(unit: str, prop: str) -> int:
        return int(allinone.succeed(f"systemctl show --property={prop} --value {unit}").strip())


    start_all()

    with subtest("the stack comes up"):
        allinone.wait_for_unit("postgresql.target")
        allinone.wait_for_unit("redis-hubbub.service")
        allinone.wait_for_unit("mosquitto.service")
        allinone.wait_for_unit("hubbub-migrate.service")
        for role in ROLES:
            allinone.wait_for_unit(f"hubbub-{role}.service")
        allinone.wait_for_unit("haproxy.service")
        allinone.wait_for_open_port(443)
        client.wait_for_unit("multi-user.target")

    with subtest("hubbub-migrate ran, after PostgreSQL and before every role"):
        assert allinone.succeed("systemctl show --property=Result --value hubbub-migrate.service").strip() == "success"
        migrated = monotonic("hubbub-migrate.service", "ExecMainExitTimestampMonotonic")
        assert monotonic("postgresql-setup.service", "ExecMainExitTimestampMonotonic") <= monotonic("hubbub-migrate.service", "ExecMainStartTimestampMonotonic")
        for role in ROLES:
            started = monotonic(f"hubbub-{role}.service", "ExecMainStartTimestampMonotonic")
            assert 0 < migrated <= started, f"hubbub-{role} started at {started}, before migrations ended at {migrated}"

    with subtest("the visitor page over TLS through HAProxy"):
        client.wait_until_succeeds(f"{CURL} --fail {BASE}/healthz")
        page = client.succeed(f"{CURL} --fail {BASE}/")
        assert "<html" in page.lower(), page[:200]
        headers = client.succeed(f"{CURL} --fail --head {BASE}/").lower()
        assert "strict-transport-security" in headers, headers
        redirect = client.succeed("curl --silent -o /dev/null -w '%{http_code} %{redirect_url}' http://${inventory.domain}/").split()
        assert redirect[0] in ("301", "302", "308") and redirect[1].startswith("https://"), redirect

    with subtest("a chat message reaches an SSE client"):
        client.succeed(f"systemd-run --unit=sse-client --property=Type=exec {CURL} --no-buffer --max-time 120 --output /tmp/sse.log {BASE}/api/chat/lobby/events")
        allinone.wait_until_succeeds(f"curl -sf http://{PRIVATE}:${toString ports.admin.broadcast}/metrics | grep -Eq '^hubbub_sse_clients(\\{{[^}}]*\\}})? [1-9]'")
        assert status("POST", "/api/chat/lobby/messages", {"user": "vm-test", "text": MESSAGE}) in ("200", "201")
        client.wait_until_succeeds(f"grep -qF {shlex.quote(MESSAGE)} /tmp/sse.log", timeout=30)

    with subtest("buffs: refused without the admin token, created with it"):
        assert status("POST", "/api/buffs", BUFF) in ("401", "403")
        token = allinone.succeed("head -n1 /run/agenix/hubbub-buffs-admin-tokens").strip()
        assert status("POST", "/api/buffs", BUFF, [f"Authorization: Bearer {token}"]) in ("200", "201")

    with subtest("the edge certificate's expiry is published for the alert"):
        allinone.succeed("systemctl start hubbub-tls-expiry-metric.service")
        allinone.succeed("grep -q '^hubbub_tls_certificate_expiry_timestamp_seconds{domain=\"${inventory.domain}\"} [0-9]' /var/lib/prometheus-node-exporter-text/hubbub_tls.prom")

    with subtest("Prometheus scrapes every target and all are up"):
        allinone.wait_until_succeeds(
            f"curl -sf http://{PRIVATE}:${toString ports.prometheus}/api/v1/targets"
            " | jq -e '(.data.activeTargets | length) > 0 and ([.data.activeTargets[] | select(.health != \"up\")] | length) == 0'",
            timeout=180,
        )

    with subtest("the backup unit runs and hubbub-db-restore restores it into a scratch database"):
        allinone.succeed("systemctl start postgresqlBackup-hubbub.service")
        allinone.succeed("test -s /var/backup/postgresql/hubbub.sql.zstd")
        allinone.succeed("grep -q '^hubbub_backup_last_success_timestamp_seconds' /var/lib/prometheus-node-exporter-text/hubbub_backup.prom")
        allinone.succeed("hubbub-db-restore latest hubbub_scratch")
        tables = "SELECT string_agg(table_name, ',' ORDER BY table_name) FROM information_schema.tables WHERE table_schema = 'public'"
        live = allinone.succeed(f"runuser -u postgres -- psql -tA -d hubbub -c {shlex.quote(tables)}").strip()
        copy = allinone.succeed(f"runuser -u postgres -- psql -tA -d hubbub_scratch -c {shlex.quote(tables)}").strip()
        assert live and live == copy, f"{live!r} != {copy!r}"
        allinone.succeed(f"runuser -u postgres -- pg_dump --data-only hubbub_scratch | grep -qF {shlex.quote(MESSAGE)}")
        allinone.fail("hubbub-db-restore latest hubbub_scratch")  # exists: needs --replace

    with subtest("OpenSSH accepts keys only"):
        config = allinone.succeed("sshd -T")
        assert "passwordauthentication no" in config and "kbdinteractiveauthentication no" in config

    with subtest("repeated authentication failures get the client banned"):
        for _ in range(${toString (5 + 2)}):
            status("POST", "/api/buffs", BUFF, ["Authorization: Bearer wrong-token"])
        allinone.wait_until_succeeds(f"fail2ban-client status hubbub-auth | grep -qF {CLIENT_IP}", timeout=60)
        client.fail(f"{CURL} --fail --max-time 5 {BASE}/healthz")
        allinone.succeed(f"fail2ban-client set hubbub-auth unbanip {CLIENT_IP}")
        client.wait_until_succeeds(f"{CURL} --fail {BASE}/healthz", timeout=30)
  '';
}
