# agenix rules: which keys can decrypt each secret (`agenix -e <file>`,
# `agenix -r` to re-encrypt everything after a key change).
#
# EXAMPLE KEYS: the admin and host keys below belong to the example hosts and
# their private halves are committed under nixos/tests/keys/ (INSECURE, for
# the VM tests). For a real deployment replace them with your admins' SSH keys
# and each host's /etc/ssh/ssh_host_ed25519_key.pub, then re-create every
# secret (docs/deploy.md, "First deployment").
let
  admins = [
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMNkiMPl3yorW5d8LMDecTWmyRbUvXPxsuLPx4V93J6a" # example admin (INSECURE)
  ];

  hosts = {
    allinone = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIByUGUbUkT8442LJwS95tvkCXf9gQcIveto+f6HMyqng";
    lb = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIM7clWA0/wVxKoHROsVF7rRv1Xb0QYW4Ce5CUd0qaJwE";
    app1 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGR6/8s4cMux2FJPBAlfStuo+vDfzk52tSRnmdmFbEio";
    app2 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIElwPnaSbkp3/pbPegGGToD76KKDiym/EkgOJqSLD5O7";
    data = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKiIrF0nNsJO+LLRRhDcETTfwGw3acEGQrU3SZHrUJLW";
    monitor = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGlQYVd+bK5Pdzyfg6ux+1pm/pgaEBad1BCwaN5gWYNk";
    ci = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFyMRb6NiVWRz4SGf0JIAbljbrUY/GPoHwLEuse72Osx";
    # The app autoscaling group of the AWS deployment (nixos/hosts/cloud.nix):
    # one identity for every instance, fetched at boot from SSM Parameter Store.
    app = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA5SS73q65W+mEPg1VhE58c+Suo2/gbM3BeRJ/qEZo0C";
  };

  to = names: {publicKeys = admins ++ map (name: hosts.${name}) names;};
in {
  # PostgreSQL role password of `hubbub`, for app hosts reaching the data host over TCP.
  "db-hubbub-password.age" = to ["data" "app1" "app2" "app"];
  # Redis requirepass (server and every hubbub host), and the exporter's environment file.
  "redis-password.age" = to ["allinone" "data" "app1" "app2" "app"];
  "redis-exporter-env.age" = to ["allinone" "data"];
  # Mosquitto users, one per role that talks to the broker.
  "mqtt-chat.age" = to ["allinone" "data" "app1" "app2" "app"];
  "mqtt-broadcast.age" = to ["allinone" "data" "app1" "app2" "app"];
  "mqtt-buffs.age" = to ["allinone" "data" "app1" "app2" "app"];
  # Private key of the broker's TLS listener (certificate: secrets/pki/mqtt-data.pem).
  "mqtt-tls-key.age" = to ["data"];
  # hubbub application secrets.
  "hubbub-visitors-salt.age" = to ["allinone" "app1" "app2" "app"];
  "hubbub-buffs-admin-tokens.age" = to ["allinone" "app1" "app2" "app"];
  # Monitoring: Alertmanager receiver URL (environment file), Grafana admin password and secret key.
  "alertmanager-env.age" = to ["allinone" "monitor"];
  "grafana-admin-password.age" = to ["allinone" "monitor"];
  "grafana-secret-key.age" = to ["allinone" "monitor"];
  # Journal shipping over HTTPS: the receiver's key and one client key per sending host.
  "journal-remote-key.age" = to ["monitor"];
  "journal-upload-lb-key.age" = to ["lb"];
  "journal-upload-app1-key.age" = to ["app1"];
  "journal-upload-app2-key.age" = to ["app2"];
  "journal-upload-data-key.age" = to ["data"];
  "journal-upload-ci-key.age" = to ["ci"];
  "journal-upload-app-key.age" = to ["app"];
  # Binary cache signing key of the CI host (public half: secrets/pki/binary-cache-key.pub).
  "binary-cache-key.age" = to ["ci"];
  # The internal CA's private key: admins only, to issue certificates for new hosts.
  "internal-ca-key.age" = to [];
}
