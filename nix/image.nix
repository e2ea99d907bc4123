# An OCI image of hubbub for users outside NixOS (`docker load < result`):
# no shell, runs as nobody (65534), `hubbub serve` as entrypoint (arguments
# given to `docker run` pick the roles). State lives in /var/lib/hubbub, a
# volume owned by nobody; configuration comes from HUBBUB_* variables or a
# mounted file (HUBBUB_CONFIG).
{
  dockerTools,
  hubbub,
  lib,
}:
dockerTools.buildLayeredImage {
  name = "hubbub";
  tag = hubbub.version;
  # /etc/passwd and /etc/group with root and nobody, so the runtime user has a name.
  contents = [dockerTools.fakeNss];
  # Owned by nobody inside the image (fakeroot); /tmp world-writable and sticky.
  fakeRootCommands = ''
    mkdir -p var/lib/hubbub tmp
    chown 65534:65534 var/lib/hubbub
    chmod 0700 var/lib/hubbub
    chmod 1777 tmp
  '';
  config = {
    User = "65534:65534";
    Entrypoint = [(lib.getExe hubbub) "serve"];
    Env = [
      "STATE_DIRECTORY=/var/lib/hubbub"
      # Listen on every interface inside the container (default: 127.0.0.1).
      "HUBBUB_HTTP__LISTEN=0.0.0.0:8080"
      "HUBBUB_ADMIN__LISTEN=0.0.0.0:9464"
    ];
    ExposedPorts = {
      "8080/tcp" = {};
      "9464/tcp" = {};
    };
    Volumes = {"/var/lib/hubbub" = {};};
    WorkingDir = "/var/lib/hubbub";
    Labels = {
      "org.opencontainers.image.title" = "hubbub";
      "org.opencontainers.image.version" = hubbub.version;
      "org.opencontainers.image.revision" = hubbub.info.commit;
      "org.opencontainers.image.licenses" = "MIT";
    };
  };
}
