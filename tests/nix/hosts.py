"""Checks of the evaluated example hosts, for tests/nix/hosts.sh.

usage: hosts.py WORK HOST...  (WORK/clean/<host>.json|.err, WORK/<plant>/...)
"""

import json
import os
import re
import subprocess
import sys
import tempfile
from urllib.parse import urlsplit

work, hosts = sys.argv[1], sys.argv[2:]
HUBBUB = os.environ.get("HUBBUB_BIN") or ("target/debug/hubbub" if os.path.exists("target/debug/hubbub") else None)
AGENIX = re.compile(r"/run/agenix/[A-Za-z0-9._-]+")
recipients = json.load(open(os.path.join(work, "recipients.json")))


def host_key(host):
    """The example host's public key (nixos/tests/keys), or None."""
    path = f"nixos/tests/keys/INSECURE-{host}_ed25519.pub"
    if not os.path.exists(path):
        return None
    return " ".join(open(path).read().split()[:2])


def load(directory, names):
    results, problems = {}, []
    for host in names:
        path = os.path.join(directory, f"{host}.json")
        if os.path.exists(path):
            results[host] = json.load(open(path))
        else:
            err = open(os.path.join(directory, f"{host}.err")).read().strip()
            # The module system's message, without the trace.
            problems.append(f"{host} does not evaluate: {err.splitlines()[0] if err else '?'}"
                            + "".join(f"\n    {l}" for l in err.splitlines()[1:8]))
    return results, problems


def toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def to_toml(table, prefix=""):
    """TOML text of a nested dict (what pkgs.formats.toml renders)."""
    scalars = [f"{json.dumps(k)} = {toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    out = "\n".join(scalars) + ("\n" if scalars else "")
    for key, value in table.items():
        if isinstance(value, dict):
            name = f"{prefix}.{json.dumps(key)}" if prefix else json.dumps(key)
            out += f"\n[{name}]\n" + to_toml(value, name)
    return out


checked = {}


def check_config(unit, rendered):
    """hubbub check-config on a unit's rendered TOML, credentials as placeholders
    (what nixos/modules/hubbub.nix runs at build time); the error or None."""
    key = json.dumps(rendered, sort_keys=True)
    if key not in checked:
        checked[key] = run_check_config(unit, rendered)
    return checked[key]


def run_check_config(unit, rendered):
    with tempfile.TemporaryDirectory() as tmp:
        creds = os.path.join(tmp, "creds")
        os.mkdir(creds)
        for name in rendered["credentials"]:
            with open(os.path.join(creds, name), "w") as f:
                f.write("hubbub-build-time-placeholder-0123456789abcdef\n")
        path = os.path.join(tmp, f"hubbub-{unit}.toml")
        with open(path, "w") as f:
            f.write(to_toml(rendered["settings"]))
        env = {"PATH": os.environ.get("PATH", ""), "CREDENTIALS_DIRECTORY": creds,
               "STATE_DIRECTORY": os.path.join(tmp, "state")}
        done = subprocess.run([HUBBUB, "--config", path, "check-config"], env=env,
                              capture_output=True, text=True, timeout=60)
        return None if done.returncode == 0 else done.stderr.strip()


def check(results):
    """Every problem of these evaluated hosts, as text."""
    problems = []
    by_address = {}
    for host, r in results.items():
        by_address.setdefault(r["address"], []).append(host)

    for host, r in sorted(results.items()):
        for message in r["failedAssertions"]:
            problems.append(f"{host}: failed assertion: {' '.join(message.split())}")
        for message in r["warnings"]:
            problems.append(f"{host}: warning: {' '.join(message.split())}")

        # Secrets: used => declared on this host => this host can decrypt it.
        declared = {s["path"]: name for name, s in r["ageSecrets"].items()}
        used = set(AGENIX.findall(json.dumps({k: v for k, v in r.items() if k != "ageSecrets"})))
        for path in sorted(used - set(declared)):
            problems.append(f"{host}: uses {path}, but no age.secrets entry of {host} delivers it")
        key = host_key(host)
        for name, secret in sorted(r["ageSecrets"].items()):
            rule = recipients.get(secret["file"])
            if rule is None:
                problems.append(f"{host}: age.secrets.{name}: secrets/secrets.nix has no rule for {secret['file']}")
            elif key is not None and key not in rule:
                problems.append(f"{host}: cannot decrypt {secret['file']} (age.secrets.{name}): "
                                f"{host} is not among its recipients in secrets/secrets.nix")

        def reachable(what, url_host, port, accept, detail):
            """Is url_host:port a host of ours that accepts (accept(target)) and
            opens the port to this host?"""
            if url_host in ("127.0.0.1", "localhost", "::1"):
                targets = [host]
            else:
                targets = by_address.get(url_host, [])
            if not targets:
                problems.append(f"{host}: {what} {detail}: no host at {url_host}")
                return
            target = targets[0]
            t = results[target]
            if not accept(t):
                problems.append(f"{host}: {what} {detail}: {target} does not serve it there")
            elif target != host and port not in t["firewall"]["private"]:
                problems.append(f"{host}: {what} {detail}: {target}'s firewall does not open {port} to the private network")

        # A unit that restarts on failure and that another unit Requires= and
        # follows: by default (RestartMode=normal) its first failure fails the
        # dependent start jobs ('dependency'), and its restart never brings
        # them back. RestartMode=direct keeps them waiting.
        for name, unit in sorted(r["units"].items()):
            for required in unit.get("requires") or []:
                dep = r["units"].get(required.removesuffix(".service"))
                if not required.endswith(".service") or dep is None or required not in (unit.get("after") or []):
                    continue
                config = dep.get("serviceConfig") or {}
                if config.get("Restart", "no") != "no" and config.get("RestartMode") != "direct":
                    problems.append(f"{host}: {name}.service requires and follows {required}, which restarts on "
                                    f"failure without RestartMode=direct: its first failure fails {name} for good")

        hub = r["hubbub"]
        if hub is not None and HUBBUB:
            for unit, rendered in sorted(hub["rendered"].items()):
                error = check_config(unit, rendered)
                if error:
                    problems.append(f"{host}: hubbub-{unit}'s configuration: {error}")
        if hub is not None:
            settings = hub["settings"]
            db = (settings.get("database") or {}).get("url")
            if db:
                u = urlsplit(db)
                if u.hostname:
                    port = u.port or 5432
                    reachable("database.url", u.hostname, port,
                              lambda t: t["postgresql"]["enable"]
                              and u.hostname in t["postgresql"]["listen_addresses"].split(",")
                              and t["postgresql"]["port"] == port
                              and re.search(rf"^host\s+\S+\s+\S+\s+{re.escape(r['address'])}/32\s", t["postgresql"]["authentication"], re.M),
                              db)
                elif not r["postgresql"]["enable"]:
                    problems.append(f"{host}: database.url {db} is a local socket, but {host} runs no PostgreSQL")
            redis = (settings.get("redis") or {}).get("url")
            if redis:
                u = urlsplit(redis)
                reachable("redis.url", u.hostname, u.port, lambda t: t["redis"]["enable"]
                          and u.hostname in t["redis"]["bind"].split() and t["redis"]["port"] == u.port, redis)
            mqtt = (settings.get("mqtt") or {}).get("url")
            if mqtt:
                u = urlsplit(mqtt)
                reachable("mqtt.url", u.hostname, u.port,
                          lambda t: {"address": u.hostname, "port": u.port} in t["mqttListeners"], mqtt)

        # journal-remote speaks plain HTTP: only the gateway (TLS, client
        # certificates) may reach it, so it listens on loopback alone.
        if r["journald"]["remote"]:
            streams = [s for s in r["sockets"].get("systemd-journal-remote", []) if s != ""]
            exposed = [s for s in streams if not re.fullmatch(r"(127\.0\.0\.1|\[::1\]):\d+", s)]
            if not streams or exposed:
                problems.append(f"{host}: systemd-journal-remote listens on {streams or 'nothing of ours'}: "
                                "it must listen on loopback only (the journal gateway is the way in)")

        upload = r["journald"]["upload"]
        if upload:
            u = urlsplit(upload)
            reachable("journal upload", u.hostname, u.port,
                      lambda t: t["journald"]["remote"] and "hubbub-journal-gateway" in t["units"], upload)

        for target in r["scrapeTargets"]:
            address, _, port = target.rpartition(":")
            reachable("Prometheus target", address, int(port), lambda t: True, target)

        for address, port in re.findall(r"^\s*server\s+\S+\s+(\d+\.\d+\.\d+\.\d+):(\d+)", r["haproxy"], re.M):
            wanted = f"{address}:{port}"
            if address.startswith("127."):
                continue  # a helper on the proxy host itself (the ACME challenge)
            reachable("HAProxy server", address, int(port),
                      lambda t: t["hubbub"] is not None and any(wanted in (role["listen"], role["adminListen"])
                                                                for role in t["hubbub"]["roles"].values()),
                      wanted)
    return problems


failed = False
clean, problems = load(os.path.join(work, "clean"), hosts)
problems += check(clean) if not problems else []
clean_problems = set(problems)
if not HUBBUB:
    print("SKIPPED: hubbub check-config of each unit's configuration: no target/debug/hubbub (cargo build) and no HUBBUB_BIN")
if problems:
    failed = True
    for p in problems:
        print(f"FAIL: {p}")
else:
    print(f"ok: {len(hosts)} hosts evaluate ({', '.join(hosts)}): no failed assertion, no warning, "
          + ("every hubbub unit's configuration passes check-config, " if HUBBUB else "")
          + "every secret delivered and decryptable, database/cache/broker/journal/HAProxy/Prometheus wiring consistent")

for plant in sorted(d for d in os.listdir(work) if d != "clean" and os.path.isdir(os.path.join(work, d))):
    expect = json.load(open(os.path.join(work, plant, "expect.json")))
    names = [f[:-4] for f in os.listdir(os.path.join(work, plant)) if f.endswith(".err")]
    planted, problems = load(os.path.join(work, plant), names)
    combined = {**clean, **planted}
    # A host the plant removed from the evaluation keeps its clean result.
    problems += check(combined)
    # Only what the plant brought: a problem of the clean hosts proves nothing.
    hit = [p for p in problems if expect in p and p not in clean_problems]
    if hit:
        print(f"ok: planted {plant} is caught: {hit[0].splitlines()[0][:200]}")
    else:
        failed = True
        print(f"FAIL: planted {plant} is not caught (expected a problem with {expect!r}); found: {problems[:3]}")

sys.exit(1 if failed else 0)
