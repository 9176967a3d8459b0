#!/usr/bin/env bash
# Deploys meshlat to a list of regions with CloudFormation (change sets via `aws cloudformation
# deploy`, so re-running is idempotent: unchanged stacks are left alone).
#
#   scripts/deploy.sh --regions eu-west-1,af-south-1,sa-east-1 [--home-region eu-west-1] [--dry-run]
#       [--tag TAG] [--agent-count N] [--assign-public-ip] [--nlb-scheme internal|internet-facing]
#       [--record-format json|parquet] [--relay-count N] [--external-target-cidrs CIDR,...]
#       [--skip-lint] [--plan-json FILE] [--retire REGION,...] [--spool-efs REGION=fs-ID[:sg-ID],...]
#
# --spool-efs puts the agents' and relays' Firehose spool of REGION on an existing EFS file system
# (services.yaml SpoolEfsFileSystemId; with :sg-ID the stack also opens NFS between the agents and
# that mount-target security group, SpoolEfsSecurityGroupId). A region not named keeps what its
# stack has (by default: the spool on task storage).
#
# Order (infra/README.md is the runbook):
#   0. preflight (not with --dry-run): aws CLI, buildah or podman, cargo, openssl, python3, AWS credentials -
#      every missing piece is reported before anything is built or changed (exit 3)
#   1. lint: scripts/lint-infra.sh (cfn-lint + checkov) and scripts/test_infra.py (invariants)
#   2. home region: meshlat-analytics (analytics.yaml), meshlat-ecr (ecr.yaml: repositories and
#      the registry's replication to every other region), meshlat-federation (federation.yaml:
#      the federation secret, generated once, replicated to every other region)
#   3. images: scripts/images.sh build, push once to the home region's ECR (immutable tag; an
#      existing tag is not pushed again); wait until replication shows them in every region
#   4. every region i: meshlat-network (network.yaml, VpcCidr 10.<i>.0.0/16, MeshCidrs = all)
#   5. every pair (A, B), A before B: meshlat-peering-A-B in A (requester) and in B (accepter)
#   6. every region: meshlat-firehose (firehose.yaml), the controller's secrets (Secrets Manager,
#      created once with random values; join-token and ca-cert are written by the controller)
#   7. first start of a region (its join-token or ca-cert secret still empty): meshlat-services
#      with 0 agents and relays and no peers; then wait until its controller has written both
#   8. every region: its peers' CA certificates into meshlat/<r>/peer-ca, then meshlat-services
#      with every other region's controller as --peer and the agents and relays running
# --retire R (removing a region): R stays in --regions at its position (CIDRs follow positions) but
# gets no stacks; every other region's stacks drop it (MeshCidrs, peers, replicas, default jobs)
# and the plan ends with the commands that delete R's stacks and its peerings (run them after).
# --dry-run renders every stack with its parameters (outputs of earlier stacks as
# {{region/stack.Output}}), checks each parameter against the template, prints the plan and
# calls nothing (no aws, no image build). --plan-json FILE also writes every stack deployment as
# one JSON object per line ({"step", "region", "stack", "template", "parameters": {K: V}}), for
# tools that render the stacks (scripts/test_deploy.sh reads it). Exit codes: 0 ok, 1 a step failed, 2 usage, 3 preflight.
set -euo pipefail
cd "$(dirname "$0")/.." || exit 2
PROG=deploy
# shellcheck source=scripts/lib/common.sh
source scripts/lib/common.sh
CFN=infra/cloudformation

usage() { sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

regions_csv="" home="" dry=0 tag="" agent_count=2 public_ip=DISABLED nlb_scheme=internal
record_format=json skip_lint=0 relay_count=1 external_cidrs="" plan_json="" retire_csv="" spool_efs_csv=""
while (( $# )); do
  case $1 in
    --regions) regions_csv=${2:-}; shift 2 ;;
    --regions=*) regions_csv=${1#*=}; shift ;;
    --home-region) home=${2:-}; shift 2 ;;
    --home-region=*) home=${1#*=}; shift ;;
    --dry-run) dry=1; shift ;;
    --tag) tag=${2:-}; shift 2 ;;
    --agent-count) agent_count=${2:-}; shift 2 ;;
    --assign-public-ip) public_ip=ENABLED; shift ;;
    --nlb-scheme) nlb_scheme=${2:-}; shift 2 ;;
    --record-format) record_format=${2:-}; shift 2 ;;
    --skip-lint) skip_lint=1; shift ;;
    --relay-count) relay_count=${2:-}; shift 2 ;;
    --plan-json) plan_json=${2:-}; shift 2 ;;
    --retire) retire_csv=${2:-}; shift 2 ;;
    --external-target-cidrs) external_cidrs=${2:-}; shift 2 ;;
    --spool-efs) spool_efs_csv=${2:-}; shift 2 ;;
    -h|--help) usage ;;
    *) die "unknown argument '$1' (--help)" ;;
  esac
done
[[ -n $regions_csv ]] || die "--regions is required, e.g. --regions eu-west-1,af-south-1"
IFS=, read -r -a regions <<< "$regions_csv"
declare -A seen=()
for r in "${regions[@]}"; do
  [[ $r =~ ^[a-z]{2}(-gov)?-[a-z]+-[0-9]$ ]] || die "'$r' is not a region name"
  [[ -z ${seen[$r]:-} ]] || die "region '$r' given twice"
  seen[$r]=1
done
(( ${#regions[@]} <= 12 )) || die "at most 12 regions (network.yaml's mesh prefix list and ecr.yaml's replica slots)"
home=${home:-${regions[0]}}
[[ -n ${seen[$home]:-} ]] || die "--home-region $home is not in --regions"
# Deterministic, non-overlapping CIDRs: the region's index in --regions (retired ones included).
declare -A cidr=()
for i in "${!regions[@]}"; do cidr[${regions[$i]}]="10.$i.0.0/16"; done
retired=()
if [[ -n $retire_csv ]]; then
  IFS=, read -r -a retired <<< "$retire_csv"
  declare -A gone=()
  for r in "${retired[@]}"; do
    [[ -n ${seen[$r]:-} ]] || die "--retire $r is not in --regions (keep it there, at its position)"
    [[ $r != "$home" ]] || die "--retire $r: the home region holds the analytics, ECR and federation stacks; it cannot be retired"
    gone[$r]=1
  done
  kept=()
  for r in "${regions[@]}"; do [[ -n ${gone[$r]:-} ]] || kept+=("$r"); done
  regions=("${kept[@]}")
  regions_csv=$(IFS=,; echo "${regions[*]}")
fi
[[ $agent_count =~ ^[0-9]+$ ]] || die "--agent-count must be a number"
[[ $relay_count =~ ^[0-9]+$ ]] || die "--relay-count must be a number"
if [[ -n $external_cidrs ]]; then
  IFS=, read -r -a ext <<< "$external_cidrs"
  (( ${#ext[@]} <= 8 )) || die "--external-target-cidrs: at most 8 CIDRs (network.yaml's prefix list)"
  for c in "${ext[@]}"; do
    [[ $c =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}$ ]] || die "--external-target-cidrs: '$c' is not an IPv4 CIDR"
    [[ $c != 0.0.0.0/0 ]] || die "--external-target-cidrs: 0.0.0.0/0 would open agents' egress to everything; name the targets' CIDRs"
  done
fi
declare -A efs_fs=() efs_sg=()
if [[ -n $spool_efs_csv ]]; then
  IFS=, read -r -a efs_entries <<< "$spool_efs_csv"
  for e in "${efs_entries[@]}"; do
    [[ $e =~ ^([a-z0-9-]+)=(fs-[0-9a-f]{8,40})(:(sg-[0-9a-f]{8,40}))?$ ]] ||
      die "--spool-efs: '$e' is not REGION=fs-ID or REGION=fs-ID:sg-ID (e.g. eu-west-1=fs-0123abcd:sg-0123abcd)"
    r=${BASH_REMATCH[1]}
    [[ -n ${seen[$r]:-} ]] || die "--spool-efs: region '$r' is not in --regions"
    [[ -z ${efs_fs[$r]:-} ]] || die "--spool-efs: region '$r' given twice"
    efs_fs[$r]=${BASH_REMATCH[2]} efs_sg[$r]=${BASH_REMATCH[4]}
  done
fi
[[ $nlb_scheme == internal || $nlb_scheme == internet-facing ]] || die "--nlb-scheme internal|internet-facing"
[[ $record_format == json || $record_format == parquet ]] || die "--record-format json|parquet"
if [[ -n $plan_json ]]; then : > "$plan_json" || die "--plan-json $plan_json: cannot write"; fi
if [[ -z $tag ]]; then
  tag=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unversioned)
  git diff --quiet HEAD 2>/dev/null || tag="$tag-dirty"
fi

mesh_cidrs=$(IFS=,; for r in "${regions[@]}"; do printf '%s\n' "${cidr[$r]}"; done | paste -sd, -)
others=$(for r in "${regions[@]}"; do [[ $r == "$home" ]] || echo "$r"; done | paste -sd, -)

# ---- 0. preflight: report everything missing before changing anything ----------------------
if (( ! dry )); then
  missing=()
  command -v python3 >/dev/null || missing+=("python3 (apt-get install python3)")
  command -v aws >/dev/null || missing+=("aws CLI v2 (https://docs.aws.amazon.com/cli/latest/userguide/getting-started-install.html)")
  if ! command -v buildah >/dev/null && ! command -v podman >/dev/null; then
    missing+=("buildah or podman (apt-get install buildah podman runc)")
  fi
  command -v cargo >/dev/null || missing+=("cargo (the images contain the release binaries)")
  command -v openssl >/dev/null || missing+=("openssl (random controller secrets; apt-get install openssl)")
  if command -v aws >/dev/null; then
    if ! account=$(aws sts get-caller-identity --query Account --output text 2>/dev/null) || [[ -z $account ]]; then
      missing+=("AWS credentials (aws sts get-caller-identity failed: set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)")
    fi
  fi
  if (( ${#missing[@]} )); then
    echo "deploy: cannot deploy, nothing was changed. Missing:" >&2
    printf '  - %s\n' "${missing[@]}" >&2
    exit 3
  fi
else
  account='<account>'
fi

# ---- helpers -----------------------------------------------------------------------------------
# Steps are numbered as they are printed ("[N] ..."); a failure names the step it happened in.
step=0
FAIL_TAG="FAILED at step 0: "
next_step() { step=$((step + 1)); FAIL_TAG="FAILED at step $step: "; }

# Checks NAME=VALUE pairs against a template's Parameters: unknown keys and missing required
# ones (no Default) are errors. Stdlib only (no PyYAML needed).
check_params() {
  local template=$1; shift
  python3 - "$template" "$@" <<'PY'
import re, sys
path, pairs = sys.argv[1], sys.argv[2:]
lines = open(path).read().splitlines()
params, cur, inside = {}, None, False
for ln in lines:
    if re.match(r"^\S", ln):
        inside = ln.startswith("Parameters:")
        continue
    if not inside:
        continue
    m = re.match(r"^  ([A-Za-z0-9]+):\s*$", ln)
    if m:
        cur = m.group(1); params[cur] = False; continue
    if cur and re.match(r"^    Default:", ln):
        params[cur] = True
given = {p.split("=", 1)[0] for p in pairs}
bad = [f"unknown parameter {k}" for k in sorted(given - params.keys())]
bad += [f"missing required parameter {k}" for k, d in params.items() if not d and k not in given]
for b in bad:
    print(f"deploy: {path}: {b}", file=sys.stderr)
sys.exit(1 if bad else 0)
PY
}

# Output of an earlier stack: a placeholder in --dry-run, else looked up.
out() {
  local region=$1 stack=$2 key=$3
  if (( dry )); then echo "{{$region/$stack.$key}}"; return; fi
  aws cloudformation describe-stacks --region "$region" --stack-name "$stack" \
    --query "Stacks[0].Outputs[?OutputKey=='$key'].OutputValue" --output text
}

# deploy_stack REGION STACK TEMPLATE [KEY=VALUE...]
deploy_stack() {
  local region=$1 stack=$2 template=$3; shift 3
  next_step
  echo
  echo "[$step] stack $stack  region $region  template $template"
  local p
  for p in "$@"; do echo "      $p"; done
  check_params "$template" "$@" || return 1
  if [[ -n $plan_json ]]; then
    python3 -c 'import json, sys; s, r, n, t, *kv = sys.argv[1:]; print(json.dumps({"step": int(s), "region": r, "stack": n, "template": t, "parameters": dict(p.split("=", 1) for p in kv)}))' \
      "$step" "$region" "$stack" "$template" "$@" >> "$plan_json" || return 1
  fi
  if (( dry )); then
    echo "      would run: aws cloudformation deploy --region $region --stack-name $stack --template-file $template --capabilities CAPABILITY_IAM CAPABILITY_NAMED_IAM --no-fail-on-empty-changeset --tags project=meshlat --parameter-overrides $*"
    return 0
  fi
  local args=()
  (( $# )) && args=(--parameter-overrides "$@")
  aws cloudformation deploy --region "$region" --stack-name "$stack" --template-file "$template" \
    --capabilities CAPABILITY_IAM CAPABILITY_NAMED_IAM --no-fail-on-empty-changeset \
    --tags project=meshlat "${args[@]}" || { echo "deploy: stack $stack in $region failed" >&2; return 1; }
}

# Ensures a Secrets Manager secret exists (created once with VALUE; never overwritten); prints its ARN.
ensure_secret() {
  local region=$1 name=$2 value=$3
  if (( dry )); then echo "{{$region/secret:$name}}"; return; fi
  local arn
  if arn=$(aws secretsmanager describe-secret --region "$region" --secret-id "$name" --query ARN --output text 2>/dev/null); then
    echo "$arn"; return
  fi
  if [[ -n $value ]]; then
    aws secretsmanager create-secret --region "$region" --name "$name" --secret-string "$value" --query ARN --output text
  else
    aws secretsmanager create-secret --region "$region" --name "$name" \
      --description "meshlat: written by the deployment (controller or deploy.sh), not by hand" --query ARN --output text
  fi
}

# ---- plan --------------------------------------------------------------------------------------
say "regions: ${regions[*]}  home: $home  account: $account  image tag: $tag  dry-run: $dry"
for r in "${regions[@]}"; do say "  $r  VpcCidr ${cidr[$r]}"; done

if (( skip_lint )); then
  say "lint: skipped (--skip-lint)"
else
  say "lint: scripts/lint-infra.sh, scripts/test_infra.py"
  scripts/lint-infra.sh || fail "lint-infra found problems"
  scripts/test_infra.py || fail "template invariants failed"
fi

deploy_stack "$home" meshlat-analytics "$CFN/analytics.yaml" \
  "Regions=$regions_csv" "RecordFormat=$record_format" || fail analytics
if [[ -n $others ]]; then
  deploy_stack "$home" meshlat-ecr "$CFN/ecr.yaml" "ReplicaRegions=$others" || fail ecr
else
  deploy_stack "$home" meshlat-ecr "$CFN/ecr.yaml" "ReplicaRegions=" || fail ecr
fi

deploy_stack "$home" meshlat-federation "$CFN/federation.yaml" "ReplicaRegions=$others" || fail federation
fed_arn=$(out "$home" meshlat-federation FederationSecretArn) || fail "federation: no FederationSecretArn output"
# The replica of the federation secret in region $1: the primary's ARN in that region.
fed_replica() {
  if (( dry )); then echo "{{$1/secret:meshlat/federation-secret}}"; return; fi
  echo "${fed_arn/:secretsmanager:$home:/:secretsmanager:$1:}"
}

registry() { echo "$account.dkr.ecr.$1.amazonaws.com"; }
next_step
echo
echo "[$step] images: scripts/images.sh build; push $(registry "$home")/meshlat/{agent,controller}:$tag once; replication copies them to: ${others:-none}"
if (( ! dry )); then
  # MESHLAT_DEPLOY_IMAGES and MESHLAT_DEPLOY_POLL_SECONDS exist for scripts/test_deploy.sh (a
  # stubbed AWS): the image build command and the wait between polls (default 10 s).
  ${MESHLAT_DEPLOY_IMAGES:-scripts/images.sh} build || fail "image build"
  tool=$(command -v podman || command -v buildah)
  aws ecr get-login-password --region "$home" | "$tool" login --username AWS --password-stdin "$(registry "$home")" || fail "ECR login"
  for img in agent controller; do
    if aws ecr describe-images --region "$home" --repository-name "meshlat/$img" --image-ids "imageTag=$tag" >/dev/null 2>&1; then
      say "$img:$tag already in ECR (immutable tags): not pushed again"
    else
      "$tool" push "localhost/meshlat-$img:latest" "docker://$(registry "$home")/meshlat/$img:$tag" || fail "push $img"
    fi
  done
  for r in "${regions[@]}"; do
    [[ $r == "$home" ]] && continue
    for img in agent controller; do
      for _ in $(seq 60); do
        aws ecr describe-images --region "$r" --repository-name "meshlat/$img" --image-ids "imageTag=$tag" >/dev/null 2>&1 && break
        sleep "${MESHLAT_DEPLOY_POLL_SECONDS:-10}"
      done || true
      aws ecr describe-images --region "$r" --repository-name "meshlat/$img" --image-ids "imageTag=$tag" >/dev/null 2>&1 \
        || fail "meshlat/$img:$tag not replicated to $r after 10 minutes"
    done
  done
fi

# The AWS-managed prefix list of a region's S3 (security group rules to the gateway endpoint).
s3_prefix_list() {
  if (( dry )); then echo "{{$1/prefix-list:com.amazonaws.$1.s3}}"; return; fi
  aws ec2 describe-managed-prefix-lists --region "$1" --filters "Name=prefix-list-name,Values=com.amazonaws.$1.s3" \
    --query 'PrefixLists[0].PrefixListId' --output text
}
for r in "${regions[@]}"; do
  deploy_stack "$r" meshlat-network "$CFN/network.yaml" \
    "VpcCidr=${cidr[$r]}" "MeshCidrs=$mesh_cidrs" "S3PrefixListId=$(s3_prefix_list "$r")" \
    "ExternalTargetCidrs=$external_cidrs" || fail "network $r"
done

for ((i = 0; i < ${#regions[@]}; i++)); do
  for ((j = i + 1; j < ${#regions[@]}; j++)); do
    a=${regions[$i]} b=${regions[$j]} stack="meshlat-peering-${regions[$i]}-${regions[$j]}"
    deploy_stack "$a" "$stack" "$CFN/peering.yaml" Side=requester \
      "VpcId=$(out "$a" meshlat-network VpcId)" "RouteTableId=$(out "$a" meshlat-network RouteTableId)" \
      "PeerVpcId=$(out "$b" meshlat-network VpcId)" "PeerRegion=$b" "PeerCidr=${cidr[$b]}" || fail "peering $a->$b"
    deploy_stack "$b" "$stack" "$CFN/peering.yaml" Side=accepter \
      "RouteTableId=$(out "$b" meshlat-network RouteTableId)" "PeerCidr=${cidr[$a]}" \
      "PeeringConnectionId=$(out "$a" "$stack" PeeringConnectionId)" || fail "peering $b->$a"
  done
done

bucket_arn=$(out "$home" meshlat-analytics RecordsBucketArn) || fail "analytics: no RecordsBucketArn output"
declare -A js=() oc=() jt=() ca=() pc=()
for r in "${regions[@]}"; do
  deploy_stack "$r" meshlat-firehose "$CFN/firehose.yaml" \
    "RecordsBucketArn=$bucket_arn" "HomeRegion=$home" "RecordFormat=$record_format" || fail "firehose $r"

  next_step
  echo
  echo "[$step] secrets in $r: meshlat/$r/join-secret, meshlat/$r/operator-credential (random, created once); meshlat/$r/join-token, meshlat/$r/ca-cert (written by the controller), meshlat/$r/peer-ca (written by step 8)"
  js[$r]=$(ensure_secret "$r" "meshlat/$r/join-secret" "$( (( dry )) || openssl rand -hex 32)") || fail "secret join-secret $r"
  oc[$r]=$(ensure_secret "$r" "meshlat/$r/operator-credential" "$( (( dry )) || echo "op-meshlat:$(openssl rand -hex 24)")") || fail "secret operator-credential $r"
  jt[$r]=$(ensure_secret "$r" "meshlat/$r/join-token" "") || fail "secret join-token $r"
  ca[$r]=$(ensure_secret "$r" "meshlat/$r/ca-cert" "") || fail "secret ca-cert $r"
  pc[$r]=$(ensure_secret "$r" "meshlat/$r/peer-ca" "") || fail "secret peer-ca $r"
done

# The default jobs of region $1 (its controller's --default-jobs, ensured by name at every start):
# its agents probe every region's agents over udp, tcp, quic and https, and measure every
# region's agents through every region's relay (relay agents carry the location label "relay").
default_jobs() {
  python3 - "$1" "${regions[@]}" <<'PY'
import json, sys
r, regions = sys.argv[1], sys.argv[2:]
every = [f"region={o}" for o in regions]
common = {"sources": [f"region={r}"], "targets": every, "timeout_ms": 5000}
# every 10 s direct, every 30 s through each relay (infra/README.md's cost table assumes these)
print(json.dumps([
    {"name": f"meshlat-mesh-{r}", "kind": "probe", "protocols": ["udp", "tcp", "quic", "https"],
     **common, "interval_ms": 10000},
    {"name": f"meshlat-relay-{r}", "kind": "relay", "protocols": ["udp"], "relays": ["location=relay"],
     **common, "interval_ms": 30000},
], separators=(",", ":")))
PY
}

# services REGION AGENTS RELAYS [PEER_URLS PEER_CA_SHA256]
services() {
  local r=$1 agents=$2 relays=$3 peers=${4:-} peer_sha=${5:-}
  local peer_args=("PeerUrls=$peers" "PeerCaSecretArn=${pc[$r]}") efs_args=()
  # Only for a region named in --spool-efs: the others keep what their stack has (a parameter
  # `aws cloudformation deploy` is not given keeps its previous value).
  [[ -n ${efs_fs[$r]:-} ]] && efs_args=("SpoolEfsFileSystemId=${efs_fs[$r]}" "SpoolEfsSecurityGroupId=${efs_sg[$r]}")
  [[ -n $peers ]] && peer_args+=("PeerCaSha256=$peer_sha")
  deploy_stack "$r" meshlat-services "$CFN/services.yaml" \
    "VpcId=$(out "$r" meshlat-network VpcId)" "SubnetIds=$(out "$r" meshlat-network SubnetIds)" \
    "AgentSecurityGroupId=$(out "$r" meshlat-network AgentSecurityGroupId)" \
    "ControllerSecurityGroupId=$(out "$r" meshlat-network ControllerSecurityGroupId)" \
    "LoadBalancerSecurityGroupId=$(out "$r" meshlat-network LoadBalancerSecurityGroupId)" \
    "MeshCidrs=$mesh_cidrs" \
    "AgentImage=$(registry "$r")/meshlat/agent:$tag" "ControllerImage=$(registry "$r")/meshlat/controller:$tag" \
    "AgentDesiredCount=$agents" "RelayDesiredCount=$relays" "AssignPublicIp=$public_ip" "LoadBalancerScheme=$nlb_scheme" \
    "FirehoseStreamName=$(out "$r" meshlat-firehose DeliveryStreamName)" \
    "FirehoseStreamArn=$(out "$r" meshlat-firehose DeliveryStreamArn)" \
    "JoinSecretArn=${js[$r]}" "OperatorCredentialArn=${oc[$r]}" "JoinTokenArn=${jt[$r]}" \
    "CaCertSecretArn=${ca[$r]}" "FederationSecretArn=$(fed_replica "$r")" "${peer_args[@]}" \
    "DefaultJobs=$(default_jobs "$r")" "${efs_args[@]}"
}

# 7. First start: the controller makes its CA, then writes its join token and CA certificate
# into the two secrets (services.yaml). Agents and relays need the token, so they wait.
secret_value() {
  aws secretsmanager get-secret-value --region "$1" --secret-id "$2" --query SecretString --output text 2>/dev/null
}
fresh=()
for r in "${regions[@]}"; do
  if (( dry )) || ! secret_value "$r" "meshlat/$r/join-token" >/dev/null || ! secret_value "$r" "meshlat/$r/ca-cert" >/dev/null; then
    fresh+=("$r")
  fi
done
for r in "${fresh[@]}"; do
  say "$r: first start of its controller: agents and relays at 0 until it has written meshlat/$r/join-token"
  services "$r" 0 0 || fail "services $r (first start)"
done
if (( ${#fresh[@]} )); then
  next_step
  echo
  echo "[$step] wait (at most 10 minutes) until the controllers of ${fresh[*]} have written meshlat/<r>/join-token and meshlat/<r>/ca-cert"
  if (( ! dry )); then
    for r in "${fresh[@]}"; do
      for _ in $(seq 60); do
        secret_value "$r" "meshlat/$r/join-token" >/dev/null && secret_value "$r" "meshlat/$r/ca-cert" >/dev/null && break
        sleep "${MESHLAT_DEPLOY_POLL_SECONDS:-10}"
      done
      if ! { secret_value "$r" "meshlat/$r/join-token" >/dev/null && secret_value "$r" "meshlat/$r/ca-cert" >/dev/null; }; then
        fail "the controller in $r wrote no join token / CA certificate in 10 minutes: see log group /meshlat/$r/controller"
      fi
    done
  fi
fi

# 8. Federation: every controller peers with every other region's (their NLB's DNS name over the
# peering; the certificate names it) and trusts their CA certificates, copied into its region.
for r in "${regions[@]}"; do
  peers="" bundle="" sha=""
  for o in "${regions[@]}"; do
    [[ $o == "$r" ]] && continue
    peers+="${peers:+,}https://$(out "$o" meshlat-services LoadBalancerDnsName):7400"
    (( dry )) || bundle+="$(secret_value "$o" "meshlat/$o/ca-cert")"$'\n'
  done
  if [[ -n $peers ]]; then
    next_step
    echo
    echo "[$step] peer CA certificates of ${r}'s peers (their meshlat/<peer>/ca-cert) into meshlat/$r/peer-ca"
    if (( dry )); then
      sha="{{$r/secret:meshlat/$r/peer-ca.sha256}}"
    else
      bundle=${bundle%$'\n'}   # as read back ($(...) drops the last newline): compared below
      sha=$(printf '%s' "$bundle" | openssl dgst -sha256 -r | cut -d' ' -f1)
      if [[ $(secret_value "$r" "meshlat/$r/peer-ca") != "$bundle" ]]; then
        aws secretsmanager put-secret-value --region "$r" --secret-id "meshlat/$r/peer-ca" --secret-string "$bundle" >/dev/null \
          || fail "put meshlat/$r/peer-ca"
      fi
    fi
  fi
  services "$r" "$agent_count" "$relay_count" "$peers" "$sha" || fail "services $r"
done

# Retired regions: what the operator deletes once the others no longer use them.
if (( ${#retired[@]} )); then
  next_step
  echo
  echo "[$step] retire ${retired[*]}: the other regions no longer peer with, replicate to or admit them. Delete (in this order):"
  for g in "${retired[@]}"; do
    echo "      aws cloudformation deploy --region $g --stack-name meshlat-services --template-file $CFN/services.yaml --capabilities CAPABILITY_IAM CAPABILITY_NAMED_IAM --no-fail-on-empty-changeset --parameter-overrides LoadBalancerDeletionProtection=false"
    for s in meshlat-services meshlat-firehose; do echo "      aws cloudformation delete-stack --region $g --stack-name $s"; done
    all=("${regions[@]}" "${retired[@]}")
    for o in "${all[@]}"; do
      [[ $o == "$g" ]] && continue
      # the pair's stack is named after the order in the original --regions list
      a=$g b=$o
      io=${cidr[$o]#10.} ig=${cidr[$g]#10.}
      (( ${io%%.*} < ${ig%%.*} )) && { a=$o b=$g; }
      echo "      aws cloudformation delete-stack --region $b --stack-name meshlat-peering-$a-$b   # accepter side first"
      echo "      aws cloudformation delete-stack --region $a --stack-name meshlat-peering-$a-$b"
    done
    echo "      aws cloudformation delete-stack --region $g --stack-name meshlat-network"
    for n in join-token ca-cert peer-ca join-secret operator-credential; do
      echo "      aws secretsmanager delete-secret --region $g --secret-id meshlat/$g/$n"
    done
    echo "      # the state bucket (StateBucketName output, holds the CA key) is retained: empty it (all versions) and delete it"
  done
fi

echo
if (( dry )); then
  say "dry run: $step steps planned, nothing called"
else
  say "done: $step steps"
fi
