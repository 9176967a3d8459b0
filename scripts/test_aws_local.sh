#!/usr/bin/env bash
# The AWS deployment run on this machine (the scripts/test.sh stage aws-local): the rendered stacks
# of a three-region `scripts/deploy.sh --dry-run`, run as written by a local stand-in for AWS
# (scripts/lib/aws_standin.py: a network namespace per VPC and per task, veth pairs and routes for
# the peering, nftables from the security groups, podman containers for the ECS tasks, an ECS
# metadata stand-in, moto for Firehose, S3 and Secrets Manager), then asserts the mesh end to end.
#
#   scripts/test_aws_local.sh [--mutate NAME] [--regions A,B,C] [--timeout S] [--no-build]
#
#   --mutate NAME   run with one deliberate template mistake; the run must then FAIL:
#                   drop-federation-ingress | drop-relay-service | block-controller-grpc-egress
#   --no-build      use the images already tagged localhost/meshlat-*:$MESHLAT_IMAGE_TAG
#
# Needs root, podman/buildah/runc (scripts/images.sh setup), nftables, the debug binaries
# (cargo build --workspace --bins), .venv-moto (scripts/moto.sh) and .venv-analytics
# (scripts/athena-local). Images are built from target/debug with a run-specific tag and removed
# afterwards; every container and namespace is removed on exit (also on TERM/INT).
# Work directory (plan, logs, the S3 objects): target/aws-local/. Exit 0 only if every check
# passed; 1 a check failed; 2 usage (also a --mutate that finds nothing to change).
set -euo pipefail
cd "$(dirname "$0")/.." || exit 2
# shellcheck source=scripts/lib/common.sh
source scripts/lib/common.sh
ROOT=$PWD
build=1
args=()
while (( $# )); do
  case $1 in
    --no-build) build=0; shift ;;
    --mutate)
      case ${2:-} in
        drop-federation-ingress|drop-relay-service|block-controller-grpc-egress) ;;
        *) die "--mutate drop-federation-ingress|drop-relay-service|block-controller-grpc-egress" ;;
      esac
      args+=("$1" "$2"); shift 2 ;;
    --regions|--timeout) args+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (--help)" ;;
  esac
done
[[ $(id -u) == 0 ]] || fail "needs root (network namespaces, nftables, rootful podman)"
command -v nft >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Retries=3 install -y -qq nftables >/dev/null \
  || fail "nftables missing (apt-get install nftables)"
scripts/images.sh setup || exit 1
py=$(scripts/moto.sh python) || fail "no .venv-moto (scripts/moto.sh python)"
work=$ROOT/target/aws-local
rm -rf "$work"; mkdir -p "$work"
tag=${MESHLAT_IMAGE_TAG:-standin-$$}
t0=$SECONDS
if (( build )); then
  MESHLAT_IMAGE_TAG=$tag scripts/images.sh --debug build 2>&1 | tail -3 || exit 1
  echo "test_aws_local: images built in $((SECONDS - t0)) s (tag $tag)"
fi
rc=0
"$py" scripts/lib/aws_standin.py --image-tag "$tag" --work "$work" "${args[@]}" || rc=$?
if (( build )); then podman rmi -f "localhost/meshlat-agent:$tag" "localhost/meshlat-controller:$tag" >/dev/null 2>&1 || true; fi
echo "test_aws_local: exit $rc after $((SECONDS - t0)) s"
exit $rc
