#!/usr/bin/env bash
# Tests scripts/deploy.sh without AWS (the scripts/test.sh stage deploy-dry-run):
#   1. --dry-run with three regions exits 0, renders every stack (analytics, ecr, federation,
#      3 networks, 3 peering pairs x 2 sides, 3 firehose, 3 services twice: first start and
#      federated) with its parameters, non-overlapping CIDRs, and calls no aws (an `aws` stub on
#      PATH that records calls must stay unused); the --plan-json plan shows the federation
#      (one replicated secret, each region its own replica, every other region as an https peer
#      with a CA bundle, none before its controller has started), agents and relays only after
#      the first start, every mesh CIDR to every services stack, the S3 prefix list to networks;
#   1b. removing a region (the runbook's procedure: --regions without it, --keep-cidrs) leaves
#      the others' CIDRs as they were, drops it from every peer list, replica list and MeshCidrs;
#   2. usage errors exit 2 (no --regions, bad region, duplicate, home region not in the list);
#   3. without --dry-run and with PATH stripped to basic tools: missing aws CLI and
#      buildah/podman are reported, exit 3, nothing else runs;
#   4. with an aws stub whose credentials fail: exit 3 naming credentials, and the only AWS call
#      made was `sts get-caller-identity` (no cloudformation, ecr or secretsmanager call).
#   5. a whole (non-dry) deployment against a stubbed AWS CLI that keeps secrets in files and
#      plays the controller's first start: regions start without agents and peers, then federate
#      with each other's CA certificates (bundle and its hash checked); a re-run writes no secret
#      and deploys each services stack once; an added region gets its first start and every
#      region's peers and bundle include it.
#
# Every check reports and counts (good/bad) and the run goes on; the exit status says whether any
# failed. `CHECK && good MSG || bad MSG` is the idiom: good always succeeds, so it is if-then-else.
# shellcheck disable=SC2015
set -euo pipefail
cd "$(dirname "$0")/.." || exit 2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
pass=0 failn=0
good() { echo "ok   $*"; pass=$((pass + 1)); }
bad() { echo "FAIL $*"; failn=$((failn + 1)); }

# a PATH with only what deploy.sh itself needs (no aws, buildah, podman, cargo)
mkdir -p "$tmp/bin" "$tmp/stub"
for t in bash env sed grep paste python3 git dirname cat mktemp rm seq sleep openssl tr sort; do
  p=$(command -v "$t") && ln -sf "$p" "$tmp/bin/$t"
done
cat > "$tmp/stub/aws" <<STUB
#!$(command -v bash)
echo "\$*" >> "$tmp/aws-calls"
[[ \$1 == sts ]] && { echo "Unable to locate credentials" >&2; exit 255; }
exit 1
STUB
cat > "$tmp/stub/podman" <<STUB
#!$(command -v bash)
echo "podman \$*" >> "$tmp/aws-calls"; exit 1
STUB
cp "$tmp/stub/podman" "$tmp/stub/cargo"
chmod +x "$tmp/stub/"*

# 1. dry run
rc=0; out=$(PATH="$tmp/stub:$PATH" scripts/deploy.sh --dry-run --skip-lint --regions eu-west-1,af-south-1,sa-east-1 2>&1) || rc=$?
[[ $rc == 0 ]] && good "dry run exits 0" || { bad "dry run exit $rc"; echo "$out" | tail -20; }
want=("meshlat-analytics  region eu-west-1" "meshlat-ecr  region eu-west-1" "meshlat-federation  region eu-west-1")
for r in eu-west-1 af-south-1 sa-east-1; do
  want+=("meshlat-network  region $r" "meshlat-firehose  region $r" "meshlat-services  region $r")
done
for pr in "eu-west-1-af-south-1  region eu-west-1" "eu-west-1-af-south-1  region af-south-1" \
          "eu-west-1-sa-east-1  region eu-west-1" "eu-west-1-sa-east-1  region sa-east-1" \
          "af-south-1-sa-east-1  region af-south-1" "af-south-1-sa-east-1  region sa-east-1"; do
  want+=("meshlat-peering-$pr")
done
missing=0
for w in "${want[@]}"; do grep -qF "stack $w " <<< "$out" || { bad "dry run lacks stack $w"; missing=1; }; done
(( missing )) || good "dry run renders all ${#want[@]} stacks"
n=$(grep -c "would run: aws cloudformation deploy" <<< "$out" || true)
# services twice per region: the first start, then federated with agents and relays
[[ $n == $(( ${#want[@]} + 3 )) ]] && good "one deploy command per stack, services twice ($n)" || bad "$n deploy commands, want $(( ${#want[@]} + 3 ))"

# the plan as JSON: federation, peers, first start
PATH="$tmp/stub:$PATH" scripts/deploy.sh --dry-run --skip-lint --regions eu-west-1,af-south-1,sa-east-1 \
  --plan-json "$tmp/plan.jsonl" >/dev/null 2>&1 || bad "dry run with --plan-json failed"
check_plan() {
  python3 - "$@" <<'PY'
import json, sys
plan_file, mode = sys.argv[1], sys.argv[2]
regions = sys.argv[3].split(",")
plan = [json.loads(l) for l in open(plan_file)]
def stacks(name, region=None):
    return [p for p in plan if p["stack"] == name and (region is None or p["region"] == region)]
bad = []
def want(cond, msg):
    if not cond:
        bad.append(msg)
home = regions[0]
cidrs = sys.argv[4].split(",")
mesh = ",".join(cidrs)
fed = stacks("meshlat-federation")
want(len(fed) == 1 and fed[0]["region"] == home, f"one federation stack in {home}: {fed}")
want(fed and fed[0]["parameters"]["ReplicaRegions"] == ",".join(regions[1:]), "federation replicas = the other regions")
for i, r in enumerate(regions):
    net = stacks("meshlat-network", r)
    want(len(net) == 1 and net[0]["parameters"]["VpcCidr"] == cidrs[i], f"{r} VpcCidr {cidrs[i]}")
    want(net and net[0]["parameters"]["MeshCidrs"] == mesh, f"{r} network MeshCidrs")
    want(net and net[0]["parameters"]["S3PrefixListId"].startswith("{{" + r + "/prefix-list:"), f"{r} S3 prefix list")
    svc = stacks("meshlat-services", r)
    if mode == "fresh":
        want(len(svc) == 2, f"{r}: {len(svc)} services deployments, want 2 (first start, federated)")
        first, last = svc[0]["parameters"], svc[-1]["parameters"]
        want(first["AgentDesiredCount"] == "0" and first["RelayDesiredCount"] == "0" and first["PeerUrls"] == "",
             f"{r} first start: no agents, relays or peers before the controller wrote its token and CA: {first}")
    else:
        want(len(svc) >= 1, f"{r}: no services deployment")
        last = svc[-1]["parameters"] if svc else {}
    want(last["AgentDesiredCount"] == "2" and last["RelayDesiredCount"] == "1", f"{r}: agents 2, relays 1")
    want(last["MeshCidrs"] == mesh, f"{r} services MeshCidrs (--agent-cidr)")
    want(last["FederationSecretArn"] == "{{" + r + "/secret:meshlat/federation-secret}}", f"{r} federation replica: {last['FederationSecretArn']}")
    peers = last["PeerUrls"].split(",")
    others = [o for o in regions if o != r]
    want(peers == [f"https://{{{{{o}/meshlat-services.LoadBalancerDnsName}}}}:7400" for o in others],
         f"{r} peers {peers}, want every other region's NLB over https")
    want(last["PeerCaSecretArn"] == "{{" + r + "/secret:meshlat/" + r + "/peer-ca}}", f"{r} peer CA bundle")
    want(last["PeerCaSha256"] != "", f"{r} peer CA bundle hash")
    want(last["JoinTokenArn"] == "{{" + r + "/secret:meshlat/" + r + "/join-token}}", f"{r} join token secret")
    jobs = json.loads(last["DefaultJobs"])
    want([j["name"] for j in jobs] == [f"meshlat-mesh-{r}", f"meshlat-relay-{r}"], f"{r} default job names")
    every = [f"region={o}" for o in regions]
    want(all(j["sources"] == [f"region={r}"] and j["targets"] == every for j in jobs),
         f"{r} default jobs: its agents to every region's")
    want(jobs[0]["kind"] == "probe" and jobs[0]["protocols"] == ["udp", "tcp", "quic", "https"], f"{r} probe job protocols")
    want(jobs[1]["kind"] == "relay" and jobs[1]["relays"] == ["location=relay"], f"{r} relay job through every relay")
    want(last["CaCertSecretArn"] == "{{" + r + "/secret:meshlat/" + r + "/ca-cert}}", f"{r} CA cert secret")
pairs = {p["stack"] for p in plan if p["stack"].startswith("meshlat-peering-")}
want(pairs == {f"meshlat-peering-{a}-{b}" for i, a in enumerate(regions) for b in regions[i + 1:]},
     f"peering pairs {sorted(pairs)}")
for b in bad:
    print("  " + b)
sys.exit(1 if bad else 0)
PY
}
check_plan "$tmp/plan.jsonl" fresh eu-west-1,af-south-1,sa-east-1 10.0.0.0/16,10.1.0.0/16,10.2.0.0/16 \
  && good "plan: federation secret, peers, first start, relays" || bad "plan (above)"
cidrs=$({ grep -oE "VpcCidr=10\.[0-9]+\.0\.0/16" <<< "$out" || true; } | sort -u | wc -l)
[[ $cidrs == 3 ]] && good "3 distinct VPC CIDRs" || bad "$cidrs distinct VPC CIDRs"
grep -q "MeshCidrs=10.0.0.0/16,10.1.0.0/16,10.2.0.0/16" <<< "$out" && good "MeshCidrs lists every region" || bad "MeshCidrs"
grep -q "ReplicaRegions=af-south-1,sa-east-1$" <<< "$out" && good "ECR replicates to the other regions" || bad "ReplicaRegions"
grep -q "AssignPublicIp=DISABLED" <<< "$out" && good "no public IPs by default" || bad "AssignPublicIp"
grep -q "deploy: " <<< "$out" && grep -q "nothing called" <<< "$out" && good "plan summary" || bad "no plan summary"
[[ ! -s $tmp/aws-calls ]] && good "dry run made no aws/podman call" || bad "dry run called: $(cat "$tmp/aws-calls")"
out=$(scripts/deploy.sh --dry-run --skip-lint --regions us-east-1 --home-region us-east-1 2>&1) \
  && grep -q "stack meshlat-services  region us-east-1" <<< "$out" && good "single-region dry run" || bad "single-region dry run: $out"

# 1b. removing a region: af-south-1 keeps its position (CIDRs stay), the others drop it
rc=0
out=$(PATH="$tmp/stub:$PATH" scripts/deploy.sh --dry-run --skip-lint --regions eu-west-1,af-south-1,sa-east-1 \
  --retire af-south-1 --plan-json "$tmp/retire.jsonl" 2>&1) || rc=$?
[[ $rc == 0 ]] && good "retire dry run exits 0" || bad "retire dry run exit $rc: $(tail -3 <<< "$out")"
check_plan "$tmp/retire.jsonl" redeploy eu-west-1,sa-east-1 10.0.0.0/16,10.2.0.0/16 \
  && good "retire: the others keep their CIDRs and drop af-south-1 everywhere" || bad "retire plan (above)"
grep -q '"af-south-1"' "$tmp/retire.jsonl" && bad "retire: a stack is still deployed in af-south-1" \
  || good "retire: nothing deployed in af-south-1"
grep -q 'af-south-1' <(grep -v '^{"step": [0-9]*, "region": "af-south-1"' "$tmp/retire.jsonl") \
  && bad "retire: af-south-1 still named in the others' parameters: $(grep -o '[A-Za-z]*=[^ ]*af-south-1[^ ]*' "$tmp/retire.jsonl" | head -3)" \
  || good "retire: af-south-1 named in no other stack's parameters"
for want in "delete-stack --region af-south-1 --stack-name meshlat-services" \
            "delete-stack --region af-south-1 --stack-name meshlat-peering-eu-west-1-af-south-1" \
            "delete-stack --region eu-west-1 --stack-name meshlat-peering-eu-west-1-af-south-1" \
            "delete-stack --region sa-east-1 --stack-name meshlat-peering-af-south-1-sa-east-1" \
            "delete-stack --region af-south-1 --stack-name meshlat-network"; do
  grep -qF -- "$want" <<< "$out" || bad "retire plan lacks: $want"
done
grep -qF "LoadBalancerDeletionProtection=false" <<< "$out" && good "retire: teardown commands printed" || bad "retire: no teardown"
rc=0; scripts/deploy.sh --dry-run --skip-lint --regions eu-west-1,af-south-1 --retire eu-west-1 >/dev/null 2>&1 || rc=$?
[[ $rc == 2 ]] && good "retiring the home region: usage error" || bad "retiring the home region accepted"

# 1c. --spool-efs: the EFS spool parameters reach only the named region's services stack
PATH="$tmp/stub:$PATH" scripts/deploy.sh --dry-run --skip-lint --regions eu-west-1,af-south-1 \
  --spool-efs af-south-1=fs-0123abcd:sg-0456cdef --plan-json "$tmp/efs.jsonl" >/dev/null 2>&1 || bad "dry run with --spool-efs failed"
python3 - "$tmp/efs.jsonl" <<'PY' && good "--spool-efs: af-south-1's services get the file system and its group, eu-west-1's stack is left as it is" || bad "--spool-efs plan (above)"
import json, sys
svc = [json.loads(l) for l in open(sys.argv[1])]
svc = [(p["region"], p["parameters"]) for p in svc if p["stack"] == "meshlat-services"]
# A region not named gets no EFS parameter at all: its stack keeps what an operator set.
got = {(r, p.get("SpoolEfsFileSystemId"), p.get("SpoolEfsSecurityGroupId")) for r, p in svc}
want = {("af-south-1", "fs-0123abcd", "sg-0456cdef"), ("eu-west-1", None, None)}
if got != want:
    sys.exit(f"  services EFS parameters {sorted(got)}, want {sorted(want)}")
PY

# 2. usage errors
for args in "" "--regions eu-west-1,bogus" "--regions eu-west-1,eu-west-1" \
            "--regions eu-west-1,af-south-1 --home-region us-east-1" "--regions eu-west-1 --nope" \
            "--regions eu-west-1 --external-target-cidrs 0.0.0.0/0" "--regions eu-west-1 --relay-count x" \
            "--regions eu-west-1,af-south-1 --retire us-east-1" "--regions eu-west-1 --spool-efs us-east-1=fs-0123abcd" \
            "--regions eu-west-1 --spool-efs eu-west-1=fs-xyz" "--regions eu-west-1 --spool-efs eu-west-1=fs-0123abcd:sg-1"; do
  read -r -a words <<< "$args"
  rc=0; scripts/deploy.sh --dry-run "${words[@]}" >/dev/null 2>&1 || rc=$?
  [[ $rc == 2 ]] && good "usage error exit 2: '$args'" || bad "'$args' exit $rc, want 2"
done

# 3. stripped PATH: no aws, no buildah/podman
: > "$tmp/aws-calls"
rc=0; out=$(PATH="$tmp/bin" scripts/deploy.sh --regions eu-west-1,af-south-1 2>&1) || rc=$?
[[ $rc == 3 ]] && good "missing tools: exit 3" || bad "missing tools: exit $rc"
grep -q "aws CLI" <<< "$out" && grep -q "buildah or podman" <<< "$out" && grep -q "nothing was changed" <<< "$out" \
  && good "missing aws and buildah/podman reported" || bad "missing tools not reported: $out"
grep -q "stack meshlat-" <<< "$out" && bad "stacks attempted despite missing tools" || good "no stack attempted"

# 4. aws present, credentials missing
: > "$tmp/aws-calls"
rc=0; out=$(PATH="$tmp/stub:$tmp/bin" scripts/deploy.sh --regions eu-west-1,af-south-1 2>&1) || rc=$?
[[ $rc == 3 ]] && good "no credentials: exit 3" || bad "no credentials: exit $rc"
grep -q "AWS credentials" <<< "$out" && good "missing credentials reported" || bad "credentials not reported: $out"
calls=$(sort -u "$tmp/aws-calls" | tr '\n' ';')
[[ $calls == "sts get-caller-identity --query Account --output text;" ]] \
  && good "only sts get-caller-identity was called" || bad "unexpected calls: $calls"

# 5. a whole deployment against a stubbed AWS CLI (state in files; `cloudformation deploy` of
#    meshlat-services plays the controller: it writes the join token and CA certificate if the
#    secrets are empty): first deployment, a re-run that changes nothing, an added region.
mkdir -p "$tmp/fake" "$tmp/aws-state"
cat > "$tmp/fake/aws" <<STUB
#!$(command -v python3)
import os, sys, re
state = "$tmp/aws-state"
args = sys.argv[1:]
def opt(name, default=None):
    return args[args.index(name) + 1] if name in args else default
region = opt("--region", "eu-west-1")
with open(os.path.join(state, "calls"), "a") as f:
    f.write(" ".join(args) + "\n")
svc, op = args[0], args[1]
def path(n):
    return os.path.join(state, "secrets", region, n.replace("/", "_"))
def arn(n):
    return f"arn:aws:secretsmanager:{region}:123456789012:secret:{n}-AbCdEf"
if svc == "sts":
    print("123456789012")
elif svc == "ec2":
    print(f"pl-{abs(hash(region)) % 10**8:08x}")
elif svc == "ecr":
    print("password") if op == "get-login-password" else None
elif svc == "cloudformation" and op == "describe-stacks":
    key = re.search(r"OutputKey=='(\w+)'", opt("--query")).group(1)
    stack = opt("--stack-name")
    print({"FederationSecretArn": arn("meshlat/federation-secret"),
           "LoadBalancerDnsName": f"internal-meshlat-{region}.elb.{region}.amazonaws.com",
           "RecordsBucketArn": "arn:aws:s3:::meshlat-records"}.get(key, f"{key}-{stack}-{region}"))
elif svc == "cloudformation" and op == "deploy":
    if opt("--stack-name") == "meshlat-services":
        # the controller's first start: its token and CA certificate, once
        for n, v in (("join-token", f"mlt1.{region}.token"),
                     ("ca-cert", f"-----BEGIN CERTIFICATE-----\nCA of {region}\n-----END CERTIFICATE-----")):
            p = path(f"meshlat/{region}/{n}")
            if os.path.exists(p) and os.path.getsize(p) == 0:
                open(p, "w").write(v)
elif svc == "secretsmanager":
    n = opt("--secret-id") or opt("--name")
    p = path(n)
    if op == "describe-secret":
        sys.exit(0 if os.path.exists(p) and print(arn(n)) is None else 254)
    if op == "create-secret":
        os.makedirs(os.path.dirname(p), exist_ok=True)
        open(p, "w").write(opt("--secret-string", ""))
        print(arn(n))
    elif op == "get-secret-value":
        if not os.path.exists(p) or os.path.getsize(p) == 0:
            sys.exit(254)
        print(open(p).read())
    elif op == "put-secret-value":
        open(p, "w").write(opt("--secret-string"))
else:
    sys.exit(0)
STUB
printf '#!%s\nexit 0\n' "$(command -v bash)" > "$tmp/fake/cargo"
cp "$tmp/fake/cargo" "$tmp/fake/images"
# shellcheck disable=SC2016 # $1 belongs to the stub
printf '#!%s\n[[ $1 == login ]] && cat >/dev/null\nexit 0\n' "$(command -v bash)" > "$tmp/fake/podman"
chmod +x "$tmp/fake/"*
deploy_fake() {
  : > "$tmp/aws-state/calls"
  PATH="$tmp/fake:$PATH" MESHLAT_DEPLOY_IMAGES="$tmp/fake/images" MESHLAT_DEPLOY_POLL_SECONDS=0 \
    scripts/deploy.sh --skip-lint --tag t1 --plan-json "$tmp/fake-plan.jsonl" --regions "$1" > "$tmp/fake-out" 2>&1
}
check_fake() {
  python3 - "$tmp/fake-plan.jsonl" "$tmp/aws-state" "$@" <<'PY'
import hashlib, json, os, sys
plan_file, state, regions, fresh, puts = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4], sys.argv[5]
fresh = [r for r in fresh.split(",") if r]
plan = [json.loads(l) for l in open(plan_file)]
calls = open(os.path.join(state, "calls")).read().splitlines()
bad = []
for r in regions:
    svc = [p["parameters"] for p in plan if p["stack"] == "meshlat-services" and p["region"] == r]
    n = 2 if r in fresh else 1
    if len(svc) != n:
        bad.append(f"{r}: {len(svc)} services deployments, want {n}")
        continue
    if r in fresh and (svc[0]["AgentDesiredCount"], svc[0]["RelayDesiredCount"], svc[0]["PeerUrls"]) != ("0", "0", ""):
        bad.append(f"{r}: first start with agents, relays or peers: {svc[0]}")
    last = svc[-1]
    others = [o for o in regions if o != r]
    want_peers = ",".join(f"https://internal-meshlat-{o}.elb.{o}.amazonaws.com:7400" for o in others)
    if last["PeerUrls"] != want_peers:
        bad.append(f"{r}: peers {last['PeerUrls']}")
    bundle = open(os.path.join(state, "secrets", r, f"meshlat_{r}_peer-ca")).read()
    want_bundle = "\n".join(f"-----BEGIN CERTIFICATE-----\nCA of {o}\n-----END CERTIFICATE-----" for o in others)
    if bundle != want_bundle:
        bad.append(f"{r}: peer-ca bundle {bundle!r}")
    if last["PeerCaSha256"] != hashlib.sha256(bundle.encode()).hexdigest():
        bad.append(f"{r}: PeerCaSha256 is not the bundle's")
    if last["FederationSecretArn"] != f"arn:aws:secretsmanager:{r}:123456789012:secret:meshlat/federation-secret-AbCdEf":
        bad.append(f"{r}: federation secret {last['FederationSecretArn']}")
    if (last["AgentDesiredCount"], last["RelayDesiredCount"]) != ("2", "1"):
        bad.append(f"{r}: agents/relays {last['AgentDesiredCount']}/{last['RelayDesiredCount']}")
put = sorted(c.split("--secret-id ")[1].split()[0] for c in calls if "put-secret-value" in c)
want_put = sorted(f"meshlat/{r}/peer-ca" for r in puts.split(",") if r)
if put != want_put:
    bad.append(f"put-secret-value on {put}, want {want_put}")
for b in bad:
    print("  " + b)
sys.exit(1 if bad else 0)
PY
}
R3=eu-west-1,af-south-1,sa-east-1
rc=0; deploy_fake $R3 || rc=$?
[[ $rc == 0 ]] && good "stubbed AWS: first deployment exits 0" || { bad "stubbed first deployment exit $rc"; tail -15 "$tmp/fake-out"; }
check_fake $R3 $R3 $R3 && good "stubbed AWS: first start, then federated with each other's CA certificates" || bad "first deployment (above)"
grep -c "create-secret" "$tmp/aws-state/calls" | grep -qx 15 && good "stubbed AWS: 5 secrets per region created" || bad "create-secret calls: $(grep -c create-secret "$tmp/aws-state/calls")"
rc=0; deploy_fake $R3 || rc=$?
[[ $rc == 0 ]] && good "stubbed AWS: re-run exits 0" || { bad "stubbed re-run exit $rc"; tail -15 "$tmp/fake-out"; }
check_fake $R3 "" "" && good "stubbed AWS: re-run: no first start, no secret written, same peers and bundle" || bad "re-run (above)"
grep -q "create-secret" "$tmp/aws-state/calls" && bad "re-run created secrets again" || good "stubbed AWS: re-run creates no secret"
rc=0; deploy_fake $R3,us-west-1 || rc=$?
[[ $rc == 0 ]] && good "stubbed AWS: adding us-west-1 exits 0" || { bad "adding a region exit $rc"; tail -15 "$tmp/fake-out"; }
check_fake $R3,us-west-1 us-west-1 $R3,us-west-1 \
  && good "stubbed AWS: added region: its first start, every bundle and peer list updated" || bad "adding a region (above)"

echo "test_deploy: $pass passed, $failn failed"
(( failn == 0 ))
