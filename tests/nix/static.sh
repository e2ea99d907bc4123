#!/usr/bin/env bash
# Static checks of the Nix side, with the real tools and no nixpkgs:
#   - every .nix file (tracked, or untracked and not ignored) parses
#     (nix-instantiate --parse), is formatted (alejandra --check) and has no
#     dead code (deadnix --fail);
#   - flake.lock is what `nix flake lock` writes for flake.nix: version 7, a
#     root node, a node for every input with `locked` and `original`, follows
#     that resolve (`[]` for follows = ""), SRI sha256 narHashes, no stray
#     nodes, Nix's own JSON layout, and the pins of ../shared/nixos-reference.md;
#   - hydra/*.json and the jobsets hydra/jobsets.nix generates use only the
#     keys Hydra accepts (Hydra::Helper::AddBuilds::validateDeclarativeJobset);
#   - pure-Nix evaluations (tests/nix/static-eval.nix): the version and build
#     id logic, hydraJobs' layout, the generated jobsets, the flake's inputs
#     and outputs, the inventory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# Evaluation only: no builds, so no build users (Debian's nix-bin warns otherwise).
export NIX_CONFIG="build-users-group ="

fail=0
ok() { echo "ok: $*"; }
bad() {
  echo "FAIL: $*"
  fail=1
}
need() {
  command -v "$1" >/dev/null || {
    bad "$1 is not installed; tests/run installs it ($2)"
    exit 1
  }
}
need nix-instantiate "apt-get install nix-bin"
need cargo "rustup or the distribution's cargo"
need deadnix "cargo install --locked deadnix@<nix/tools.toml>"
need python3 "apt-get install python3"

# The formatter the flake's `formatter`, `nix-format` check and dev shell use:
# tools/alejandra, built from this source (and its Cargo.lock) right here.
alejandra() {
  cargo run --quiet --locked --release --manifest-path tools/alejandra/Cargo.toml -- "$@"
}
deadnix_want=$(python3 -c 'import tomllib; print(tomllib.load(open("nix/tools.toml", "rb"))["deadnix"]["version"])')
if [ "$(deadnix --version)" = "deadnix $deadnix_want" ]; then
  ok "deadnix $deadnix_want, the version the flake's deadnix check builds (nix/tools.toml)"
else
  bad "$(deadnix --version), but the flake's deadnix check runs $deadnix_want: cargo install --locked deadnix@$deadnix_want"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

mapfile -t files < <(git ls-files --cached --others --exclude-standard -- '*.nix')
[ ${#files[@]} -gt 0 ] || {
  bad "no Nix files found"
  exit 1
}

# --- parse, format, dead code -------------------------------------------------
parsed=0
for f in "${files[@]}"; do
  if err=$(nix-instantiate --parse "$f" 2>&1 >/dev/null); then
    parsed=$((parsed + 1))
  else
    bad "$f does not parse: $err"
  fi
done
[ "$parsed" -eq ${#files[@]} ] && ok "${#files[@]} Nix files parse"

if alejandra --check --quiet "${files[@]}" >"$tmp/alejandra" 2>&1; then
  ok "alejandra: all ${#files[@]} files formatted"
else
  bad "alejandra: run 'alejandra .' to format:"
  sed 's/^/  /' "$tmp/alejandra"
fi
if deadnix --fail "${files[@]}" >"$tmp/deadnix" 2>&1; then
  ok "deadnix: no dead code"
else
  bad "deadnix found dead code:"
  sed 's/^/  /' "$tmp/deadnix"
fi

# --- pure-Nix evaluations -----------------------------------------------------
# A githubpulls input as Hydra's GithubPulls plugin writes it: one pull request
# from the repository itself, one from a fork, one whose fork was deleted.
cat >"$tmp/pulls.json" <<'EOF'
{
  "12": {"number": 12, "title": "Chat: \"quoted\" \\ title", "head": {"sha": "aaaaaaaa", "repo": {"full_name": "example-org/hubbub"}}, "base": {"repo": {"full_name": "example-org/hubbub"}}},
  "13": {"number": 13, "title": "From a fork", "head": {"sha": "bbbbbbbb", "repo": {"full_name": "someone/hubbub"}}, "base": {"repo": {"full_name": "example-org/hubbub"}}},
  "14": {"number": 14, "title": "Deleted fork", "head": {"sha": "cccccccc", "repo": null}, "base": {"repo": {"full_name": "example-org/hubbub"}}}
}
EOF
cargo_version=$(python3 -c 'import tomllib; print(tomllib.load(open("Cargo.toml", "rb"))["package"]["version"])')
if nix-instantiate --eval --strict --json tests/nix/static-eval.nix \
  --argstr cargoVersion "$cargo_version" --argstr pullsFile "$tmp/pulls.json" \
  >"$tmp/eval.json" 2>"$tmp/eval.err"; then
  python3 - "$tmp/eval.json" "$tmp/generated.json" <<'EOF' || fail=1
import json, sys
result = json.load(open(sys.argv[1]))
json.dump(result["generated"], open(sys.argv[2], "w"))
failed = False
for c in result["checks"]:
    if c["ok"]:
        print(f"ok: {c['name']}")
    else:
        print(f"FAIL: {c['name']}: got {c['detail']}")
        failed = True
sys.exit(1 if failed else 0)
EOF
else
  bad "tests/nix/static-eval.nix does not evaluate:"
  sed 's/^/  /' "$tmp/eval.err"
  echo '{}' >"$tmp/generated.json"
fi

# --- flake.lock ---------------------------------------------------------------
nix-instantiate --eval --strict --json -E '
  builtins.mapAttrs (_: i: {
    url = i.url or null;
    type = i.type or null;
    flake = i.flake or true;
    follows = builtins.mapAttrs (_: f: f.follows) (i.inputs or {});
  }) (import ./flake.nix).inputs' >"$tmp/inputs.json"
python3 - "$tmp/inputs.json" flake.lock ../shared/nixos-reference.md nix/tools.toml <<'EOF' || fail=1
import json, os, re, sys, tomllib

inputs = json.load(open(sys.argv[1]))
text = open(sys.argv[2]).read()
reference = sys.argv[3]
tools = tomllib.load(open(sys.argv[4], "rb"))
failed = False

def ok(msg): print(f"ok: flake.lock: {msg}")
def bad(msg):
    global failed
    failed = True
    print(f"FAIL: flake.lock: {msg}")

lock = json.loads(text)
nodes = lock.get("nodes", {})

# Nix writes the lock with nlohmann::json dump(2): keys sorted, two spaces,
# `[]` for an empty list, a final newline. Anything else is a hand edit that
# `nix flake lock` would rewrite.
if text == json.dumps(lock, indent=2, sort_keys=True) + "\n":
    ok("laid out as Nix writes it")
else:
    bad("layout differs from Nix's (sorted keys, 2-space indent, final newline)")

if lock.get("version") == 7 and set(lock) == {"nodes", "root", "version"}:
    ok("version 7")
else:
    bad(f"version {lock.get('version')!r}, top-level keys {sorted(lock)}")

root = nodes.get(lock.get("root"))
if root is None or set(root) != {"inputs"}:
    bad("no root node (or it has more than `inputs`)")
    sys.exit(1)

def parse_github(url):
    # github:OWNER/REPO[/REF] -> the `original` attributes Nix records
    m = re.fullmatch(r"github:([^/]+)/([^/?]+)(?:/([^?]+))?", url)
    if not m:
        return None
    orig = {"owner": m.group(1), "repo": m.group(2), "type": "github"}
    if m.group(3):
        orig["ref"] = m.group(3)
    return orig

def resolve(path):
    """Follow an input path from the root, as Nix does for `follows`."""
    node = root
    for elem in path:
        target = node.get("inputs", {}).get(elem)
        if target is None:
            return None
        node = nodes.get(target) if isinstance(target, str) else resolve(target)
        if node is None:
            return None
    return node

sri = re.compile(r"sha256-[A-Za-z0-9+/]{43}=")
reachable = {lock["root"]}

def check_node(name, key, depth=0):
    node = nodes.get(key)
    if node is None:
        bad(f"input {name} points at missing node {key!r}")
        return
    reachable.add(key)
    if not {"locked", "original"} <= set(node) or not set(node) <= {"flake", "inputs", "locked", "original"}:
        bad(f"node {key}: keys {sorted(node)} (needs locked and original)")
        return
    locked = node["locked"]
    if locked.get("type") == "tarball" and locked.get("url") != node["original"].get("url"):
        bad(f"node {key}: locked url differs from original")
    if locked.get("type") == "github":
        if not re.fullmatch(r"[0-9a-f]{40}", locked.get("rev", "")):
            bad(f"node {key}: rev {locked.get('rev')!r} is not a full commit hash")
        if not isinstance(locked.get("lastModified"), int):
            bad(f"node {key}: lastModified missing")
        for attr in ("owner", "repo"):
            if locked.get(attr) != node["original"].get(attr):
                bad(f"node {key}: locked {attr} differs from original")
    if not sri.fullmatch(locked.get("narHash", "")):
        bad(f"node {key}: narHash {locked.get('narHash')!r} is not SRI sha256 (sha256- and 44 base64 characters)")
    for sub, target in node.get("inputs", {}).items():
        if isinstance(target, list):
            if target and resolve(target) is None:
                bad(f"node {key}: input {sub} follows {'/'.join(target)}, which does not resolve")
        else:
            check_node(f"{name}/{sub}", target, depth + 1)

if set(root["inputs"]) == set(inputs):
    ok(f"root has exactly the inputs of flake.nix ({', '.join(sorted(inputs))})")
else:
    bad(f"root inputs {sorted(root['inputs'])} but flake.nix has {sorted(inputs)}")

for name, spec in sorted(inputs.items()):
    key = root["inputs"].get(name)
    if not isinstance(key, str) or key not in nodes:
        bad(f"no node for input {name}")
        continue
    check_node(name, key)
    node = nodes[key]
    if spec["type"] == "tarball":
        expected = {"type": "tarball", "url": spec["url"]}
    else:
        expected = parse_github(spec["url"] or "")
    if expected is None:
        bad(f"input {name}: url {spec['url']!r} is not a github: reference or a tarball (this check knows only those)")
    elif node["original"] != expected:
        bad(f"input {name}: original {node['original']} but flake.nix says {expected}")
    if spec["flake"] is False and node.get("flake") is not False:
        bad(f"input {name} has flake = false but its node lacks \"flake\": false")
    if spec["flake"] is not False and "flake" in node:
        bad(f"input {name} is a flake but its node says \"flake\": {node['flake']}")
    for sub, follows in spec["follows"].items():
        want = [] if follows == "" else follows.split("/")
        got = node.get("inputs", {}).get(sub)
        if got != want:
            bad(f"input {name}/{sub}: follows {follows!r} should be locked as {want}, found {got!r}")
        elif want and resolve(want) is None:
            bad(f"input {name}/{sub} follows {follows}, which does not resolve")

# The tools' crates (nix/tools.nix): one input crate-NAME per tool of
# nix/tools.toml, at exactly that release.
crate_inputs = {n for n in inputs if n.startswith("crate-")}
wanted = {f"crate-{n}" for n in tools if n != "rust"}
for name in sorted(wanted | crate_inputs):
    tool = name.removeprefix("crate-")
    if tool not in tools:
        bad(f"input {name}: no [{tool}] in nix/tools.toml")
    elif name not in inputs:
        bad(f"nix/tools.toml names {tool}, but flake.nix has no input {name}")
    else:
        url = f"https://static.crates.io/crates/{tool}/{tool}-{tools[tool]['version']}.crate"
        if inputs[name]["url"] != url or inputs[name]["type"] != "tarball" or inputs[name]["flake"] is not False:
            bad(f"input {name}: {inputs[name]['url']!r}, but nix/tools.toml wants the tarball {url} (flake = false)")
if wanted <= crate_inputs:
    ok(f"the tools' crate inputs are the releases of nix/tools.toml ({', '.join(sorted(wanted))})")

stray = set(nodes) - reachable
if stray:
    bad(f"nodes no input reaches: {sorted(stray)}")
if not failed:
    ok("every input has a node, follows resolve, narHashes are SRI sha256, no stray nodes")

# The pins of the reference page: rev and narHash per owner/repo.
if os.path.exists(reference):
    page = open(reference).read()
    pins = {}
    for line in page.splitlines():
        m = re.search(r"rev ([0-9a-f]{40}), narHash (sha256-[A-Za-z0-9+/=]+)", line)
        if not m:
            continue
        cell = line.split("|")[1].strip()
        pins[cell] = (m.group(1), m.group(2))
    by_repo = {
        "NixOS/nixpkgs": "nixpkgs, ref nixos-26.05",
        "ipetkov/crane": "crane (master)",
        "ryantm/agenix": "agenix (main)",
        "rustsec/advisory-db": "advisory-db (`flake = false`)",
        "nix-systems/default": "nix-systems/default",
    }
    mismatched = []
    for key, node in nodes.items():
        if key == lock["root"]:
            continue
        locked = node["locked"]
        if locked.get("type") == "tarball":
            continue  # a tool's crate: pinned by nix/tools.toml (checked above)
        label = by_repo.get(f"{locked.get('owner')}/{locked.get('repo')}")
        if label is None or label not in pins:
            mismatched.append(f"{key} ({locked.get('owner')}/{locked.get('repo')} is not pinned on the reference page)")
        elif pins[label] != (locked.get("rev"), locked.get("narHash")):
            mismatched.append(f"{key}: {locked.get('rev')} {locked.get('narHash')} != {pins[label]}")
    if mismatched:
        bad("not the reference page's pins: " + "; ".join(mismatched))
    else:
        ok(f"every GitHub node is pinned to the reference page's rev and narHash")
else:
    ok(f"pins not compared: {reference} is absent")
sys.exit(1 if failed else 0)
EOF

# --- Hydra declarative specs ----------------------------------------------------
# The keys Hydra accepts in a jobset specification:
# subprojects/hydra/lib/Hydra/Helper/AddBuilds.pm (NixOS/hydra),
# validateDeclarativeJobset's @allowed_keys plus "inputs"; each input is
# {type, value, emailresponsible} (createJobsetInputsRowAndData). Anything else
# makes updateDeclarativeJobset die with "invalid keys". A spec whose every
# value is an object is a static set of jobsets, otherwise it is one jobset
# (the `.jobsets` generator): subprojects/hydra/script/hydra-eval-jobset.
python3 - hydra/*.json "$tmp/generated.json" <<'EOF' || fail=1
import json, sys

ALLOWED = {"enabled", "hidden", "type", "flake", "description", "nixexprinput", "nixexprpath",
           "checkinterval", "schedulingshares", "enableemail", "enable_dynamic_run_command",
           "emailoverride", "keepnr", "inputs"}
INPUT_KEYS = {"type", "value", "emailresponsible"}
failed = False

def problems(name, spec):
    out = []
    unknown = set(spec) - ALLOWED
    if unknown:
        out.append(f"unknown keys {sorted(unknown)}")
    # validateDeclarativeJobset treats the mere presence of this key as "on" (even
    # false), and dies unless the server and the project enable dynamic RunCommand.
    if "enable_dynamic_run_command" in spec:
        out.append("enable_dynamic_run_command is on whenever present (even false): leave it out")
    if spec.get("type") == 1:
        if not isinstance(spec.get("flake"), str) or not spec["flake"]:
            out.append("type 1 (flake) needs a flake reference")
    elif spec.get("type", 0) == 0:
        if not spec.get("nixexprinput") or not spec.get("nixexprpath"):
            out.append("type 0 (legacy) needs nixexprinput and nixexprpath")
        elif spec["nixexprinput"] not in spec.get("inputs", {}):
            out.append(f"nixexprinput {spec['nixexprinput']!r} is not among the inputs")
    else:
        out.append(f"type {spec.get('type')!r} (0 legacy or 1 flake)")
    for key in ("enabled", "checkinterval", "schedulingshares", "keepnr"):
        if key in spec and not (isinstance(spec[key], int) and not isinstance(spec[key], bool)):
            out.append(f"{key} must be an integer")
    for input_name, inp in spec.get("inputs", {}).items():
        extra = set(inp) - INPUT_KEYS
        if extra or "type" not in inp or "value" not in inp:
            out.append(f"input {input_name}: keys {sorted(inp)} (type and value, optionally emailresponsible)")
    return out

for path in sys.argv[1:]:
    try:
        spec = json.load(open(path))
    except ValueError as e:
        print(f"FAIL: {path} is not JSON: {e}")
        failed = True
        continue
    label = "hydra/jobsets.nix output" if path.endswith("generated.json") else path
    if not isinstance(spec, dict) or not spec:
        print(f"FAIL: {label}: not a non-empty object")
        failed = True
        continue
    static = all(isinstance(v, dict) for v in spec.values())
    jobsets = spec if static else {".jobsets": spec}
    found = {n: problems(n, s) for n, s in jobsets.items()}
    bad = {n: p for n, p in found.items() if p}
    if bad:
        for n, p in bad.items():
            print(f"FAIL: {label}: jobset {n}: {'; '.join(p)}")
        failed = True
    else:
        kind = "static jobsets" if static else "a generator jobset"
        print(f"ok: {label}: {kind} {', '.join(sorted(jobsets))} with only keys Hydra accepts")

spec = json.load(open("hydra/spec.json"))
main = spec.get("main", {})
if main.get("type") == 1 and main.get("flake", "").startswith("git+") and "ref=main" in main.get("flake", ""):
    print("ok: hydra/spec.json: `main` builds the flake from the main branch over git (so builds get a revCount)")
else:
    print(f"FAIL: hydra/spec.json: `main` should be type 1 with a git+ flake reference on ref=main, got {main}")
    failed = True
sys.exit(1 if failed else 0)
EOF

exit $fail
