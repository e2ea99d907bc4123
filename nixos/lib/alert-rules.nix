# Prometheus alerting rules for hubbub, as Nix data rendered to JSON (a valid
# Prometheus rule file: JSON is YAML). Builtins only.
#
#   import ./alert-rules.nix   # => the rule file text (a string)
#
# Checked by tests/nix/renderers.sh with `promtool check rules` and unit-tested by
# nixos/files/prometheus/alert-rules.test.yml and alert-rules-daily.test.yml
# (`promtool test rules`, with the rendered file as alert-rules.json beside them).
# Alerts: InstanceDown, PostgresDown, RedisDown, HubbubHigh5xxRatio,
# HubbubHighLatencyP99, HubbubOutboxBacklogGrowing, HubbubMqttDisconnected, HostDiskFillingUp,
# HostDiskAlmostFull, HubbubBackupTooOld, HubbubBackupMissing,
# TlsCertificateExpiringSoon, TlsCertificateExpiryImminent.
#
# Metrics the alerts need besides the hubbub, node and exporter ones (the
# modules must produce them; job names and the `host` label come from
# nixos/lib/topology.nix):
#   hubbub_backup_last_success_timestamp_seconds{database}   gauge, Unix time of the
#       last successful dump. The database host writes it to the node exporter's textfile
#       collector directory from ExecStartPost of postgresqlBackup-<db>.service (runs only
#       when the dump succeeded), atomically (write a temporary file, then mv).
#   hubbub_tls_certificate_expiry_timestamp_seconds{domain}  gauge, notAfter of the edge
#       certificate as Unix time (`openssl x509 -enddate`). The proxy host writes it to
#       the textfile collector directory from an hourly timer.
let
  # Health and metrics endpoints say nothing about user traffic.
  userRoutes = ''route!~"/healthz|/readyz|/metrics"'';

  rule = alert: expr: for: severity: summary: description: {
    inherit alert expr for;
    labels = {inherit severity;};
    annotations = {inherit summary description;};
  };

  fsSelector = ''fstype!~"tmpfs|ramfs|squashfs|overlay|nsfs|fuse.*",mountpoint!~"/nix/store|/boot.*"'';

  groups = [
    {
      name = "hubbub-availability";
      rules = [
        (rule "InstanceDown" "up == 0" "2m" "critical"
          "{{ $labels.job }} on {{ $labels.host }} is down"
          "Prometheus could not scrape {{ $labels.instance }} (job {{ $labels.job }}) for 2 minutes.")
        # The exporters keep answering when their server is down, so `up` stays 1;
        # and HAProxy answers 503 itself once no role is ready, which hubbub's own
        # 5xx ratio never sees.
        (rule "PostgresDown" "pg_up == 0" "1m" "critical"
          "PostgreSQL on {{ $labels.host }} is down"
          "The postgres exporter on {{ $labels.host }} cannot reach PostgreSQL: every role is unready and HAProxy answers 503. See journalctl -u postgresql on {{ $labels.host }}.")
        (rule "RedisDown" "redis_up == 0" "2m" "warning"
          "Redis on {{ $labels.host }} is down"
          "The redis exporter on {{ $labels.host }} cannot reach Redis: hubbub serves from PostgreSQL (degraded, slower) and rate limits are per instance. See journalctl -u redis-hubbub on {{ $labels.host }}.")
        (rule "HubbubHigh5xxRatio" ''
            sum by (role) (rate(hubbub_http_requests_total{status=~"5..",${userRoutes}}[5m]))
              / sum by (role) (rate(hubbub_http_requests_total{${userRoutes}}[5m]))
              > 0.05
            and sum by (role) (rate(hubbub_http_requests_total{${userRoutes}}[5m])) > 0.1
          '' "5m" "critical"
          "hubbub {{ $labels.role }}: {{ $value | humanizePercentage }} of requests fail with 5xx"
          "More than 5% of the {{ $labels.role }} requests answered 5xx over the last 5 minutes (with at least 0.1 requests/s).")
        (rule "HubbubHighLatencyP99" ''
            histogram_quantile(0.99, sum by (role, le) (rate(hubbub_http_request_duration_seconds_bucket{${userRoutes}}[5m])))
              > 0.5
          '' "10m" "warning"
          "hubbub {{ $labels.role }}: p99 latency {{ $value | humanizeDuration }}"
          "The 99th percentile of the {{ $labels.role }} response time has been above 500 ms for 10 minutes.")
        (rule "HubbubOutboxBacklogGrowing" ''
            hubbub_outbox_backlog > 0 and deriv(hubbub_outbox_backlog[10m]) > 0
          '' "10m" "warning"
          "hubbub outbox {{ $labels.outbox }} on {{ $labels.host }} keeps growing ({{ $value }})"
          "Stored messages are not reaching the broker: the {{ $labels.outbox }} backlog has been positive and growing for 10 minutes. Check the broker and hubbub_mqtt_connected.")
        (rule "HubbubMqttDisconnected" "hubbub_mqtt_connected == 0" "2m" "critical"
          "{{ $labels.job }} on {{ $labels.host }} lost the MQTT broker"
          "{{ $labels.instance }} has not been connected to the broker for 2 minutes: live updates stop and outboxes grow.")
      ];
    }
    {
      name = "hubbub-hosts";
      rules = [
        (rule "HostDiskFillingUp" ''
            predict_linear(node_filesystem_avail_bytes{${fsSelector}}[6h], 24 * 3600) < 0
            and node_filesystem_avail_bytes{${fsSelector}} / node_filesystem_size_bytes{${fsSelector}} < 0.25
            and node_filesystem_readonly{${fsSelector}} == 0
          '' "30m" "warning"
          "{{ $labels.mountpoint }} on {{ $labels.host }} fills up within 24 h"
          "At the rate of the last 6 hours, {{ $labels.mountpoint }} ({{ $labels.device }}) on {{ $labels.host }} runs out of space within a day; less than 25% is left.")
        (rule "HostDiskAlmostFull" ''
            node_filesystem_avail_bytes{${fsSelector}} / node_filesystem_size_bytes{${fsSelector}} < 0.05
            and node_filesystem_readonly{${fsSelector}} == 0
          '' "5m" "critical"
          "{{ $labels.mountpoint }} on {{ $labels.host }} is almost full"
          "Less than 5% of {{ $labels.mountpoint }} ({{ $labels.device }}) on {{ $labels.host }} is free.")
      ];
    }
    {
      name = "hubbub-backup-and-tls";
      rules = [
        (rule "HubbubBackupTooOld" ''
            time() - hubbub_backup_last_success_timestamp_seconds > 26 * 3600
          '' "5m" "critical"
          "The last good backup of {{ $labels.database }} is older than 26 h"
          "postgresqlBackup-{{ $labels.database }} on {{ $labels.host }} last succeeded {{ $value | humanizeDuration }} ago. See journalctl -u postgresqlBackup-{{ $labels.database }}.")
        (rule "HubbubBackupMissing" ''
            count(up{job="postgres"}) > 0 unless count(hubbub_backup_last_success_timestamp_seconds) > 0
          '' "26h" "critical"
          "No successful database backup was ever recorded"
          "A database host has been scraped for 26 hours but hubbub_backup_last_success_timestamp_seconds does not exist: the backup has never succeeded (or the metric is not written).")
        (rule "TlsCertificateExpiringSoon" ''
            hubbub_tls_certificate_expiry_timestamp_seconds - time() < 14 * 86400
          '' "1h" "warning"
          "The certificate of {{ $labels.domain }} expires in {{ $value | humanizeDuration }}"
          "ACME renews 30 days before expiry, so renewal has been failing. See journalctl -u acme-order-renew-{{ $labels.domain }} on {{ $labels.host }}.")
        (rule "TlsCertificateExpiryImminent" ''
            hubbub_tls_certificate_expiry_timestamp_seconds - time() < 3 * 86400
          '' "10m" "critical"
          "The certificate of {{ $labels.domain }} expires in {{ $value | humanizeDuration }}"
          "Browsers will refuse the site soon. Renew the certificate of {{ $labels.domain }} on {{ $labels.host }} now.")
      ];
    }
  ];
in
  builtins.toJSON {inherit groups;}
