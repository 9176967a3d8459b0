#!/usr/bin/env bash
# Property-based API fuzzing of the controller's REST API with schemathesis, from the API's own
# OpenAPI document (GET /api/v1/openapi.json), against a real controller on loopback over TLS.
#   scripts/test_api.sh [MAX_EXAMPLES]      # default 25 per operation (the `api-fuzz` stage)
#
# Checks every operation: no 5xx, no crash (the controller must still answer health afterwards),
# every status code and body as documented (schemathesis' `all` checks, minus the ones that judge
# what the document does not claim: see EXCLUDED). The controller runs with the rate limits off
# (schemathesis sends hundreds of requests a second; 429 is documented and tested elsewhere).
# schemathesis is installed into .venv-api on first use. Bounded: a seed makes runs repeatable.
set -euo pipefail
cd "$(dirname "$0")/.." || exit 2
FAIL_TAG="FAIL: "
# shellcheck source=scripts/lib/common.sh
source scripts/lib/common.sh
examples=${1:-25}
venv=$(scripts/lib/venv.sh api 'schemathesis==4.32.5')
bin=target/debug/controller
[[ -x $bin ]] || cargo build -p meshlat-controller --bin controller --locked
dir=$(mktemp -d "${TMPDIR:-/tmp}/meshlat-test-api.XXXXXX")
pid=""
cleanup() {
  [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT
# Called by fail (scripts/lib/common.sh) after its message: the controller's last errors.
on_fail() {
  [[ -f $dir/controller.log ]] && grep -E ' (ERROR|WARN) ' "$dir/controller.log" | grep -v 'bad credential' | tail -n 20 >&2
}

cred="api-fuzz:api-fuzz-secret-0123456789abcdef"
"$bin" serve --region api --listen 127.0.0.1:0 --rest-listen 127.0.0.1:0 --data-dir "$dir/data" \
  --operator-credential "$cred" --rate-limit-per-ip 0 --rate-limit-per-credential 0 \
  >"$dir/controller.out" 2>"$dir/controller.log" &
pid=$!
for _ in $(seq 1 100); do
  grep -q '^listening rest ' "$dir/controller.out" 2>/dev/null && grep -q '^listening grpc ' "$dir/controller.out" && break
  kill -0 "$pid" 2>/dev/null || fail "controller exited at start"
  sleep 0.1
done
rest=$(awk '/^listening rest /{print $3}' "$dir/controller.out")
grpc=$(awk '/^listening grpc /{print $3}' "$dir/controller.out")
[[ -n $rest ]] || fail "controller did not announce its REST address"

# Checks that judge what our document does not promise:
# - positive_data_acceptance / negative_data_rejection: JSON Schema cannot express every rule of
#   the one validator (timeout below interval, selector syntax, k against the matched agents),
#   so a schema-valid spec may rightly get 400;
# - use_after_free / ensure_resource_availability: stopped jobs stay readable (GET answers the
#   stopped job) by design until they expire;
# The coverage phase is left out: on this Python (3.11) it crashed inside hypothesis
# ("AST constructor recursion depth mismatch"), which is not a finding about the API.
# revokeCredential is left out: fed names it has seen, it would revoke its own credential and
# every later call would be 401 (revocation is tested by controller/tests and tests/openapi.rs).
# - missing_required_header / ignored_auth are kept: every call but the document needs the
#   credential.
EXCLUDED=positive_data_acceptance,negative_data_rejection,use_after_free,ensure_resource_availability
echo "test_api: schemathesis, $examples examples per operation, against https://$rest"
rc=0
"$venv/bin/st" run "https://$rest/api/v1/openapi.json" \
  --tls-verify "$dir/data/ca.pem" -H "Authorization: Bearer $cred" \
  --checks all --exclude-checks "$EXCLUDED" \
  --max-examples "$examples" --seed 20261202 --no-color \
  --exclude-operation-id revokeCredential \
  --phases examples,fuzzing,stateful \
  --workers 1 --max-failures 20 >"$dir/st.out" 2>&1 || rc=$?
mkdir -p target && cp "$dir/st.out" target/test_api.st.out
grep -v '^\s*$' "$dir/st.out" | tail -n 60
echo "test_api: whole report: target/test_api.st.out"
kill -0 "$pid" 2>/dev/null || fail "the controller died during the run"
"$bin" health --url "https://$grpc" --ca "$dir/data/ca.pem" >/dev/null 2>&1 ||
  fail "controller health does not answer after the run"
(( rc == 0 )) || fail "schemathesis found problems (exit $rc); the report is above"
echo "test_api: ok (controller still healthy)"
