# haproxy.cfg of the journal gateway on the logging host: TLS on the private
# address with client certificates required (`verify required`, the internal
# CA), passed on as plain TCP to systemd-journal-remote listening on loopback
# over HTTP. nixpkgs builds systemd without GnuTLS, so journal-remote cannot
# do TLS itself (its ServerKeyFile/TrustedCertificateFile were silently
# ignored); journal-upload does TLS through libcurl and presents each host's
# certificate. Builtins only: tests/nix/log-shipping.sh renders this file and
# runs the real haproxy with it.
#
#   import ./journal-gateway.nix {
#     listen = "10.42.0.30:19532";     # where uploaders connect (HTTPS)
#     receiver = "127.0.0.1:19533";    # systemd-journal-remote, plain HTTP
#     clientCa = "/nix/store/...-ca.pem";
#   }
#
# The server certificate is `<certificate>` and its key `<certificate>.key`
# (HAProxy's `ssl-load-extra-files key`); by default both come from the unit's
# credentials directory (LoadCredential=), so the key never enters the store.
{
  listen,
  receiver,
  clientCa,
  certificate ? "\${CREDENTIALS_DIRECTORY}/server.pem",
  maxConnections ? 512,
}: ''
  global
    log stderr format short local0 info
    maxconn ${toString maxConnections}
    ssl-load-extra-files key
    ssl-default-bind-options ssl-min-ver TLSv1.2

  defaults
    mode tcp
    log global
    option tcplog
    timeout connect 5s
    # journal-upload keeps its connection between batches of entries.
    timeout client 10m
    timeout server 10m

  frontend journal-upload
    bind ${listen} ssl crt "${certificate}" ca-file "${clientCa}" verify required
    default_backend journal-remote

  backend journal-remote
    server journal-remote ${receiver}
''
