#!/usr/bin/env bash
# The AWS deployment (nixos/lib/opentofu.nix over the inventory) checked without
# AWS and without OpenTofu:
#   1. the rendered configuration evaluates to JSON with nix-instantiate;
#   2. it provisions the inventory: every fixed host as an instance at its address
#      in the hosts' subnet with its own security group and instance profile, the
#      app hosts as one autoscaling group (launch template from the app image,
#      subnets inside the private network, lifecycle hook, target tracking at the
#      inventory's CPU target, max size within HAProxy's discovery slots), a Cloud
#      Map namespace on the discovery domain with a service per role, an AMI per host;
#   3. every security-group rule is an nftables rule of that host and every
#      nftables rule is a security-group rule (topology.firewallPorts from the
#      private network, topology.publicPorts from anywhere);
#   4. every `${resource.reference}` names a resource, data source, local or variable
#      that exists; no secret value appears (only the SSM parameter names);
#   5. the cloud inventory's Prometheus scrape configs (DNS discovery of the app
#      instances) pass `promtool check config`;
#   6. where this machine has Terraform and a local mirror of the hashicorp/aws
#      provider (never downloaded), `terraform init -backend=false` and
#      `terraform validate` on the same JSON: a neighbour of the flake check
#      `opentofu-validate`, which runs OpenTofu with the provider nixpkgs pins
#      (docs/ci.md says what can disagree). Skipped, and said so, elsewhere;
#   7. the HAProxy configuration of the cloud lb (the VPC resolver, Cloud Map's
#      hold times) passes `haproxy -c`;
#   8. with HUBBUB_NIXPKGS_LIB (as tests/nix/hosts.sh): every cloud-* host
#      evaluated (tests/nix/cloud-hosts.nix): no failed assertion; amazon-init
#      off; the identity from SSM; each host's evaluated nftables rules equal to
#      its security group; the app instance's units ordered for the drain; and
#      the instance's scripts run against a stand-in AWS CLI (no AWS here): a
#      registration failing half-way withdraws what it registered, termination
#      deregisters even after a failed registration, the sweep removes exactly
#      the registrations of instances the group no longer has.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export NIX_CONFIG="build-users-group ="

fail=0
ok() { echo "ok: $*"; }
bad() {
  echo "FAIL: $*"
  fail=1
}
for tool in nix-instantiate python3 promtool; do
  command -v "$tool" >/dev/null || {
    bad "$tool is not installed (tests/run installs it)"
    exit 1
  }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

inv='(import ./nixos/lib/inventory.nix)'
if ! nix-instantiate --eval --strict --json -E "import ./nixos/lib/opentofu.nix { inventory = $inv; }" >"$work/main.tf.json" 2>"$work/err"; then
  bad "nixos/lib/opentofu.nix does not evaluate: $(cat "$work/err")"
  exit 1
fi
ok "nixos/lib/opentofu.nix renders $(wc -c <"$work/main.tf.json") bytes of OpenTofu JSON"

nix-instantiate --eval --strict --json -E "let
  inventory = $inv;
  cloud = import ./nixos/hosts/cloud.nix inventory;
  t = import ./nixos/lib/topology.nix cloud;
in {
  inherit (t) firewallPorts publicPorts;
  inherit (cloud) hosts privateNetwork discovery;
  inherit (inventory) cloud;
  roles = [\"visitors\" \"chat\" \"broadcast\" \"buffs\"];
  scrape = { scrape_configs = t.scrapeConfigs; };
}" >"$work/inventory.json" || {
  bad "the cloud inventory does not evaluate"
  exit 1
}

python3 - "$work/main.tf.json" "$work/inventory.json" "$work/prometheus.json" <<'EOF' || fail=1
import ipaddress, json, re, sys

tf = json.load(open(sys.argv[1]))
inv = json.load(open(sys.argv[2]))
json.dump(inv["scrape"], open(sys.argv[3], "w"))
res = tf.get("resource", {})
failed = False

def ok(msg):
    print("ok: " + msg)

def bad(msg):
    global failed
    failed = True
    print("FAIL: " + msg)

def ref(expr):
    return "${%s}" % expr

hosts, cloud, roles = inv["hosts"], inv["cloud"], inv["roles"]
private = ipaddress.ip_network(inv["privateNetwork"])
fixed = sorted(h for h in hosts if "elastic" not in hosts[h])
elastic = sorted(h for h in hosts if "elastic" in hosts[h])

# --- 2. every host provisioned ------------------------------------------------
host_subnet = ipaddress.ip_network(cloud["hostSubnet"]["cidr"])
problems = []
for h in fixed:
    inst = res.get("aws_instance", {}).get(h)
    if inst is None:
        problems.append(f"{h}: no aws_instance")
        continue
    addr = hosts[h]["privateAddress"]
    if inst.get("private_ip") != addr:
        problems.append(f"{h}: private_ip {inst.get('private_ip')} != {addr}")
    if ipaddress.ip_address(addr) not in host_subnet or res["aws_subnet"]["hosts"]["cidr_block"] != str(host_subnet):
        problems.append(f"{h}: {addr} outside the hosts' subnet")
    if inst.get("subnet_id") != ref("aws_subnet.hosts.id"):
        problems.append(f"{h}: not in the hosts' subnet")
    if inst.get("vpc_security_group_ids") != [ref(f"aws_security_group.{h}.id")]:
        problems.append(f"{h}: security groups {inst.get('vpc_security_group_ids')}")
    if inst.get("ami") != ref(f"aws_ami.{h}.id") or inst.get("iam_instance_profile") != ref(f"aws_iam_instance_profile.{h}.name"):
        problems.append(f"{h}: not its own image and instance profile")
    if inst.get("metadata_options", {}).get("http_tokens") != "required":
        problems.append(f"{h}: IMDSv1 allowed")
    if inst.get("instance_type") != cloud["instanceTypes"][h]:
        problems.append(f"{h}: instance type")
if set(res.get("aws_instance", {})) != set(fixed):
    problems.append(f"instances {sorted(res.get('aws_instance', {}))} but fixed hosts {fixed}")
if problems:
    bad("fixed hosts: " + "; ".join(problems))
else:
    ok(f"every fixed host ({', '.join(fixed)}) is an instance at its inventory address, with its own image, security group and instance profile, IMDSv2 only")

problems = []
asg = res.get("aws_autoscaling_group", {}).get("app", {})
lt = res.get("aws_launch_template", {}).get("app", {})
app_subnets = [s["cidr"] for s in cloud["appSubnets"]]
for h in elastic:
    if hosts[h]["elastic"]["subnets"] != app_subnets:
        problems.append(f"{h}: subnets differ from cloud.appSubnets")
for i, cidr in enumerate(app_subnets):
    net = ipaddress.ip_network(cidr)
    if not net.subnet_of(private):
        problems.append(f"app subnet {cidr} outside the private network {private} (the firewall rules would not admit it)")
    if res["aws_subnet"].get(f"app_{i}", {}).get("cidr_block") != cidr:
        problems.append(f"aws_subnet.app_{i} is not {cidr}")
    if net.overlaps(host_subnet):
        problems.append(f"app subnet {cidr} overlaps the hosts' subnet")
if asg.get("vpc_zone_identifier") != [ref(f"aws_subnet.app_{i}.id") for i in range(len(app_subnets))]:
    problems.append("the group does not span exactly the app subnets")
if (asg.get("min_size"), asg.get("max_size")) != (cloud["app"]["minSize"], cloud["app"]["maxSize"]):
    problems.append("group size differs from the inventory")
if cloud["app"]["maxSize"] > inv["discovery"]["maxInstances"]:
    problems.append("max size above HAProxy's server slots")
if asg.get("launch_template", {}).get("id") != ref("aws_launch_template.app.id") or lt.get("image_id") != ref("aws_ami.app.id"):
    problems.append("the group does not launch the app image")
if lt.get("vpc_security_group_ids") != [ref("aws_security_group.app.id")] or lt.get("metadata_options", {}).get("http_tokens") != "required":
    problems.append("launch template: security group or IMDSv2")
hook = asg.get("initial_lifecycle_hook", {})
if hook.get("lifecycle_transition") != "autoscaling:EC2_INSTANCE_TERMINATING":
    problems.append("no termination lifecycle hook (instances would not drain)")
policy = res.get("aws_autoscaling_policy", {}).get("app_cpu", {})
ttc = policy.get("target_tracking_configuration", {})
if policy.get("policy_type") != "TargetTrackingScaling" or ttc.get("target_value") != cloud["app"]["targetCpuPercent"] \
        or ttc.get("predefined_metric_specification", {}).get("predefined_metric_type") != "ASGAverageCPUUtilization":
    problems.append("no target tracking on average CPU at the inventory's target")
ns = res.get("aws_service_discovery_private_dns_namespace", {}).get("hubbub", {})
if ns.get("name") != inv["discovery"]["domain"] or ns.get("vpc") != ref("aws_vpc.hubbub.id"):
    problems.append("Cloud Map namespace is not the discovery domain in the VPC")
services = res.get("aws_service_discovery_service", {})
for role in roles:
    dns = services.get(role, {}).get("dns_config", {})
    if services.get(role, {}).get("name") != role or dns.get("dns_records", {}).get("type") != "A" or dns.get("routing_policy") != "MULTIVALUE":
        problems.append(f"no MULTIVALUE A-record service {role}")
user_data = tf.get("locals", {}).get("app_user_data", {})
if user_data.get("discovery") != {r: ref(f"aws_service_discovery_service.{r}.id") for r in roles} \
        or user_data.get("lifecycleHook") != hook.get("name") or user_data.get("autoScalingGroup") != asg.get("name"):
    problems.append("the instances' user data does not name the services, the hook and the group")
for h in fixed + elastic:
    for kind in ("aws_ami", "aws_ebs_snapshot_import", "aws_s3_object", "aws_security_group", "aws_iam_instance_profile"):
        if h not in res.get(kind, {}):
            problems.append(f"{h}: no {kind}")
if problems:
    bad("app tier: " + "; ".join(problems))
else:
    ok(f"the app hosts are one autoscaling group ({cloud['app']['minSize']}-{cloud['app']['maxSize']} instances, "
       f"{len(app_subnets)} subnets inside {private}, CPU target {cloud['app']['targetCpuPercent']} %, drain hook) "
       f"registering in Cloud Map {inv['discovery']['domain']} ({', '.join(roles)}); every host has its image uploaded and registered")

# --- 3. security groups == nftables --------------------------------------------
problems = []
rules = res.get("aws_vpc_security_group_ingress_rule", {})
got = {}
for name, rule in rules.items():
    m = re.fullmatch(r"\$\{aws_security_group\.([a-z0-9_]+)\.id\}", rule.get("security_group_id", ""))
    if not m:
        problems.append(f"rule {name} names no security group")
        continue
    if rule.get("ip_protocol") != "tcp" or rule.get("from_port") != rule.get("to_port"):
        problems.append(f"rule {name} is not one TCP port")
        continue
    got.setdefault(m.group(1), set()).add((rule["from_port"], rule.get("cidr_ipv4")))
total = 0
for h in fixed + elastic:
    want = {(p, str(private)) for p in inv["firewallPorts"][h]} | {(p, "0.0.0.0/0") for p in inv["publicPorts"][h]}
    have = got.get(h, set())
    total += len(want)
    if have - want:
        problems.append(f"{h}: security-group rules without an nftables rule: {sorted(have - want)}")
    if want - have:
        problems.append(f"{h}: nftables rules not in its security group: {sorted(want - have)}")
if set(got) - set(hosts):
    problems.append(f"rules for unknown groups {sorted(set(got) - set(hosts))}")
egress = res.get("aws_vpc_security_group_egress_rule", {})
if sorted(egress) != sorted(f"{h}_all" for h in hosts):
    problems.append("egress rules are not one per host")
if problems:
    bad("security groups: " + "; ".join(problems))
else:
    ok(f"security groups mirror nftables exactly: {total} ingress rules over {len(hosts)} hosts, each an nftables rule and each nftables rule present")

# --- 4. references and secrets -------------------------------------------------
text = json.dumps(tf)
defined = {f"{kind}.{name}" for kind, items in res.items() for name in items}
defined |= {f"data.{kind}.{name}" for kind, items in tf.get("data", {}).items() for name in items}
defined |= {f"local.{name}" for name in tf.get("locals", {})} | {f"var.{name}" for name in tf.get("variable", {})}
dangling = set()
for expr in re.findall(r"\$\{([^}]*)\}", text):
    for token in re.findall(r"\b((?:data\.)?[a-z0-9_]+\.[a-z0-9_]+)", expr):
        if token.split(".")[0] in ("aws", "data", "local", "var") or token.startswith("aws_"):
            base = ".".join(token.split(".")[:3] if token.startswith("data.") else token.split(".")[:2])
            if base not in defined:
                dangling.add(base)
if dangling:
    bad(f"references to nothing: {sorted(dangling)}")
else:
    ok("every ${...} reference names a resource, data source, local or variable of the configuration")
# IAM takes ARNs (or "*") as resources and refuses the whole policy otherwise, at
# apply time: `validate` does not look inside the JSON strings.
problems = []
for kind in ("aws_iam_role_policy",):
    for name, item in res.get(kind, {}).items():
        for statement in json.loads(item["policy"])["Statement"]:
            resources = statement.get("Resource", [])
            for resource in resources if isinstance(resources, list) else [resources]:
                # an ARN written out, or a resource's `arn` attribute
                if resource != "*" and not resource.startswith("arn:") and not re.match(r"\$\{[a-z0-9_.]+\.arn\}", resource):
                    problems.append(f"{kind}.{name} {statement.get('Sid', '')}: {resource}")
if problems:
    bad("IAM resources that are not ARNs (IAM refuses the policy): " + "; ".join(problems))
else:
    ok("every IAM policy resource is an ARN or *")
# Least privilege: a host's role reads its own identity only; only the app
# group's role touches discovery and the group.
problems = []
for name, item in res.get("aws_iam_role_policy", {}).items():
    if name == "vmimport":
        continue
    statements = json.loads(item["policy"])["Statement"]
    ssm = [r for s in statements if any(a.startswith("ssm:") for a in s["Action"]) for r in s["Resource"]]
    if [r.rsplit(":parameter", 1)[-1] for r in ssm] != [f"/hubbub/{name}/age-identity"] \
            or any(a.startswith("ssm:") and a != "ssm:GetParameter" for s in statements for a in s["Action"]):
        problems.append(f"{name} reads more than its own identity: {ssm}")
    if name != "app" and any(not a.startswith("ssm:") for s in statements for a in s["Action"]):
        problems.append(f"{name}, a fixed host, may do more than read its identity")
if problems:
    bad("instance roles: " + "; ".join(problems))
else:
    ok("each instance role reads its own /hubbub/<host>/age-identity only; only the app group's role touches Cloud Map and the group")
secret_words = re.findall(r"(?i)(AGE-SECRET-KEY|BEGIN [A-Z ]*PRIVATE KEY|password\"\s*:)", text)
if secret_words or "aws_ssm_parameter" in res:
    bad("the configuration carries secret material or creates SSM parameters (their values would be in the state)")
else:
    ok("no secret in the configuration: instances read /hubbub/<host>/age-identity from SSM, created by hand")

sys.exit(1 if failed else 0)
EOF

# --- 5. Prometheus with the cloud scrape configs -------------------------------
if out=$(promtool check config "$work/prometheus.json" 2>&1); then
  ok "promtool check config: the cloud scrape configs (app instances through DNS) are valid"
else
  bad "promtool check config (cloud): $out"
fi

# --- 6. terraform validate, where a local provider mirror exists -----------------
mirror=""
for dir in ${TF_PLUGIN_MIRROR:-} /opt/tf-plugins "$HOME/.terraform.d/plugins" /usr/share/terraform/plugins; do
  if [ -n "$dir" ] && compgen -G "$dir/registry.terraform.io/hashicorp/aws/*/linux_amd64/terraform-provider-aws_*" >/dev/null; then
    mirror=$dir
    break
  fi
done
if command -v terraform >/dev/null && [ -n "$mirror" ]; then
  version=$(basename "$(dirname "$(dirname "$(compgen -G "$mirror/registry.terraform.io/hashicorp/aws/*/linux_amd64/terraform-provider-aws_*" | sort -V | tail -n 1)")")")
  mkdir -p "$work/tf"
  nix-instantiate --eval --strict --json -E "import ./nixos/lib/opentofu.nix { inventory = $inv; awsProviderVersion = \"$version\"; }" >"$work/tf/main.tf.json"
  if out=$(cd "$work/tf" && TF_CLI_CONFIG_FILE=/dev/null TF_IN_AUTOMATION=1 terraform init -backend=false -input=false -no-color -plugin-dir="$mirror" 2>&1 &&
    TF_CLI_CONFIG_FILE=/dev/null terraform validate -no-color 2>&1); then
    ok "terraform $(terraform version -json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["terraform_version"])') validate with hashicorp/aws $version from $mirror: the configuration is valid"
  else
    bad "terraform validate: $(tail -n 20 <<<"$out")"
  fi
else
  echo "skipped: terraform validate (no terraform with a local hashicorp/aws mirror here; the flake check opentofu-validate runs tofu on Hydra)"
fi

# --- 7. haproxy -c on the cloud lb's configuration --------------------------------
if command -v haproxy >/dev/null && command -v openssl >/dev/null; then
  mkdir -p "$work/lb"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost \
    -keyout "$work/lb/key.pem" -out "$work/lb/cert.pem" 2>/dev/null
  cat "$work/lb/key.pem" "$work/lb/cert.pem" >"$work/lb/edge.pem"
  {
    printf 'global\n  stats socket %s/lb.sock mode 600 level admin\n' "$work/lb"
    nix-instantiate --eval --strict --json -E "import ./nixos/lib/haproxy.nix { inventory = import ./nixos/hosts/cloud.nix $inv; certificate = \"$work/lb/edge.pem\"; acmeChallenge = \"127.0.0.1:8402\"; }" |
      python3 -c 'import json, sys; sys.stdout.write(json.load(sys.stdin))'
  } >"$work/lb/haproxy.cfg"
  if ! grep -q '^  nameserver dns 169.254.169.253:53$' "$work/lb/haproxy.cfg" || ! grep -q "^  hold obsolete $(nix-instantiate --eval -E '(import ./nixos/lib/inventory.nix).cloud.holdObsolete' | tr -d '"')$" "$work/lb/haproxy.cfg"; then
    bad "the cloud lb's HAProxy does not ask the VPC resolver with Cloud Map's hold time"
  elif out=$(haproxy -dW -c -f "$work/lb/haproxy.cfg" 2>&1); then
    ok "haproxy -c (warnings fatal): the cloud lb's configuration (VPC resolver, Cloud Map's hold obsolete) is valid ($(haproxy -v | head -n 1 | cut -d' ' -f1-3))"
  else
    bad "haproxy -c (cloud lb): $out"
  fi
else
  bad "haproxy or openssl is not installed (tests/run installs them)"
fi

# --- 8. the cloud hosts evaluated, their units and scripts -----------------------
lib_root=${HUBBUB_NIXPKGS_LIB:-}
if [ -z "$lib_root" ]; then
  echo "skipped: cloud-* host evaluation and their scripts (HUBBUB_NIXPKGS_LIB is not set; see tests/nix/hosts.sh)"
  exit $fail
fi
mkdir -p "$work/hosts"
for host in lb data monitor ci app; do
  nix-instantiate --eval --strict --json tests/nix/cloud-hosts.nix --arg lib "import $lib_root/lib" \
    --argstr host "$host" >"$work/hosts/$host.json" 2>"$work/hosts/$host.err" ||
    bad "cloud-$host does not evaluate: $(tail -n 5 "$work/hosts/$host.err")"
done
# agenix with systemd-sysusers/userborn installs from its own unit, not activation scripts.
nix-instantiate --eval --strict --json tests/nix/cloud-hosts.nix --arg lib "import $lib_root/lib" \
  --argstr host app --arg sysusers true >"$work/hosts/app-sysusers.json" 2>"$work/hosts/app-sysusers.err" ||
  bad "cloud-app with agenix on sysusers does not evaluate: $(tail -n 5 "$work/hosts/app-sysusers.err")"

# A stand-in AWS CLI and what the units call besides: each records its call.
stub=$work/stub
mkdir -p "$stub/bin" "$stub/run/hubbub-instance" "$stub/meta"
cat >"$stub/bin/aws" <<'STUB'
#!/usr/bin/env bash
echo "aws $*" >>"$STUB_CALLS"
service=""
prev=""
for arg in "$@"; do
  [ "$prev" = --service-id ] && service=$arg
  prev=$arg
done
case "$1 $2" in
  "servicediscovery register-instance") [ "$service" != "${AWS_FAIL_SERVICE:-}" ] || exit 254 ;;
  "servicediscovery list-instances") echo "${AWS_REGISTERED:-[]}" ;;
  "autoscaling describe-auto-scaling-groups") echo "${AWS_MEMBERS:-[]}" ;;
esac
exit 0
STUB
cat >"$stub/bin/curl" <<'STUB'
#!/usr/bin/env bash
echo "curl $*" >>"$STUB_CALLS"
case "$*" in
  *api/token*) echo token ;;
  *target-lifecycle-state*) echo Terminated ;;
esac
exit 0
STUB
printf '#!/usr/bin/env bash\necho "systemctl $*" >>"$STUB_CALLS"\n' >"$stub/bin/systemctl"
printf '#!/usr/bin/env bash\necho "sleep $*" >>"$STUB_CALLS"\n' >"$stub/bin/sleep"
chmod +x "$stub/bin/"*
printf 'INSTANCE_ID=i-self\nADDRESS=10.42.0.150\n' >"$stub/run/hubbub-instance/identity.env"

python3 - "$work" "$work/main.tf.json" <<'EOF' || fail=1
import ipaddress, json, os, re, subprocess, sys

work, tf = sys.argv[1], json.load(open(sys.argv[2]))
stub = os.path.join(work, "stub")
failed = False

def ok(msg):
    print("ok: " + msg)

def bad(msg):
    global failed
    failed = True
    print("FAIL: " + msg)

hosts = {}
for name in ("lb", "data", "monitor", "ci", "app", "app-sysusers"):
    try:
        hosts[name] = json.load(open(os.path.join(work, "hosts", name + ".json")))
    except (OSError, ValueError):
        pass
if any(h not in hosts for h in ("lb", "data", "monitor", "ci", "app")):
    sys.exit(1)

problems = [f"{h}: {m}" for h, d in hosts.items() for m in d["failedAssertions"] + d["warnings"]]
problems += [f"{h}: amazon-init on" for h, d in hosts.items() if d["amazonInit"]]
problems += [f"{h}: identity {d['identityPaths']}" for h, d in hosts.items() if d["identityPaths"] != ["/var/lib/hubbub-identity/age.key"]]
problems += [f"{h}: no hubbub-fetch-identity" for h, d in hosts.items() if not (d["units"].get("hubbub-fetch-identity") or {}).get("start")]
if problems:
    bad("cloud hosts: " + "; ".join(problems))
else:
    ok(f"{', '.join('cloud-' + h for h in hosts)} evaluate: no failed assertion or warning, amazon-init off, the age identity fetched from SSM")

# Each host's evaluated nftables rules against its security group.
res = tf["resource"]
sg = {}
for rule in res["aws_vpc_security_group_ingress_rule"].values():
    host = re.fullmatch(r"\$\{aws_security_group\.([a-z0-9_]+)\.id\}", rule["security_group_id"]).group(1)
    sg.setdefault(host, set()).add((rule["from_port"], rule["cidr_ipv4"]))
problems = []
for host in ("lb", "data", "monitor", "ci", "app"):
    fw = hosts[host]["firewall"]
    nft = {(p, "0.0.0.0/0") for p in fw["allowedTCPPorts"]}
    for m in re.finditer(r'iifname "([^"]+)" ip saddr (\S+) tcp dport \{ ([0-9, ]+) \} accept', fw["extraInputRules"]):
        nft |= {(int(p), m.group(2)) for p in m.group(3).split(", ")}
    leftover = re.sub(r'iifname "[^"]+" ip saddr \S+ tcp dport \{ [0-9, ]+ \} accept comment "[^"]*"', "", fw["extraInputRules"]).strip()
    if leftover:
        problems.append(f"{host}: nftables rules the comparison does not understand: {leftover!r}")
    if nft != sg.get(host, set()):
        problems.append(f"{host}: nftables {sorted(nft - sg.get(host, set()))} not in the security group, "
                        f"security group {sorted(sg.get(host, set()) - nft)} not in nftables")
if problems:
    bad("security groups against the evaluated firewalls: " + "; ".join(problems))
else:
    ok("each cloud host's evaluated nftables rules (extraInputRules, allowedTCPPorts) are exactly its security group's rules")

# The app instance's units: identity before the roles, the roles before
# registration, registration stopped (deregister and drain) before the roles.
app = hosts["app"]["units"]
roles = ["visitors", "chat", "broadcast", "buffs"]
problems = []
for role in roles:
    u = app[f"hubbub-{role}"]
    if u["environmentFile"] != f"/run/hubbub-instance/{role}.env":
        problems.append(f"hubbub-{role} does not listen on the instance's address")
    for dep in ("hubbub-fetch-identity.service", "hubbub-instance-identity.service"):
        if dep not in u["requires"] or dep not in u["after"]:
            problems.append(f"hubbub-{role} does not wait for {dep}")
d = app["hubbub-discovery"]
if any(f"hubbub-{r}.service" not in d["after"] or f"hubbub-{r}.service" not in d["wants"] for r in roles):
    problems.append("hubbub-discovery is not ordered after (and does not pull in) every role")
if d["onFailure"] != ["hubbub-unhealthy.service"] or not d["stop"]:
    problems.append("hubbub-discovery: no deregistration on stop or no replacement on failure")
drain = int(re.search(r"^sleep (\d+)$", d["stop"], re.M).group(1))
if int(d["timeoutStop"].rstrip("s")) <= drain:
    problems.append(f"hubbub-discovery's stop timeout {d['timeoutStop']} does not cover the {drain} s drain")
hook = res["aws_autoscaling_group"]["app"]["initial_lifecycle_hook"]
if hook["heartbeat_timeout"] <= drain + 30:
    problems.append(f"the lifecycle hook's {hook['heartbeat_timeout']} s do not cover the {drain} s drain")
if "hubbub-discovery-sweep" not in hosts["app"]["timers"]:
    problems.append("no sweep timer")
if "app-sysusers" in hosts and "systemctl restart agenix-install-secrets.service" not in hosts["app-sysusers"]["units"]["hubbub-fetch-identity"]["start"]:
    problems.append("with agenix on sysusers, the fetched identity does not restart agenix-install-secrets")
if problems:
    bad("app instance units: " + "; ".join(problems))
else:
    ok(f"app instance: roles wait for the identity and listen on the instance's address; registration after every role, "
       f"deregistration and a {drain} s drain before them (stop timeout {d['timeoutStop']}, hook {hook['heartbeat_timeout']} s)")

# The scripts, against the stand-in AWS CLI. The user data the instances read:
# the keys of the rendered launch template's, with made-up ids.
user_data = {k: v for k, v in tf["locals"]["app_user_data"].items()}
user_data["discovery"] = {r: f"srv-{r}" for r in roles}
json.dump(user_data, open(os.path.join(stub, "meta", "user-data"), "w"))
scripts = {name: (app.get(unit) or {}).get(part) or "exit 99" for name, unit, part in [
    ("register", "hubbub-discovery", "start"), ("deregister", "hubbub-discovery", "stop"),
    ("lifecycle", "hubbub-lifecycle", "start"), ("sweep", "hubbub-discovery-sweep", "start")]}
read = set(re.findall(r"jq -er (\S+) /etc/ec2-metadata/user-data", "".join(scripts.values())))
missing = [k for k in read if not k.startswith(".discovery.") and k.lstrip(".") not in tf["locals"]["app_user_data"]]
missing += [k for k in read if k.startswith(".discovery.") and k.split(".")[2] not in tf["locals"]["app_user_data"]["discovery"]]
if missing:
    bad(f"the scripts read {missing} from the user data, which the launch template does not write")

def run(name, **env):
    calls = os.path.join(stub, "calls")
    open(calls, "w").close()
    text = scripts[name].replace("/run/hubbub-instance", os.path.join(stub, "run", "hubbub-instance")) \
        .replace("/etc/ec2-metadata", os.path.join(stub, "meta"))
    e = dict(os.environ, PATH=os.path.join(stub, "bin") + ":" + os.environ["PATH"], STUB_CALLS=calls, **env)
    code = subprocess.run(["bash", "-c", text], env=e, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60).returncode
    return code, [l for l in open(calls).read().splitlines() if not l.startswith("curl ")]

def calls_of(calls, what):
    out = []
    for c in calls:
        if c.startswith("aws servicediscovery " + what):
            out.append((re.search(r"--service-id (\S+)", c).group(1), re.search(r"--instance-id (\S+)", c).group(1)))
    return out

everywhere = sorted((f"srv-{r}", "i-self") for r in roles)
code, calls = run("register")
if code != 0 or sorted(calls_of(calls, "register-instance")) != everywhere or calls_of(calls, "deregister-instance"):
    bad(f"registration: exit {code}, calls {calls}")
code, calls = run("register", AWS_FAIL_SERVICE="srv-broadcast")
if code == 0 or sorted(calls_of(calls, "deregister-instance")) != everywhere:
    bad(f"a registration failing at broadcast (exit {code}) leaves registrations behind: {calls}")
else:
    ok("a registration failing half-way (broadcast refused) fails the unit and withdraws every role it registered")
code, calls = run("deregister")
if sorted(calls_of(calls, "deregister-instance")) != everywhere or calls[-1] != f"sleep {drain}":
    bad(f"deregistration on stop: {calls}")
code, calls = run("lifecycle")
def step(call):
    if call == "systemctl stop hubbub-discovery.service":
        return "stop discovery"
    if call == "systemctl stop " + " ".join(f"hubbub-{r}.service" for r in roles):
        return "stop roles"
    if call.startswith("aws servicediscovery deregister-instance"):
        return "deregister"
    if call.startswith("aws autoscaling complete-lifecycle-action"):
        return "complete"
    return None
order = [s for s in map(step, calls) if s]
if code != 0 or order != ["stop discovery"] + ["deregister"] * 4 + ["stop roles", "complete"] \
        or sorted(calls_of(calls, "deregister-instance")) != everywhere:
    bad(f"termination: exit {code}, calls {calls}")
else:
    ok("termination: discovery stopped (deregister, drain), every registration withdrawn even if registering had failed, then SIGTERM to the roles, then the hook completed")
code, calls = run("sweep", AWS_REGISTERED='["i-self", "i-live", "i-gone"]', AWS_MEMBERS='["i-live", "i-self", "i-new"]')
if code != 0 or sorted(calls_of(calls, "deregister-instance")) != sorted((f"srv-{r}", "i-gone") for r in roles):
    bad(f"sweep: exit {code}, calls {calls}")
else:
    ok("sweep: the registrations of an instance the group no longer has are removed, in every role; live instances kept")
code, calls = run("sweep", AWS_REGISTERED='["i-self", "i-live"]', AWS_MEMBERS='[]')
if code == 0 or calls_of(calls, "deregister-instance"):
    bad(f"sweep with an empty group answer: exit {code}, calls {calls}")
else:
    ok("sweep: an answer that does not list the instance itself sweeps nothing")
sys.exit(1 if failed else 0)
EOF

exit $fail
