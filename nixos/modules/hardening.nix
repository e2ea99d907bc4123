# systemd sandboxing shared by every hubbub unit (the roles and the migrate
# oneshot). Pure data, builtins only: the NixOS module merges it into
# `serviceConfig`, and tests/nix/modules.sh renders the very same attrset into
# a unit file and scores it with `systemd-analyze security --offline=yes`
# (target: exposure <= 1.5).
#
# Values follow NixOS' rendering rules: `true`/`false` become yes/no, a list
# becomes one `Key=` line per element, "" clears the setting.
{
  # Identity: a transient UID named `hubbub` (shared by every hubbub unit on
  # the host while they run, so they share the state directory). nss-systemd
  # resolves the dynamic UID to the name `hubbub`, which is what PostgreSQL
  # peer authentication sees on the unix socket.
  DynamicUser = true;
  User = "hubbub";
  Group = "hubbub";
  StateDirectory = "hubbub";
  StateDirectoryMode = "0700";
  UMask = "0077";

  # File system
  ProtectSystem = "strict";
  ProtectHome = true;
  PrivateTmp = true;
  PrivateDevices = true;
  PrivateMounts = true;
  DevicePolicy = "closed";
  ProtectProc = "invisible";
  ProcSubset = "pid";

  # Users, capabilities, privileges
  PrivateUsers = true;
  CapabilityBoundingSet = "";
  AmbientCapabilities = "";
  NoNewPrivileges = true;
  RestrictSUIDSGID = true;
  RemoveIPC = true;
  KeyringMode = "private";

  # Kernel and system state
  ProtectKernelTunables = true;
  ProtectKernelModules = true;
  ProtectKernelLogs = true;
  ProtectControlGroups = true;
  ProtectClock = true;
  ProtectHostname = true;
  LockPersonality = true;
  MemoryDenyWriteExecute = true;
  RestrictRealtime = true;
  RestrictNamespaces = true;

  # System calls and sockets
  SystemCallArchitectures = "native";
  SystemCallFilter = [
    "@system-service"
    "~@privileged"
    "~@resources"
  ];
  SystemCallErrorNumber = "EPERM";
  RestrictAddressFamilies = [
    "AF_INET"
    "AF_INET6"
    "AF_UNIX"
  ];
}
