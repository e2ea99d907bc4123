# Resource limits of the hubbub role units. Pure data, builtins only, like
# hardening.nix: the module takes the default and the serviceConfig from here,
# and tests/nix/modules.sh renders the very same attrset into a unit file.
{
  # A broadcast instance holds one descriptor per SSE client (and the other roles
  # one per request in flight): systemd's default soft limit of 1,024 refuses
  # connections past about a thousand. Set as one number, it is both the soft and
  # the hard limit, so the process needs no setrlimit (filtered by ~@resources).
  openFiles = 65536;
  serviceConfig = openFiles: {LimitNOFILE = openFiles;};
}
