# Who may do what on the MQTT broker: the least-privilege ACL table, as data.
# Builtins only. Read by nixos/profiles/broker.nix and by the tests.
#
#   acl = import ./broker-acl.nix;
#   acl.users.<user>.topics   [ { access = "read" | "write" | "readwrite"; topic; } ]
#   acl.userNames             [ "broadcast" "buffs" "chat" ]
#   acl.aclStrings.<user>     [ "write hubbub/chat/+" ]: the form of
#                             services.mosquitto.listeners.*.users.<user>.acl
#   acl.aclFile               the mosquitto acl_file text, exactly what the NixOS mosquitto
#                             module writes for a listener with these users and no extra
#                             listener `acl` lines ("user <n>" then "topic <acl string>" lines,
#                             users in name order, no trailing newline)
#
# Mosquitto semantics: `write` allows publishing only, `read` subscribing and receiving;
# `+` matches exactly one topic level, `#` any number. Denied publishes are dropped silently.
let
  users = {
    # The chat role publishes each posted message to its channel's topic.
    chat.topics = [
      {
        access = "write";
        topic = "hubbub/chat/+";
      }
    ];
    # The buffs role publishes new buffs and receives them back: every instance drops
    # its cached buff lists when any instance creates a buff.
    buffs.topics = [
      {
        access = "readwrite";
        topic = "hubbub/buffs";
      }
    ];
    # The broadcast role subscribes to hubbub/chat/+ and hubbub/buffs and publishes nothing.
    broadcast.topics = [
      {
        access = "read";
        topic = "hubbub/#";
      }
    ];
  };

  userNames = builtins.attrNames users;
  aclStrings = builtins.mapAttrs (_: user: map (t: "${t.access} ${t.topic}") user.topics) users;
in {
  inherit users userNames aclStrings;
  aclFile = builtins.concatStringsSep "\n" (builtins.concatMap (name: ["user ${name}"] ++ map (acl: "topic ${acl}") aclStrings.${name}) userNames);
}
