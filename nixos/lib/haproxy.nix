# The whole haproxy.cfg of the hubbub edge, as a string. Builtins only.
#
#   import ./haproxy.nix {
#     inventory = import ./inventory.nix;   # production: pools found through DNS, metrics address and domain
#     certificate = "/var/lib/acme/<domain>/full.pem";
#   }
#   import ./haproxy.nix {                  # a fixed list of servers (tests): everything explicit
#     backends = { visitors = [ { name = "v1"; address = "127.0.0.1"; port = 18081; } ... ]; chat = [...]; broadcast = [...]; buffs = [...]; };
#     certificate = "/tmp/x/edge.pem";
#     httpBind = "127.0.0.1:18080"; httpsBind = "127.0.0.1:18443"; metricsBind = "127.0.0.1:18405";
#   }
#
# Arguments (all optional except `certificate` and one of `inventory`/`backends`):
#   inventory      the inventory; its pools are found through DNS (below), and it gives
#                  `domain` and `metricsBind` (first proxy host)
#   backends       instead: a fixed list, { visitors; chat; broadcast; buffs; }, each a list
#                  of { name; address; port; }
#   certificate    ONE PEM file holding the private key followed by the certificate chain
#                  (what the NixOS acme module writes as full.pem); never a store path
#   domain         Host header of the health checks (default: inventory.domain or "localhost")
#   httpBind, httpsBind   bind address(es), a string or a list (default "*:80" / "*:443");
#                  80 redirects to https on the port of the first httpsBind
#   metricsBind    address:port of the Prometheus endpoint (GET /metrics), or null for none
#   acmeChallenge  null, or "address:port" of the ACME HTTP-01 responder: requests for
#                  /.well-known/acme-challenge/ on the http frontend go there instead of redirecting
#   limits         overrides of the per-client limits below (a partial attrset is fine)
#   maxconn        global connection limit (20000); HAProxy wants about 2 file descriptors
#                  per connection and refuses to start when it cannot raise its FD limit
#                  that far (fine under systemd; pass e.g. 4000 in a shell with `ulimit -Hn` 20000)
#   streamTimeout  inactivity limit of an SSE stream (`timeout tunnel` of the broadcast pool, 1h)
#   checkInterval  health-check interval (2s; a server is DOWN after 2 failed checks)
#   hstsMaxAge, log   HSTS max-age in seconds; the `log` target (stdout: the journal under systemd)
#
# Pools found through DNS (with `inventory`): each pool is a `server-template` of
# inventory.discovery.maxInstances slots resolving <role>.<discovery domain> (one A record
# per instance, nixos/lib/discovery.nix) on the role's port of the plan, through the
# `resolvers discovery` section (inventory.discovery.nameserver, every `resolveInterval`).
# An address appearing in the answers fills a free slot, which serves at once (an instance
# registers only once it is ready) and is health-checked like any server; an address gone
# from the answers for inventory.discovery.holdObsolete puts its slot into maintenance: no
# new requests, open streams keep flowing until the instance closes them. Servers come and
# go without a reload. When the name server fails, the last answer is kept for
# `dnsOutageHold` (health checks still take dead instances out meanwhile).
#
# What the text does: TLS on httpsBind (h2 and http/1.1, TLS >= 1.2, HSTS), http redirected
# (301); routing by path: /api/chat/<channel>/events and /api/buffs/events -> broadcast
# (leastconn, long tunnel timeout), /api/chat[/...] and /chat/... -> chat, /api/buffs[/...],
# /buff, /buffs[/...], /admin/buffs[/...] -> buffs, everything else -> visitors; health checks GET /readyz (200 = up);
# the client's X-Forwarded-For, Forwarded, X-Real-IP, X-Forwarded-Host are dropped, then
# X-Forwarded-For (the client address) and X-Forwarded-Proto https set; access log to `log`.
# It starts with its own `global` section: services.haproxy puts one with the stats socket
# before it, and HAProxy merges them (tests/nix/renderers.sh checks exactly that layout).
#
# Per-client limits (stick tables keyed by source address; answers 429 with Retry-After):
#   connections      concurrent connections (SSE streams included)
#   requestsPer10s   requests except the SSE streams. An open stream is a single request:
#                    rules run only when a request starts, so a client that exceeds the rate
#                    gets 429 for new requests while its open streams keep flowing
#   streamsPerMinute new SSE streams (a separate budget, so the reconnect after a failover
#                    is not eaten by ordinary page traffic)
{
  inventory ? null,
  backends ? null,
  certificate,
  domain ? inventory.domain or "localhost",
  httpBind ? "*:80",
  httpsBind ? "*:443",
  metricsBind ? null,
  acmeChallenge ? null,
  limits ? {},
  maxconn ? 20000,
  hstsMaxAge ? 63072000,
  streamTimeout ? "1h",
  checkInterval ? "2s",
  resolveInterval ? "1s",
  dnsOutageHold ? "1h",
  log ? "stdout format raw local0 info",
}: let
  topology =
    if inventory == null
    then null
    else import ./topology.nix inventory;

  discovery =
    if backends != null
    then null
    else if inventory != null
    then inventory.discovery
    else throw "haproxy.nix: pass `backends` or `inventory`";

  metricsAddress =
    if metricsBind != null
    then metricsBind
    else if topology != null && topology.proxyHost != null
    then "${topology.proxyHost.address}:${toString inventory.ports.haproxyMetrics}"
    else null;

  lim =
    {
      connections = 100;
      requestsPer10s = 200;
      streamsPerMinute = 60;
    }
    // limits;

  toList = x:
    if builtins.isList x
    then x
    else [x];
  lines = builtins.concatStringsSep "\n";

  httpsBinds = toList httpsBind;
  httpsPort = let
    m = builtins.match "[^ ]*:([0-9]+)( .*)?" (builtins.head httpsBinds);
  in
    if m == null
    then "443"
    else builtins.head m;

  tooMany = what: ''status 429 content-type text/plain string "too many ${what}" hdr Retry-After 10'';

  # Health checks, shared by every pool: GET /readyz must answer 200 (ready or
  # degraded; 503 when a required dependency is down).
  checks = ''
    option httpchk
    http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host ${domain}
    http-check expect status 200
  '';

  checkArgs = "check inter ${checkInterval} fall 2 rise 2";
  server = s: "server ${s.name} ${s.address}:${toString s.port} ${checkArgs}";
  servers = role:
    if discovery == null
    then lines (map server (backends.${role} or []))
    else "server-template ${role} 1-${toString discovery.maxInstances} ${role}.${discovery.domain}:${toString inventory.ports.public.${role}} resolvers discovery init-addr none resolve-prefer ipv4 ${checkArgs}";

  backend = role: extra: ''
    backend ${role}
    ${extra}${checks}${servers role}
  '';

  # Answers are re-read every resolveInterval. An error (timeout, refused,
  # other) keeps the last good answer for dnsOutageHold instead of emptying
  # the pools; NXDOMAIN (no instance of a role at all) is believed after 30 s.
  resolvers =
    if discovery == null
    then ""
    else ''
      resolvers discovery
      nameserver dns ${discovery.nameserver}
      accepted_payload_size 8192
      resolve_retries 3
      timeout resolve ${resolveInterval}
      timeout retry 1s
      hold obsolete ${discovery.holdObsolete}
      hold nx 30s
      hold timeout ${dnsOutageHold}
      hold refused ${dnsOutageHold}
      hold other ${dnsOutageHold}
    '';

  # Section headers at the left margin, everything else indented by two spaces,
  # one empty line between sections.
  indent = text: let
    stripped = map (line: builtins.head (builtins.match "[ ]*(.*)" line)) (builtins.filter builtins.isString (builtins.split "\n" text));
    noBlank = builtins.filter (l: l != "") stripped;
  in
    lines (map (l:
      if builtins.match "(global|defaults|frontend|backend|resolvers)( .*)?" l != null
      then "\n${l}"
      else "  ${l}")
    noBlank);

  redirect =
    if httpsPort == "443"
    then "http-request redirect scheme https code 301"
    else "http-request redirect code 301 location https://%[req.hdr(host),field(1,:)]:${httpsPort}%[pathq]";

  acme = acmeChallenge != null;

  config = ''
    global
    log ${log}
    maxconn ${toString maxconn}
    # Old processes of a reload keep long SSE streams at most this long.
    hard-stop-after 5m
    ssl-default-bind-ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305
    ssl-default-bind-ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256
    ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets

    defaults
    mode http
    log global
    option dontlognull
    # Wait for the whole (small) request body before bothering a role.
    option http-buffer-request
    option redispatch
    retries 2
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    # Slow clients (slowloris): headers and body within 10 s, idle keep-alive 10 s.
    timeout http-request 10s
    timeout http-keep-alive 10s
    timeout queue 10s
    timeout check 3s
    timeout client-fin 10s

    ${resolvers}
    backend st_connections
    # Per-client counters, keyed by source address (IPv4 is stored mapped).
    stick-table type ipv6 size 1m expire 1m store conn_cur
    backend st_requests
    stick-table type ipv6 size 1m expire 1m store http_req_rate(10s)
    backend st_streams
    stick-table type ipv6 size 1m expire 2m store http_req_rate(1m)

    frontend http
    ${lines (map (b: "bind ${b}") (toList httpBind))}
    option httplog
    tcp-request connection track-sc0 src table st_connections
    http-request track-sc1 src table st_requests
    http-request deny ${tooMany "connections"} if { sc0_conn_cur gt ${toString lim.connections} }
    http-request deny ${tooMany "requests"} if { sc1_http_req_rate gt ${toString lim.requestsPer10s} }
    ${
      if acme
      then ''
        acl acme_challenge path_beg /.well-known/acme-challenge/
        ${redirect} unless acme_challenge
        use_backend acme if acme_challenge''
      else redirect
    }

    frontend https
    ${lines (map (b: "bind ${b} ssl crt ${certificate} alpn h2,http/1.1") httpsBinds)}
    option httplog
    acl stream path_reg ^/api/chat/[^/]+/events$
    acl stream path /api/buffs/events
    acl chat path /api/chat /chat
    acl chat path_beg /api/chat/ /chat/
    acl buffs path /api/buffs /buff /buffs /admin/buffs
    acl buffs path_beg /api/buffs/ /buffs/ /admin/buffs/
    tcp-request connection track-sc0 src table st_connections
    http-request track-sc1 src table st_requests unless stream
    http-request track-sc2 src table st_streams if stream
    http-request deny ${tooMany "connections"} if { sc0_conn_cur gt ${toString lim.connections} }
    http-request deny ${tooMany "requests"} if !stream { sc1_http_req_rate gt ${toString lim.requestsPer10s} }
    http-request deny ${tooMany "streams"} if stream { sc2_http_req_rate gt ${toString lim.streamsPerMinute} }
    # Only the proxy says who the client is: drop what the client claims, then add ours.
    http-request del-header X-Forwarded-For
    http-request del-header Forwarded
    http-request del-header X-Real-IP
    http-request del-header X-Forwarded-Host
    http-request set-header X-Forwarded-Proto https
    option forwardfor
    http-after-response set-header Strict-Transport-Security "max-age=${toString hstsMaxAge}"
    use_backend broadcast if stream
    use_backend chat if chat
    use_backend buffs if buffs
    default_backend visitors

    ${
      if metricsAddress == null
      then ""
      else ''
        frontend metrics
        bind ${metricsAddress}
        no log
        http-request use-service prometheus-exporter if { path /metrics }
        http-request return status 404
      ''
    }
    ${backend "visitors" "balance roundrobin\n"}
    ${backend "chat" "balance roundrobin\n"}
    ${backend "broadcast" ''
      # SSE: long-lived streams, spread by count. While a response streams,
      # `timeout tunnel` (inactivity both ways; the role sends a keepalive every
      # 15 s) replaces the client and server timeouts.
      balance leastconn
      timeout tunnel ${streamTimeout}
    ''}
    ${backend "buffs" "balance roundrobin\n"}
    ${
      if acme
      then ''
        backend acme
        server acme ${acmeChallenge}
      ''
      else ""
    }
  '';
in
  builtins.substring 1 (-1) (indent config) + "\n"
