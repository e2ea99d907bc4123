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
#      (docs/ci.md says what can disagree). Skipped, and said so, elsewhere.
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

exit $fail
