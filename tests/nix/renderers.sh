#!/usr/bin/env bash
# The pure-Nix renderers of nixos/lib and the files of nixos/files, evaluated with
# nix-instantiate and checked by the real daemons and tools:
#   1. topology.nix: derived views of the inventory; an added app host propagates;
#      the scrape configs pass `promtool check config`
#   2. haproxy.nix: the cluster, all-in-one and a local variant pass `haproxy -c`
#      (warnings are errors); the inventory's pools are DNS server-templates whose
#      records (discovery.nix), served by a real dnsmasq, list every app host; the
#      local one runs on loopback high ports in front of
#      throwaway backends: path routing, /readyz health checks, X-Forwarded-For
#      replaced, X-Forwarded-Proto, HSTS, redirect, h2, metrics, per-client limits
#   3. broker-acl.nix: a real mosquitto with the rendered ACL file enforces it
#   4. alert-rules.nix: `promtool check rules` and `promtool test rules`
#      (nixos/files/prometheus/alert-rules.test.yml), which also catch broken rules
#   5. nixos/files/fail2ban/hubbub-auth.conf: `fail2ban-regex` matches every
#      failure line (IPv4/IPv6; journal, text and JSON forms) and nothing else
#   6. nixos/files/grafana/hubbub.json: valid JSON, valid PromQL, known metrics only
# Needs: nix-instantiate, haproxy, dnsmasq, promtool, mosquitto, mosquitto_pub/_sub,
# mosquitto_passwd, fail2ban-regex, openssl, python3.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# Evaluation only: no builds, so no build users (Debian's nix-bin warns otherwise).
export NIX_CONFIG="build-users-group ="

fail=0
ok() { echo "ok: $*"; }
bad() {
  echo "FAIL: $*"
  fail=1
}
for tool in nix-instantiate haproxy promtool mosquitto mosquitto_pub mosquitto_sub mosquitto_passwd fail2ban-regex openssl python3; do
  command -v "$tool" >/dev/null || {
    bad "$tool is not installed (tests/run installs it)"
    exit 1
  }
done

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

# Free TCP ports on loopback (all held open until every one is chosen, so distinct).
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}
# Evaluate a Nix expression to JSON / to the raw string it yields (errors on stderr).
nix_json() { nix-instantiate --eval --strict --json -E "$1"; }
nix_raw() {
  local json
  json=$(nix_json "$1") || return 1
  python3 -c 'import json, sys; sys.stdout.write(json.loads(sys.argv[1]))' "$json"
}
wait_port() {
  local port=$1 i
  for i in $(seq 1 100); do
    if python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.2).close()' "$port" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  return 1
}

inv='(import ./nixos/lib/inventory.nix)'
inv_allinone="(import ./nixos/hosts/allinone.nix $inv)"
inv_app3="($inv // { hosts = $inv.hosts // { app3 = { privateAddress = \"10.42.0.13\"; services = []; roles = [\"visitors\" \"chat\" \"broadcast\" \"buffs\"]; }; }; })"

# --- 1. topology ----------------------------------------------------------------
got=$(nix_json "let t = import ./nixos/lib/topology.nix $inv; in {
  pools = builtins.mapAttrs (_: map (h: \"\${h.name}=\${h.address}:\${toString h.publicPort}/\${toString h.adminPort}\")) t.appHosts;
  inherit (t) firewallPorts trustedProxies;
  db = t.databaseHost.name; cache = t.cacheHost.name; broker = t.brokerHost.name; monitor = t.monitorHost.name; proxy = t.proxyHost.name;
  jobs = map (c: c.job_name + \"=\" + builtins.concatStringsSep \",\" (map (s: builtins.head s.targets + \"@\" + s.labels.host) c.static_configs)) t.scrapeConfigs;
}") || got="evaluation failed"
want='{"broker":"data","cache":"data","db":"data","firewallPorts":{"app1":[8081,8082,8083,8084,9100,9464,9465,9466,9467],"app2":[8081,8082,8083,8084,9100,9464,9465,9466,9467],"ci":[9100],"data":[5432,6379,8883,9100,9121,9187],"lb":[8405,9100],"monitor":[3000,9090,9100,19532]},"jobs":["haproxy=10.42.0.10:8405@lb","hubbub-broadcast=10.42.0.11:9466@app1,10.42.0.12:9466@app2","hubbub-buffs=10.42.0.11:9467@app1,10.42.0.12:9467@app2","hubbub-chat=10.42.0.11:9465@app1,10.42.0.12:9465@app2","hubbub-visitors=10.42.0.11:9464@app1,10.42.0.12:9464@app2","node=10.42.0.11:9100@app1,10.42.0.12:9100@app2,10.42.0.40:9100@ci,10.42.0.20:9100@data,10.42.0.10:9100@lb,10.42.0.30:9100@monitor","postgres=10.42.0.20:9187@data","prometheus=10.42.0.30:9090@monitor","redis=10.42.0.20:9121@data"],"monitor":"monitor","pools":{"broadcast":["app1=10.42.0.11:8083/9466","app2=10.42.0.12:8083/9466"],"buffs":["app1=10.42.0.11:8084/9467","app2=10.42.0.12:8084/9467"],"chat":["app1=10.42.0.11:8082/9465","app2=10.42.0.12:8082/9465"],"visitors":["app1=10.42.0.11:8081/9464","app2=10.42.0.12:8081/9464"]},"proxy":"lb","trustedProxies":["10.42.0.10/32"]}'
if [ "$got" = "$want" ]; then
  ok "topology (cluster): pools, service hosts, scrape targets, private firewall ports"
else
  bad "topology (cluster): got $got"
fi

# One machine: no remote app hosts, so PostgreSQL, Redis and MQTT/TLS stay closed.
got=$(nix_json "(import ./nixos/lib/topology.nix { inventory = $inv_allinone; }).firewallPorts") || got="evaluation failed"
if [ "$got" = '{"allinone":[3000,8081,8082,8083,8084,8405,9090,9100,9121,9187,9464,9465,9466,9467,19532]}' ]; then
  ok "topology (allinone): no database, cache or broker port opened without remote app hosts"
else
  bad "topology (allinone): firewall $got"
fi

# Adding an app host is one inventory entry: pools, targets and firewall follow.
got=$(nix_json "let t = import ./nixos/lib/topology.nix $inv_app3; in {
  pools = builtins.mapAttrs (_: map (h: h.name)) t.appHosts;
  targets = builtins.filter (x: builtins.match \"10[.]42[.]0[.]13:.*\" x != null) (builtins.concatLists (map (c: map (s: builtins.head s.targets) c.static_configs) t.scrapeConfigs));
  fw = t.firewallPorts.app3;
  data = t.firewallPorts.data;
}") || got="evaluation failed"
want='{"data":[5432,6379,8883,9100,9121,9187],"fw":[8081,8082,8083,8084,9100,9464,9465,9466,9467],"pools":{"broadcast":["app1","app2","app3"],"buffs":["app1","app2","app3"],"chat":["app1","app2","app3"],"visitors":["app1","app2","app3"]},"targets":["10.42.0.13:9466","10.42.0.13:9467","10.42.0.13:9465","10.42.0.13:9464","10.42.0.13:9100"]}'
if [ "$got" = "$want" ]; then
  ok "topology: an added app host joins every pool, the scrape targets and the firewall"
else
  bad "topology (app3 added): got $got"
fi

# The scrape configs (and the rule file) make a configuration Prometheus accepts.
mkdir -p "$work/prom"
nix_raw "import ./nixos/lib/alert-rules.nix" >"$work/prom/alert-rules.json" || bad "alert-rules.nix does not evaluate"
nix_json "{ global = { scrape_interval = \"15s\"; evaluation_interval = \"15s\"; }; rule_files = [ \"alert-rules.json\" ]; scrape_configs = (import ./nixos/lib/topology.nix $inv).scrapeConfigs; }" >"$work/prom/prometheus.yml" || bad "topology.nix scrapeConfigs do not evaluate"
if out=$(promtool check config "$work/prom/prometheus.yml" 2>&1); then
  ok "promtool check config: Prometheus accepts the scrape configs from the topology"
else
  bad "promtool check config: $out"
fi

# --- 2. haproxy -----------------------------------------------------------------
mkdir -p "$work/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$work/tls/key.pem" -out "$work/tls/cert.pem" 2>/dev/null || {
  bad "openssl could not make the throwaway certificate"
  exit 1
}
cat "$work/tls/key.pem" "$work/tls/cert.pem" >"$work/tls/edge.pem" # key + chain in one PEM

# The NixOS module writes `global` + its stats socket line, then our text.
haproxy_check() {
  local name=$1 cfg=$2 full=$work/$1.full.cfg out
  {
    printf 'global\n  # needed for hot-reload to work without dropping packets in multi-worker mode\n  stats socket %s/%s.sock mode 600 expose-fd listeners level user\n' "$work" "$name"
    cat "$cfg"
  } >"$full"
  if out=$(haproxy -dW -c -f "$full" 2>&1); then
    ok "haproxy -c (warnings fatal): $name configuration is valid"
  else
    bad "haproxy -c: $name: $out"
  fi
}
for variant in cluster allinone app3; do
  case $variant in
    cluster) i=$inv ;;
    allinone) i=$inv_allinone ;;
    app3) i=$inv_app3 ;;
  esac
  nix_raw "import ./nixos/lib/haproxy.nix { inventory = $i; certificate = \"$work/tls/edge.pem\"; acmeChallenge = \"127.0.0.1:8402\"; }" >"$work/$variant.cfg" || bad "haproxy.nix ($variant) does not evaluate"
  haproxy_check "$variant" "$work/$variant.cfg"
done
# The pools are found through DNS: one server-template per role on the role's
# port, resolved by the `discovery` resolvers; an added host changes no HAProxy line.
templates=$(grep -c '^  server-template \(visitors 1-10 visitors\.hubbub\.internal:8081\|chat 1-10 chat\.hubbub\.internal:8082\|broadcast 1-10 broadcast\.hubbub\.internal:8083\|buffs 1-10 buffs\.hubbub\.internal:8084\) resolvers discovery init-addr none ' "$work/cluster.cfg" || true)
if [ "$templates" = 4 ] && grep -q '^  nameserver dns 127.0.0.1:53$' "$work/cluster.cfg" && ! grep '^  server ' "$work/cluster.cfg" | grep -qv '^  server acme ' && cmp -s "$work/cluster.cfg" "$work/app3.cfg"; then
  ok "haproxy: the four pools are server-templates resolved through DNS; adding app3 leaves the configuration unchanged"
else
  bad "haproxy: expected 4 server-templates on the discovery resolvers, no fixed app servers, and the same text with app3"
fi

# The records come from the inventory (discovery.nix), served by a real dnsmasq
# with the rendered configuration (what nixos/profiles/proxy.nix runs).
mkdir -p "$work/dns"
read -r p_dns <<<"$(free_ports 1)"
nix_raw "(import ./nixos/lib/discovery.nix { inventory = $inv_app3; }).hosts" >"$work/dns/hosts" || bad "discovery.nix hosts do not evaluate"
nix_raw "(import ./nixos/lib/discovery.nix {
  inventory = $inv_app3; hostsFile = \"$work/dns/hosts\"; port = $p_dns;
  extraSettings = { pid-file = \"$work/dns/pid\"; user = \"\"; };
}).config" >"$work/dns/dnsmasq.conf" || bad "discovery.nix config does not evaluate"
if ! command -v dnsmasq >/dev/null; then
  bad "dnsmasq is not installed (tests/run installs dnsmasq-base)"
elif ! out=$(dnsmasq --test -C "$work/dns/dnsmasq.conf" 2>&1); then
  bad "dnsmasq --test: $out"
else
  dnsmasq -k -C "$work/dns/dnsmasq.conf" >"$work/dns/out" 2>&1 &
  pids+=($!)
  got=$(python3 tests/nix/dns-query.py "$p_dns" visitors.hubbub.internal broadcast.hubbub.internal nothing.hubbub.internal example.org) || got="no answer"
  if [ "$got" = "0:10.42.0.11,10.42.0.12,10.42.0.13 0:10.42.0.11,10.42.0.12,10.42.0.13 3: 5:" ]; then
    ok "dnsmasq with the rendered configuration: <role>.hubbub.internal lists every app host (app3 included), other names NXDOMAIN, nothing forwarded"
  else
    bad "dnsmasq answers: $got ($(tail -n 3 "$work/dns/out"))"
  fi
fi
if grep -q '^  bind 10.42.0.10:8405$' "$work/cluster.cfg" && grep -q 'use-service prometheus-exporter' "$work/cluster.cfg"; then
  ok "haproxy: Prometheus endpoint bound to the proxy's private address and inventory port"
else
  bad "haproxy: metrics frontend not on 10.42.0.10:8405"
fi

# The local topology of the end-to-end tests: two servers per role on loopback.
read -r p_http p_https p_metrics p_v1 p_v2 p_c1 p_c2 p_b1 p_b2 p_f1 p_f2 <<<"$(free_ports 11)"
backends="{
  visitors = [ { name = \"visitors1\"; address = \"127.0.0.1\"; port = $p_v1; } { name = \"visitors2\"; address = \"127.0.0.1\"; port = $p_v2; } ];
  chat = [ { name = \"chat1\"; address = \"127.0.0.1\"; port = $p_c1; } { name = \"chat2\"; address = \"127.0.0.1\"; port = $p_c2; } ];
  broadcast = [ { name = \"broadcast1\"; address = \"127.0.0.1\"; port = $p_b1; } { name = \"broadcast2\"; address = \"127.0.0.1\"; port = $p_b2; } ];
  buffs = [ { name = \"buffs1\"; address = \"127.0.0.1\"; port = $p_f1; } { name = \"buffs2\"; address = \"127.0.0.1\"; port = $p_f2; } ];
}"
nix_raw "import ./nixos/lib/haproxy.nix {
  backends = $backends;
  certificate = \"$work/tls/edge.pem\";
  httpBind = \"127.0.0.1:$p_http\";
  httpsBind = [ \"127.0.0.1:$p_https\" ];
  metricsBind = \"127.0.0.1:$p_metrics\";
  checkInterval = \"300ms\";
  maxconn = 4000;
  limits = { connections = 8; requestsPer10s = 20; streamsPerMinute = 4; };
}" >"$work/local.cfg" || bad "haproxy.nix (local backends) does not evaluate"
haproxy_check local "$work/local.cfg"

# Throwaway backends: /readyz (visitors2 answers 503: never ready), JSON echo of
# what arrived, and an SSE stream on */events.
cat >"$work/backend.py" <<'EOF'
import http.server, json, sys, threading, time

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.do_GET()

    def do_GET(self):
        name, ready = self.server.name, self.server.ready
        if self.path == "/readyz":
            return self.send(200 if ready else 503, b"ready" if ready else b"not ready")
        info = {
            "server": name,
            "path": self.path,
            "xff": self.headers.get_all("X-Forwarded-For") or [],
            "proto": self.headers.get_all("X-Forwarded-Proto") or [],
            "forwarded": self.headers.get_all("Forwarded") or [],
            "real_ip": self.headers.get_all("X-Real-IP") or [],
        }
        if self.path.split("?")[0].endswith("/events"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                self.wfile.write(b"data: " + json.dumps(info).encode() + b"\n\n")
                self.wfile.flush()
                for i in range(200):
                    time.sleep(0.2)
                    self.wfile.write(b"data: tick %d\n\n" % i)
                    self.wfile.flush()
            except OSError:
                pass
            self.close_connection = True
            return
        self.send(200, json.dumps(info).encode(), "application/json")

    def send(self, code, body, ctype="text/plain"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # HAProxy closes health-check connections with a reset

for spec in sys.argv[1:]:
    name, port, ready = spec.split(":")
    server = Server(("127.0.0.1", int(port)), Handler)
    server.name, server.ready = name, ready == "1"
    threading.Thread(target=server.serve_forever, daemon=True).start()
print("backends up", flush=True)
threading.Event().wait()
EOF
python3 "$work/backend.py" visitors1:"$p_v1":1 visitors2:"$p_v2":0 chat1:"$p_c1":1 chat2:"$p_c2":1 \
  broadcast1:"$p_b1":1 broadcast2:"$p_b2":1 buffs1:"$p_f1":1 buffs2:"$p_f2":1 >"$work/backend.log" 2>&1 &
pids+=($!)
# All backends listen before HAProxy starts checking them.
for i in $(seq 1 100); do
  grep -q '^backends up' "$work/backend.log" && break
  sleep 0.1
done
haproxy -f "$work/local.full.cfg" >"$work/haproxy.log" 2>&1 &
pids+=($!)
if grep -q '^backends up' "$work/backend.log" && wait_port "$p_https"; then
  cat >"$work/client.py" <<'EOF'
import http.client, json, socket, ssl, sys, threading, time

https_port, http_port, metrics_port, cafile, metrics_out = sys.argv[1:6]
https_port, http_port, metrics_port = int(https_port), int(http_port), int(metrics_port)
ctx = ssl.create_default_context(cafile=cafile)
failed = False

def ok(msg):
    print("ok: " + msg, flush=True)

def bad(msg):
    global failed
    failed = True
    print("FAIL: " + msg, flush=True)

def request(path, src, headers=(), method="GET"):
    conn = http.client.HTTPSConnection("127.0.0.1", https_port, context=ctx, timeout=10, source_address=(src, 0))
    conn.putrequest(method, path)
    for name, value in headers:
        conn.putheader(name, value)
    conn.endheaders()
    resp = conn.getresponse()
    if resp.getheader("Content-Type", "").startswith("text/event-stream"):
        body = resp.readline().decode()  # the first event only
        body = body[len("data: "):] if body.startswith("data: ") else body
    else:
        body = resp.read().decode()
    conn.close()
    return resp.status, resp, body

def served_by(path, src, headers=()):
    status, _, body = request(path, src, headers)
    return json.loads(body)["server"] if status == 200 else "status %d" % status

def metrics():
    conn = http.client.HTTPConnection("127.0.0.1", metrics_port, timeout=5)
    conn.request("GET", "/metrics")
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    return resp.status, text

# Health checks: visitors2 never answers /readyz with 200, so it goes DOWN; the rest stay UP.
def state(proxy, server, want):
    return 'haproxy_server_status{proxy="%s",server="%s",state="%s"} 1' % (proxy, server, want)
want = [state("visitors", "visitors2", "DOWN")] + [
    state(pool, "%s%d" % (pool, n), "UP") for pool in ("visitors", "chat", "broadcast", "buffs") for n in (1, 2)
    if (pool, n) != ("visitors", 2)]
deadline = time.time() + 15
while time.time() < deadline and not all(w in metrics()[1] for w in want):
    time.sleep(0.2)
status, text = metrics()
missing = [w for w in want if w not in text]
if status == 200 and not missing:
    ok("haproxy: /readyz health checks mark the unready server DOWN, the 7 others UP (seen on the Prometheus endpoint)")
else:
    bad("haproxy: health states not reached: %s" % missing)
with open(metrics_out, "w") as f:
    f.write(text)
conn = http.client.HTTPConnection("127.0.0.1", metrics_port, timeout=5)
conn.request("GET", "/stats")
if conn.getresponse().status == 404:
    ok("haproxy: the metrics frontend serves /metrics only")
else:
    bad("haproxy: metrics frontend answers other paths")
conn.close()

# Path routing (client 127.0.0.2).
routes = [
    ("/", "visitors"), ("/api/stats", "visitors"), ("/version", "visitors"), ("/assets/app.css", "visitors"),
    ("/buffalo", "visitors"), ("/chatroom", "visitors"), ("/api/chatter", "visitors"),
    ("/api/chat/lobby/messages", "chat"), ("/api/chat", "chat"), ("/chat/", "chat"),
    ("/api/chat/lobby/events/more", "chat"),
    ("/api/buffs", "buffs"), ("/api/buffs/42", "buffs"), ("/buff", "buffs"), ("/buffs", "buffs"),
    ("/buffs/", "buffs"), ("/admin/buffs", "buffs"), ("/admin/buffs/", "buffs"), ("/admin/buffsx", "visitors"),
    ("/api/chat/lobby/events", "broadcast"), ("/api/chat/lobby/events?last_event_id=7", "broadcast"),
    ("/api/buffs/events", "broadcast"),
]
wrong = []
for path, pool in routes:
    server = served_by(path, "127.0.0.2")
    if not server.startswith(pool):
        wrong.append("%s -> %s (want %s)" % (path, server, pool))
if wrong:
    bad("haproxy routing: " + "; ".join(wrong))
else:
    ok("haproxy: %d paths routed to the right pool (SSE streams to broadcast, chat, buffs, rest to visitors)" % len(routes))

servers = [served_by("/", "127.0.0.3") for _ in range(10)]
if set(servers) == {"visitors1"}:
    ok("haproxy: 10/10 visitor requests avoid the server whose /readyz fails")
else:
    bad("haproxy: visitor requests went to %s" % sorted(set(servers)))
servers = [served_by("/api/chat/lobby/messages", "127.0.0.4") for _ in range(6)]
if set(servers) == {"chat1", "chat2"}:
    ok("haproxy: the chat pool is balanced over both healthy servers")
else:
    bad("haproxy: chat requests went to %s" % sorted(set(servers)))

# Forwarding headers: whatever the client claims, the role sees the proxy's view.
status, resp, body = request("/api/stats", "127.0.0.5", [
    ("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "10.0.0.1, 10.0.0.2"),
    ("Forwarded", "for=6.6.6.6"), ("X-Real-IP", "6.6.6.6"), ("X-Forwarded-Proto", "http")])
seen = json.loads(body)
if seen["xff"] == ["127.0.0.5"] and seen["forwarded"] == [] and seen["real_ip"] == []:
    ok("haproxy: client-sent X-Forwarded-For/Forwarded/X-Real-IP dropped; the role sees X-Forwarded-For: 127.0.0.5 only")
else:
    bad("haproxy: forwarding headers at the role: %s" % seen)
if seen["proto"] == ["https"]:
    ok("haproxy: X-Forwarded-Proto: https (client value replaced)")
else:
    bad("haproxy: X-Forwarded-Proto at the role: %s" % seen["proto"])
if resp.getheader("Strict-Transport-Security") == "max-age=63072000":
    ok("haproxy: HSTS header on HTTPS responses")
else:
    bad("haproxy: Strict-Transport-Security = %r" % resp.getheader("Strict-Transport-Security"))

conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=5, source_address=("127.0.0.6", 0))
conn.request("GET", "/api/stats?x=1")
resp = conn.getresponse()
want = "https://127.0.0.1:%d/api/stats?x=1" % https_port
if resp.status == 301 and resp.getheader("Location") == want:
    ok("haproxy: http redirects to https (301, path and query kept)")
else:
    bad("haproxy: http answered %d Location %r" % (resp.status, resp.getheader("Location")))
conn.close()

alpn = ssl.create_default_context(cafile=cafile)
alpn.set_alpn_protocols(["h2", "http/1.1"])
with socket.create_connection(("127.0.0.1", https_port), 5, source_address=("127.0.0.7", 0)) as raw:
    with alpn.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        negotiated = (tls.selected_alpn_protocol(), tls.version())
if negotiated[0] == "h2" and negotiated[1] in ("TLSv1.2", "TLSv1.3"):
    ok("haproxy: TLS with the key+chain PEM, ALPN h2 (%s)" % negotiated[1])
else:
    bad("haproxy: TLS/ALPN negotiated %s" % (negotiated,))

# Per-client limits (client 127.0.0.10): requestsPer10s = 20, streamsPerMinute = 4.
ticks = []
def follow():
    conn = http.client.HTTPSConnection("127.0.0.1", https_port, context=ctx, timeout=10, source_address=("127.0.0.10", 0))
    conn.request("GET", "/api/chat/lobby/events")
    resp = conn.getresponse()
    try:
        while True:
            line = resp.readline()
            if not line:
                break
            if line.startswith(b"data: tick"):
                ticks.append(time.time())
    except OSError:
        pass
stream = threading.Thread(target=follow, daemon=True)
stream.start()
time.sleep(0.5)
statuses = []
limited = None
for _ in range(30):
    status, resp, _ = request("/api/stats", "127.0.0.10")
    statuses.append(status)
    if status == 429:
        limited = resp
burst_end = time.time()
passed = statuses.count(200)
if 20 <= passed <= 22 and statuses.count(429) == 30 - passed and statuses[:20] == [200] * 20:
    ok("haproxy: request-rate limit: %d of 30 quick requests passed, the rest got 429" % passed)
else:
    bad("haproxy: request-rate limit statuses %s" % statuses)
if limited is not None and limited.getheader("Retry-After") == "10" and limited.getheader("Strict-Transport-Security"):
    ok("haproxy: 429 answers carry Retry-After and HSTS")
else:
    bad("haproxy: 429 headers wrong or no 429 at all")
time.sleep(1.2)
after = [t for t in ticks if t > burst_end]
if stream.is_alive() and len(after) >= 3:
    ok("haproxy: an open SSE stream keeps flowing while its client is rate-limited (%d events after the burst)" % len(after))
else:
    bad("haproxy: the SSE stream stopped during the rate limit (%d events after, alive=%s)" % (len(after), stream.is_alive()))
# (A rate counter may rotate its period meanwhile and let one more through.)
streams = [request("/api/buffs/events", "127.0.0.10")[0] for _ in range(5)]
if streams[:3] == [200, 200, 200] and 429 in streams[3:] and set(streams) == {200, 429}:
    ok("haproxy: new SSE streams have their own budget: 3 more pass despite the request limit, then 429 (%s)" % streams)
else:
    bad("haproxy: stream budget statuses %s (want 200, 200, 200, then 429)" % streams)

# Concurrent connections (client 127.0.0.11): connections = 8.
idle = []
for _ in range(8):
    raw = socket.create_connection(("127.0.0.1", https_port), 5, source_address=("127.0.0.11", 0))
    idle.append(ctx.wrap_socket(raw, server_hostname="127.0.0.1"))
time.sleep(0.2)
status, _, body = request("/api/stats", "127.0.0.11")
for s in idle:
    s.close()
time.sleep(0.5)
status_after, _, _ = request("/api/stats", "127.0.0.11")
if status == 429 and "connections" in body and status_after == 200:
    ok("haproxy: the 9th concurrent connection of a client gets 429; after closing, requests pass again")
else:
    bad("haproxy: connection limit: %d %r, then %d" % (status, body, status_after))
sys.exit(1 if failed else 0)
EOF
  if ! python3 "$work/client.py" "$p_https" "$p_http" "$p_metrics" "$work/tls/cert.pem" "$work/haproxy-metrics.txt"; then
    fail=1
    echo "--- haproxy log (tail)"
    tail -n 20 "$work/haproxy.log"
    echo "--- test backends log (tail)"
    tail -n 20 "$work/backend.log"
  fi
  if grep -q '"GET /api/stats HTTP/1.1"' "$work/haproxy.log"; then
    ok "haproxy: access log goes to stdout (journal under systemd)"
  else
    bad "haproxy: no access log on stdout"
  fi
else
  bad "haproxy or the test backends did not start: $(tail -n 5 "$work/haproxy.log" "$work/backend.log")"
fi

# --- 3. broker ACL ----------------------------------------------------------------
mqtt=$work/mqtt
mkdir -p "$mqtt"
nix_raw "(import ./nixos/lib/broker-acl.nix).aclFile" >"$mqtt/acl-0.conf" || bad "broker-acl.nix aclFile does not evaluate"
# The NixOS module writes "user <n>" + "topic <acl>" per user in name order: the same text.
got=$(nix_json '(import ./nixos/lib/broker-acl.nix).aclStrings') || got="evaluation failed"
if [ "$got" = '{"broadcast":["read hubbub/#"],"buffs":["readwrite hubbub/buffs"],"chat":["write hubbub/chat/+"]}' ]; then
  ok "broker ACL: chat writes hubbub/chat/+, buffs reads and writes hubbub/buffs, broadcast reads hubbub/# (aclStrings)"
else
  bad "broker ACL strings: $got"
fi
for user in chat broadcast buffs; do
  if [ ! -e "$mqtt/passwd-0" ]; then
    mosquitto_passwd -c -b "$mqtt/passwd-0" "$user" "pw-$user" 2>/dev/null
  else
    mosquitto_passwd -b "$mqtt/passwd-0" "$user" "pw-$user" 2>/dev/null
  fi
done
read -r p_mqtt <<<"$(free_ports 1)"
# Laid out like services.mosquitto renders a listener.
cat >"$mqtt/mosquitto.conf" <<EOF
per_listener_settings true
user $(id -un)
persistence false
log_dest stderr
listener $p_mqtt 127.0.0.1
acl_file $mqtt/acl-0.conf
password_file $mqtt/passwd-0
allow_anonymous false
EOF
mosquitto -c "$mqtt/mosquitto.conf" >"$mqtt/broker.log" 2>&1 &
pids+=($!)
if wait_port "$p_mqtt"; then
  mq() { "$@" -h 127.0.0.1 -p "$p_mqtt"; }
  # Started directly (not through mq) so that the recorded pid is the subscriber's.
  mosquitto_sub -h 127.0.0.1 -p "$p_mqtt" -u broadcast -P pw-broadcast -t 'hubbub/#' -v >"$mqtt/broadcast.out" 2>&1 &
  pids+=($!)
  mosquitto_sub -h 127.0.0.1 -p "$p_mqtt" -u chat -P pw-chat -t 'hubbub/#' -v >"$mqtt/chat.out" 2>&1 &
  pids+=($!)
  # Wait until the broadcast subscriber receives (so both subscriptions are in place).
  for i in $(seq 1 50); do
    mq mosquitto_pub -u buffs -P pw-buffs -q 1 -t hubbub/buffs -m "probe-$i" || true
    grep -q probe "$mqtt/broadcast.out" && break
    sleep 0.1
  done
  mq mosquitto_pub -u chat -P pw-chat -q 1 -t hubbub/chat/lobby -m chat-ok || true
  mq mosquitto_pub -u buffs -P pw-buffs -q 1 -t hubbub/buffs -m buffs-ok || true
  mq mosquitto_pub -u chat -P pw-chat -q 1 -t hubbub/buffs -m chat-to-buffs || true
  mq mosquitto_pub -u chat -P pw-chat -q 1 -t hubbub/chat/a/b -m chat-two-levels || true
  mq mosquitto_pub -u chat -P pw-chat -q 1 -t hubbub/elsewhere -m chat-elsewhere || true
  mq mosquitto_pub -u buffs -P pw-buffs -q 1 -t hubbub/chat/lobby -m buffs-to-chat || true
  mq mosquitto_pub -u broadcast -P pw-broadcast -q 1 -t hubbub/chat/lobby -m broadcast-publishes || true
  anonymous=refused
  if mq mosquitto_pub -q 1 -t hubbub/chat/lobby -m anonymous >/dev/null 2>&1; then anonymous=accepted; fi
  wrongpw=refused
  if mq mosquitto_pub -u chat -P wrong -q 1 -t hubbub/chat/lobby -m wrong-password >/dev/null 2>&1; then wrongpw=accepted; fi
  mq mosquitto_pub -u chat -P pw-chat -q 1 -t hubbub/chat/lobby -m last || true
  for i in $(seq 1 50); do
    grep -q ' last$' "$mqtt/broadcast.out" && break
    sleep 0.1
  done
  got=$(grep -v probe "$mqtt/broadcast.out" | tr '\n' '|')
  if [ "$got" = "hubbub/chat/lobby chat-ok|hubbub/buffs buffs-ok|hubbub/chat/lobby last|" ]; then
    ok "mosquitto with the rendered ACL: broadcast receives exactly what chat and buffs may publish"
  else
    bad "mosquitto: broadcast received: $got"
  fi
  if [ -z "$(grep -v probe "$mqtt/chat.out" | grep -v '^$' || true)" ] && ! grep -q probe "$mqtt/chat.out"; then
    ok "mosquitto: chat cannot read (its subscription receives nothing)"
  else
    bad "mosquitto: chat received $(tr '\n' '|' <"$mqtt/chat.out")"
  fi
  if [ "$anonymous" = refused ] && [ "$wrongpw" = refused ]; then
    ok "mosquitto: anonymous clients and wrong passwords are refused"
  else
    bad "mosquitto: anonymous $anonymous, wrong password $wrongpw"
  fi
else
  bad "mosquitto did not start: $(tail -n 5 "$mqtt/broker.log")"
fi

# --- 4. alert rules -----------------------------------------------------------------
prom=$work/prom
if out=$(promtool check rules "$prom/alert-rules.json" 2>&1); then
  ok "promtool check rules: $(grep -o '[0-9]* rules found' <<<"$out")"
else
  bad "promtool check rules: $out"
fi
need_alerts="InstanceDown PostgresDown RedisDown HubbubHigh5xxRatio HubbubHighLatencyP99 HubbubOutboxBacklogGrowing HubbubMqttDisconnected HostDiskFillingUp HubbubBackupTooOld TlsCertificateExpiringSoon"
test_files=(nixos/files/prometheus/alert-rules.test.yml nixos/files/prometheus/alert-rules-daily.test.yml)
coverage=$(python3 - "$prom/alert-rules.json" "$need_alerts" "${test_files[@]}" <<'EOF'
import json, re, sys
rules = [r["alert"] for g in json.load(open(sys.argv[1]))["groups"] for r in g["rules"]]
tests = "".join(open(f).read() for f in sys.argv[3:])
problems = ["missing alert %s" % a for a in sys.argv[2].split() if a not in rules]
for alert in rules:
    cases = re.findall(r"alertname: %s\n\s+exp_alerts:( \[\])?" % re.escape(alert), tests)
    if "" not in cases:
        problems.append("%s never tested firing" % alert)
    if " []" not in cases:
        problems.append("%s never tested quiet" % alert)
print("; ".join(problems) if problems else "%d" % len(rules))
EOF
)
if [[ $coverage =~ ^[0-9]+$ ]]; then
  ok "alert rules: all required alerts exist; each of the $coverage is unit-tested firing and quiet"
else
  bad "alert rules: $coverage"
fi
cp "${test_files[@]}" "$prom/"
if out=$(cd "$prom" && promtool test rules alert-rules.test.yml alert-rules-daily.test.yml 2>&1); then
  ok "promtool test rules: every alert fires when it should and stays quiet otherwise"
else
  bad "promtool test rules: $out"
fi
# The unit tests must notice broken rules: each mutant must fail them.
caught=0
mutants=(
  "InstanceDown|for|10m"
  "RedisDown|for|5m"
  'HubbubHigh5xxRatio|expr|,route!~"/healthz|/readyz|/metrics"=>'
  "HubbubBackupTooOld|expr|26 * 3600=>36 * 3600"
  "TlsCertificateExpiringSoon|expr|14 * 86400=>3 * 86400"
)
for m in "${mutants[@]}"; do
  rm -rf "$prom/mutant"
  mkdir -p "$prom/mutant"
  cp "${test_files[@]}" "$prom/mutant/"
  python3 - "$prom/alert-rules.json" "$prom/mutant/alert-rules.json" "$m" <<'EOF'
import json, sys
source, target, mutation = sys.argv[1:]
alert, how, value = mutation.split("|", 2)
doc = json.load(open(source))
for group in doc["groups"]:
    for rule in group["rules"]:
        if rule["alert"] == alert:
            if how == "for":
                rule["for"] = value
            else:
                old, new = value.split("=>")
                assert old in rule["expr"], (old, rule["expr"])
                rule["expr"] = rule["expr"].replace(old, new)
json.dump(doc, open(target, "w"))
EOF
  if ! (cd "$prom/mutant" && promtool test rules alert-rules.test.yml alert-rules-daily.test.yml >/dev/null 2>&1); then
    caught=$((caught + 1))
  fi
done
rm -rf "$prom/mutant"
if [ "$caught" = ${#mutants[@]} ]; then
  ok "promtool test rules fails on ${#mutants[@]}/${#mutants[@]} broken rules (a longer 'for', health checks counted as 5xx, wrong backup and certificate thresholds)"
else
  bad "promtool test rules missed $((${#mutants[@]} - caught)) of ${#mutants[@]} broken rules"
fi

# --- 5. fail2ban filter -----------------------------------------------------------
filter=nixos/files/fail2ban/hubbub-auth.conf
f2b=$work/f2b
mkdir -p "$f2b"
# Failures as the buffs role logs them: stderr text (as captured from a real run),
# JSON lines, and journal entries as fail2ban's systemd backend formats them.
cat >"$f2b/failures.log" <<'EOF'
2026-11-22T13:39:45.243126Z  WARN hubbub::roles::buffs::auth: authentication failed client_ip=127.0.0.1 route=/api/buffs
2026-11-22T13:39:45.254558Z  WARN hubbub::roles::buffs::auth: authentication failed client_ip=2001:db8::7 route=/buff
{"timestamp":"2026-11-22T13:40:04.930140Z","level":"WARN","message":"authentication failed client_ip=203.0.113.7 route=/api/buffs","target":"hubbub::roles::buffs::auth"}
{"timestamp":"2026-11-22T13:40:05.930140Z","level":"WARN","message":"authentication failed client_ip=2001:db8:0:1::42 route=/api/buffs","target":"hubbub::roles::buffs::auth"}
Nov 22 13:39:46 app1 hubbub[812]: authentication failed client_ip=198.51.100.23 route=/api/buffs
Nov 22 13:39:47 app1 hubbub[812]: authentication failed client_ip=::1 route=/buff
app1 hubbub[812]: authentication failed client_ip=192.0.2.1 route=/api/buffs
app1 hubbub[812]: 2026-11-22T13:39:48.000001Z  WARN hubbub::roles::buffs::auth: authentication failed client_ip=fe80::1:2 route=/buff
EOF
want_ips="127.0.0.1 2001:db8::7 203.0.113.7 2001:db8:0:1::42 198.51.100.23 ::1 192.0.2.1 fe80::1:2"
# Realistic other lines, several carrying client_ip= or the failure text in
# attacker-controlled places (paths, headers, other fields).
cat >"$f2b/others.log" <<'EOF'
2026-11-22T13:39:41.259458Z  INFO hubbub::startup: hubbub is serving public=127.0.0.1:28090 admin=127.0.0.1:28091 roles=["visitors", "buffs"]
2026-11-22T13:39:45.243360Z  INFO hubbub::access: request request_id=cca320b5-1e9a-4ceb-a6f8-b3c787f50062 client_ip=127.0.0.1 method=POST route="/api/buffs" status=401 latency_ms=0.6496460000000001
2026-11-22T13:39:45.266219Z  INFO hubbub::access: request request_id=b533aba2-6e9b-4ebc-bbcf-4b8d2bed6325 client_ip=6.6.6.6 method=GET route="unmatched" status=404 latency_ms=0.29935999999999996
2026-11-22T13:39:45.266219Z  WARN hubbub::http::error: unhandled rejection rejection=NotFound path="/authentication failed client_ip=6.6.6.6 route=/x"
2026-11-22T13:39:45.266219Z  WARN hubbub::http::error: unhandled rejection rejection=NotFound path="/x" note=authentication failed client_ip=6.6.6.1 route=/x
2026-11-22T13:39:45.266219Z  INFO hubbub::access: request client_ip=6.6.6.6 method=GET route="unmatched" status=404 agent="authentication failed client_ip=6.6.6.7 route=/x"
2026-11-22T13:39:45.243126Z  INFO hubbub::roles::buffs::auth: authentication failed client_ip=6.6.6.12 route=/api/buffs
2026-11-22T13:39:45.243126Z  WARN hubbub::roles::buffs::auth: authentication failed client_ip=6.6.6.13 route=/api/buffs trailing=junk
{"timestamp":"2026-11-22T13:40:04.930355Z","level":"INFO","message":"request","request_id":"17d58397-a4e8-4fd0-9b5b-868c81d80011","client_ip":"127.0.0.1","method":"POST","route":"/api/buffs","status":401,"latency_ms":0.47592100000000004,"target":"hubbub::access"}
{"timestamp":"2026-11-22T13:40:05.930355Z","level":"WARN","message":"unhandled rejection","rejection":"authentication failed client_ip=6.6.6.8 route=/x","target":"hubbub::http::error"}
{"timestamp":"2026-11-22T13:40:05.930355Z","level":"WARN","message":"x\",\"message\":\"authentication failed client_ip=6.6.6.9 route=/x","target":"hubbub::http::error"}
{"timestamp":"2026-11-22T13:40:11.920131Z","level":"INFO","message":"SIGTERM received; shutting down","target":"hubbub::lifecycle"}
Nov 22 13:39:48 app1 hubbub[812]: request
Nov 22 13:39:48 app1 sshd[22]: authentication failed client_ip=6.6.6.10 route=/api/buffs
Nov 22 13:39:49 app1 hubbub[812]: authentication failed client_ip=not-an-address route=/api/buffs
Nov 22 13:39:49 app1 hubbub[812]: GET /authentication failed client_ip=6.6.6.11 route=/x
Nov 22 13:39:50 lb haproxy[301]: 6.6.6.14:4711 [22/Nov/2026:13:39:50.001] https~ buffs/app1 0/0/0/1/1 401 210 - - ---- 1/1/0/0/0 0/0 "POST /api/buffs?authentication%20failed%20client_ip=6.6.6.15 HTTP/2.0"
EOF
f2b_count() { fail2ban-regex "$1" "$filter" 2>&1 | sed -n 's/^Lines: \([0-9]*\) lines, \([0-9]*\) ignored, \([0-9]*\) matched, \([0-9]*\) missed.*/\1 \3/p'; }
read -r total matched <<<"$(f2b_count "$f2b/failures.log")"
ips=$(fail2ban-regex -o ip "$f2b/failures.log" "$filter" 2>/dev/null | tr '\n' ' ' | sed 's/ $//') || true
if [ "$total" = 8 ] && [ "$matched" = 8 ] && [ "$ips" = "$want_ips" ]; then
  ok "fail2ban-regex: 8/8 failure lines matched (IPv4 and IPv6; journal, text, JSON), addresses extracted exactly"
else
  bad "fail2ban-regex failures: $matched of $total matched, addresses: $ips"
fi
read -r total matched <<<"$(f2b_count "$f2b/others.log")"
if [ "$total" = "$(wc -l <"$f2b/others.log")" ] && [ "$matched" = 0 ]; then
  ok "fail2ban-regex: 0 of $total other lines matched (access logs, the failure text in paths, fields and other programs)"
else
  bad "fail2ban-regex: $matched of $total other lines matched: $(fail2ban-regex -o msg "$f2b/others.log" "$filter" 2>&1 || true)"
fi
if grep -q '^journalmatch = _SYSTEMD_UNIT=hubbub-buffs.service$' "$filter"; then
  ok "fail2ban filter reads the hubbub-buffs.service journal (journalmatch)"
else
  bad "fail2ban filter: journalmatch for hubbub-buffs.service missing"
fi

# --- 6. grafana dashboard -----------------------------------------------------------
if python3 - nixos/files/grafana/hubbub.json "$work/haproxy-metrics.txt" "$work/dashboard-rules.json" <<'EOF'; then
import json, re, sys
path, haproxy_metrics, rules_out = sys.argv[1:]
failed = False
def ok(msg): print("ok: " + msg)
def bad(msg):
    global failed
    failed = True
    print("FAIL: " + msg)
try:
    dash = json.load(open(path))
except ValueError as e:
    print("FAIL: grafana dashboard is not JSON: %s" % e)
    sys.exit(1)
panels = [p for p in dash["panels"] if p.get("type") != "row"]
targets = [t for p in panels for t in p.get("targets", [])]
if dash.get("uid") and dash.get("title") and panels and all(p["datasource"]["uid"] == "prometheus" for p in panels) and all(t.get("expr") for t in targets):
    ok("grafana dashboard: JSON with uid, %d panels, %d queries, all on the provisioned datasource (uid prometheus)" % (len(panels), len(targets)))
else:
    bad("grafana dashboard: missing uid/title, panels, datasource or expressions")
titles = " ".join(p["title"].lower() for p in panels)
for topic in ["request rate", "5xx", "p99", "sse clients", "outbox backlog", "mqtt connected", "visits", "authentication failures"]:
    if topic not in titles:
        bad("grafana dashboard: no panel about %s" % topic)
hubbub = {"hubbub_http_requests_total", "hubbub_http_request_duration_seconds", "hubbub_visits_total",
          "hubbub_new_visitors_total", "hubbub_stats_cache_hits_total", "hubbub_stats_cache_misses_total",
          "hubbub_chat_messages_posted_total", "hubbub_chat_messages_published_total",
          "hubbub_chat_publish_failures_total", "hubbub_outbox_backlog", "hubbub_sse_clients",
          "hubbub_sse_events_sent_total", "hubbub_sse_slow_client_disconnects_total", "hubbub_mqtt_connected",
          "hubbub_buffs_created_total", "hubbub_auth_failures_total", "hubbub_buffs_cache_hits_total",
          "hubbub_buffs_cache_misses_total", "hubbub_build_info",
          # textfile-collector metrics of the backup and the edge certificate (nixos/lib/alert-rules.nix)
          "hubbub_backup_last_success_timestamp_seconds", "hubbub_tls_certificate_expiry_timestamp_seconds"}
node = {"node_filesystem_avail_bytes", "node_filesystem_size_bytes", "node_filesystem_readonly"}
try:
    live_haproxy = set(re.findall(r"^(haproxy_[a-z0-9_]+)", open(haproxy_metrics).read(), re.M))
except OSError:
    live_haproxy = set()  # haproxy did not run: its metrics count as unknown
used = set()
for t in targets:
    used |= set(re.findall(r"\b((?:hubbub|haproxy|node|process)_[a-z0-9_]+|up)\b", t["expr"]))
unknown = []
for name in sorted(used):
    base = re.sub(r"_(bucket|sum|count)$", "", name) if name.startswith("hubbub_http_request_duration") else name
    if name == "up" or base in hubbub or name in node or name in live_haproxy:
        continue
    unknown.append(name)
if unknown:
    bad("grafana dashboard uses unknown metrics: %s" % ", ".join(unknown))
else:
    ok("grafana dashboard: all %d metric names are hubbub's, node exporter's or live HAProxy's" % len(used))
# Every query is valid PromQL: promtool checks them as recording rules.
rules = [{"record": "dashboard:q%d" % i, "expr": t["expr"].replace("$__rate_interval", "5m")} for i, t in enumerate(targets)]
json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(rules_out, "w"))
sys.exit(1 if failed else 0)
EOF
  if out=$(promtool check rules "$work/dashboard-rules.json" 2>&1); then
    ok "grafana dashboard: every query is valid PromQL (promtool)"
  else
    bad "grafana dashboard PromQL: $out"
  fi
else
  fail=1
fi

exit $fail
