#!/usr/bin/env python3
"""Asserts security and operability invariants over infra/cloudformation/*.yaml.

    scripts/test_infra.py            # prints each check, then "N passed, M failed"; exit 1 on failure
    scripts/test_infra.py DIR        # check the templates in DIR instead (used to test the tests)

Runs inside .venv-infra (PyYAML, created on first use by scripts/lib/venv.sh). Templates are
parsed with the CloudFormation short-form tags (!Ref, !Sub, !GetAtt, ...) mapped to their long
forms. Invariants:
  1. no ingress from 0.0.0.0/0 or ::/0 on a mesh port (UDP 7710, TCP 7711, UDP 7712, TCP 7780,
     TCP 7743, TCP 7400/7401), in security groups, ingress resources and prefix lists;
  2. ECS services get no public IP by default (literal DISABLED, or a parameter defaulting to
     DISABLED), subnets do not map public IPs, the NLB is internal by default;
  3. exactly one IAM statement allows a Firehose put, only firehose:PutRecordBatch, on exactly
     one resource that is the region's delivery stream ARN (a parameter constrained to a
     deliverystream ARN, or a stream's GetAtt Arn) - never "*";
  4. an ECR replication configuration with at least one rule with destinations, whose filter
     covers the repositories;
  5. every log group has RetentionInDays;
  6. every ECS service has the deployment circuit breaker enabled with rollback;
  7. no secret-looking variable (TOKEN/SECRET/CREDENTIAL/PASSWORD) in a task's plain environment;
  8. ECS task roles' S3 access is the controller's state prefix only: s3:GetObject/s3:PutObject on
     objects under <bucket>/${StatePrefix}/... (never a whole bucket or "*"), s3:ListBucket only
     with an s3:prefix condition under ${StatePrefix}/, no other S3 action; and there is such a
     statement (the S3 state store holds the controller's CA key).
  9. the state bucket policy denies writing and deleting objects under the state prefix
     (s3:PutObject, s3:DeleteObject at least) and reading them (s3:GetObject) to every principal
     but the controller task role (Effect Deny, Principal "*", ArnNotEquals aws:PrincipalArn on
     the controller task role's Arn) - the controller restores its CA key and credentials from it;
 10. every ECS task definition has its own execution role (no two share one), and an execution
     role may read (secretsmanager:GetSecretValue) exactly the secrets its task definition
     references in Secrets/ValueFrom, no others.
Then a self-test: each invariant is checked again on a deliberately broken copy of the
templates and must fail there (so the checks can fail).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lib"))
import pyvenv  # noqa: E402

pyvenv.reexec_in(pyvenv.INFRA)

import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MESH_PORTS = {("udp", 7710), ("tcp", 7711), ("udp", 7712), ("tcp", 7780), ("tcp", 7743),
              ("tcp", 7400), ("tcp", 7401)}
OPEN = {"0.0.0.0/0", "::/0"}


class CfnLoader(yaml.SafeLoader):
    pass


def _tag(loader, suffix, node):
    name = suffix[1:] if suffix.startswith("!") else suffix
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if name == "Ref":
        return {"Ref": value}
    if name == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    key = name if name == "Condition" else f"Fn::{name}"
    return {key: value}


CfnLoader.add_multi_constructor("!", _tag)


def load(directory: Path) -> dict[str, dict]:
    return {p.name: yaml.load(p.read_text(), Loader=CfnLoader)
            for p in sorted(directory.glob("*.yaml"))}


def resources(templates, rtype):
    for fname, t in templates.items():
        for name, r in (t.get("Resources") or {}).items():
            if r.get("Type") == rtype:
                yield fname, name, r.get("Properties") or {}


def walk(x):
    yield x
    if isinstance(x, dict):
        for v in x.values():
            yield from walk(v)
    elif isinstance(x, list):
        for v in x:
            yield from walk(v)


def param_default(template, value):
    """The literal a value has by default: itself, or its parameter's Default."""
    if isinstance(value, dict) and set(value) == {"Ref"}:
        p = (template.get("Parameters") or {}).get(value["Ref"])
        return None if p is None else p.get("Default")
    return value


def _hits_mesh(rule) -> bool:
    proto = str(rule.get("IpProtocol", "")).lower()
    protos = {"udp", "tcp"} if proto in ("-1", "all") else {{"6": "tcp", "17": "udp"}.get(proto, proto)}
    lo, hi = rule.get("FromPort", 0), rule.get("ToPort", 65535)
    if proto in ("-1", "all"):
        lo, hi = 0, 65535
    if not isinstance(lo, int) or not isinstance(hi, int):
        return True  # not a literal: assume the worst
    return any(p in protos and lo <= port <= hi for p, port in MESH_PORTS)


def check_no_open_ingress(t):
    bad = []
    rules = []
    for f, n, p in resources(t, "AWS::EC2::SecurityGroup"):
        rules += [(f, n, r) for r in p.get("SecurityGroupIngress") or []]
    rules += list(resources(t, "AWS::EC2::SecurityGroupIngress"))
    for f, n, r in rules:
        cidrs = {param_default(t[f], r.get("CidrIp")), param_default(t[f], r.get("CidrIpv6"))}
        if cidrs & OPEN and _hits_mesh(r):
            bad.append(f"{f}:{n} opens {r.get('IpProtocol')} {r.get('FromPort')}-{r.get('ToPort')} to the world")
    for f, n, p in resources(t, "AWS::EC2::PrefixList"):
        if any(isinstance(v, str) and v in OPEN for v in walk(p.get("Entries"))):
            bad.append(f"{f}:{n} prefix list contains {OPEN}")
    if not rules:
        bad.append("no security group ingress rules found at all")
    return bad


def check_no_public_ip(t):
    bad = []
    services = list(resources(t, "AWS::ECS::Service"))
    if not services:
        bad.append("no ECS services found")
    for f, n, p in services:
        cfg = ((p.get("NetworkConfiguration") or {}).get("AwsvpcConfiguration") or {})
        if param_default(t[f], cfg.get("AssignPublicIp", "DISABLED")) != "DISABLED":
            bad.append(f"{f}:{n} AssignPublicIp is not DISABLED by default")
    for f, n, p in resources(t, "AWS::EC2::Subnet"):
        if p.get("MapPublicIpOnLaunch") not in (False, None):
            bad.append(f"{f}:{n} MapPublicIpOnLaunch")
    for f, n, p in resources(t, "AWS::ElasticLoadBalancingV2::LoadBalancer"):
        if param_default(t[f], p.get("Scheme", "internet-facing")) != "internal":
            bad.append(f"{f}:{n} load balancer is not internal by default")
    return bad


def _as_list(x):
    return x if isinstance(x, list) else [x]


def check_one_firehose_put(t):
    bad, found = [], []
    for f, tpl in t.items():
        for name, r in (tpl.get("Resources") or {}).items():
            for node in walk(r):
                if isinstance(node, dict) and "Effect" in node and "Action" in node:
                    acts = [a for a in _as_list(node["Action"]) if isinstance(a, str)]
                    if any(a == "*" or a.lower().startswith("firehose:put") or a.lower() == "firehose:*"
                           for a in acts):
                        found.append((f, name, node))
    if len(found) != 1:
        return [f"expected exactly one Firehose put statement, found {len(found)}: "
                + ", ".join(f"{f}:{n}" for f, n, _ in found)]
    f, name, st = found[0]
    if st.get("Effect") != "Allow" or _as_list(st["Action"]) != ["firehose:PutRecordBatch"]:
        bad.append(f"{f}:{name} Firehose statement allows {st.get('Action')} (want only firehose:PutRecordBatch)")
    res = _as_list(st.get("Resource"))
    if len(res) != 1:
        return bad + [f"{f}:{name} Firehose statement has {len(res)} resources"]
    r = res[0]
    if isinstance(r, dict) and "Ref" in r:
        p = (t[f].get("Parameters") or {}).get(r["Ref"]) or {}
        if "deliverystream/" not in str(p.get("AllowedPattern", "")) or "*" in str(p.get("Default", "")):
            bad.append(f"{f}:{name} Firehose resource parameter {r['Ref']} is not constrained to a delivery stream ARN")
    elif isinstance(r, dict) and "Fn::GetAtt" in r:
        target = (t[f]["Resources"].get(r["Fn::GetAtt"][0]) or {}).get("Type")
        if target != "AWS::KinesisFirehose::DeliveryStream":
            bad.append(f"{f}:{name} Firehose resource is not a delivery stream")
    else:
        bad.append(f"{f}:{name} Firehose resource {r!r} is not one stream's ARN")
    return bad


def _rules(props):
    """The replication rules; an !If [cond, rules, []] (no other region) counts its rules."""
    rules = (props.get("ReplicationConfiguration") or {}).get("Rules") or []
    if isinstance(rules, dict) and "Fn::If" in rules:
        rules = [r for branch in rules["Fn::If"][1:] if isinstance(branch, list) for r in branch]
    return rules


def check_replication(t):
    confs = list(resources(t, "AWS::ECR::ReplicationConfiguration"))
    if not confs:
        return ["no AWS::ECR::ReplicationConfiguration"]
    bad = []
    repos = [p.get("RepositoryName") for _, _, p in resources(t, "AWS::ECR::Repository")]
    if not repos:
        bad.append("no ECR repositories")
    for f, n, p in confs:
        rules = _rules(p)
        good = [r for r in rules if r.get("Destinations")]
        if not good:
            bad.append(f"{f}:{n} has no rule with destinations")
        for r in good:
            for flt in r.get("RepositoryFilters") or []:
                want = flt.get("Filter")
                for repo in repos:
                    sub = repo.get("Fn::Sub") if isinstance(repo, dict) else repo
                    if isinstance(want, dict) and "Ref" in want and isinstance(sub, str) \
                            and not sub.startswith("${" + want["Ref"] + "}"):
                        bad.append(f"{f}:{n} filter {want} does not cover repository {repo}")
    return bad


def check_log_retention(t):
    groups = list(resources(t, "AWS::Logs::LogGroup"))
    bad = [f"{f}:{n} has no RetentionInDays" for f, n, p in groups if "RetentionInDays" not in p]
    return bad if groups else ["no log groups found"]


def check_circuit_breaker(t):
    bad = []
    for f, n, p in resources(t, "AWS::ECS::Service"):
        cb = ((p.get("DeploymentConfiguration") or {}).get("DeploymentCircuitBreaker") or {})
        if cb.get("Enable") is not True or cb.get("Rollback") is not True:
            bad.append(f"{f}:{n} deployment circuit breaker not enabled with rollback")
    return bad


def check_no_plain_secrets(t):
    bad = []
    for f, n, p in resources(t, "AWS::ECS::TaskDefinition"):
        for c in p.get("ContainerDefinitions") or []:
            for e in c.get("Environment") or []:
                name = str(e.get("Name", "")).upper()
                if any(w in name for w in ("TOKEN", "SECRET", "CREDENTIAL", "PASSWORD")):
                    bad.append(f"{f}:{n} {c.get('Name')} has {name} in plain environment (use Secrets)")
    return bad


STATE_OBJECT_ACTIONS = {"s3:GetObject", "s3:PutObject"}


def _ecs_task_roles(t):
    for f, n, p in resources(t, "AWS::IAM::Role"):
        trust = p.get("AssumeRolePolicyDocument") or {}
        if any(v == "ecs-tasks.amazonaws.com" for v in walk(trust)):
            yield f, n, p


def _sub(x):
    return x.get("Fn::Sub") if isinstance(x, dict) else x


def check_state_prefix_scope(t):
    bad, object_st = [], 0
    for f, n, p in _ecs_task_roles(t):
        for node in walk(p.get("Policies") or []):
            if not (isinstance(node, dict) and "Effect" in node and "Action" in node):
                continue
            acts = [a for a in _as_list(node["Action"]) if isinstance(a, str)]
            s3 = [a for a in acts if a == "*" or a.lower().startswith("s3:")]
            if not s3 or node.get("Effect") != "Allow":
                continue
            extra = set(s3) - STATE_OBJECT_ACTIONS - {"s3:ListBucket"}
            if extra:
                bad.append(f"{f}:{n} allows {sorted(extra)} (want only s3:GetObject/PutObject/ListBucket)")
            objects = set(s3) & STATE_OBJECT_ACTIONS
            if objects and "s3:ListBucket" in s3:
                bad.append(f"{f}:{n} mixes object and bucket actions in one statement")
            if objects:
                object_st += 1
                for r in _as_list(node.get("Resource")):
                    r = _sub(r)
                    tail = r.split(":::", 1)[1] if isinstance(r, str) and ":::" in r else ""
                    key = tail.split("/", 1)[1] if "/" in tail else ""
                    if not (key.startswith("${StatePrefix}/") and key.endswith("/*")):
                        bad.append(f"{f}:{n} {sorted(objects)} on {r!r}: not under the state prefix")
            if "s3:ListBucket" in s3:
                cond = (node.get("Condition") or {}).get("StringLike") or {}
                prefixes = [_sub(v) for v in _as_list(cond.get("s3:prefix"))]
                if not prefixes or not all(isinstance(v, str) and v.startswith("${StatePrefix}/")
                                            for v in prefixes):
                    bad.append(f"{f}:{n} s3:ListBucket without an s3:prefix condition under the state prefix")
    if not object_st:
        bad.append("no ECS task role statement allows the state store (s3:GetObject/PutObject on the state prefix)")
    return bad


STATE_DENY_ACTIONS = {"s3:PutObject", "s3:DeleteObject", "s3:GetObject"}


def _controller_task_role(t):
    """Name of the role the controller task definition runs as (its TaskRoleArn's GetAtt)."""
    for f, n, p in resources(t, "AWS::ECS::TaskDefinition"):
        if any(c.get("Name") == "controller" for c in p.get("ContainerDefinitions") or []):
            arn = p.get("TaskRoleArn")
            if isinstance(arn, dict) and "Fn::GetAtt" in arn:
                return arn["Fn::GetAtt"][0]
    return None


def check_state_bucket_denies_others(t):
    bad = []
    role = _controller_task_role(t)
    if role is None:
        return ["no controller task definition with a TaskRoleArn GetAtt"]
    denied = set()
    for f, n, p in resources(t, "AWS::S3::BucketPolicy"):
        for st in (p.get("PolicyDocument") or {}).get("Statement") or []:
            if st.get("Effect") != "Deny" or st.get("Principal") != "*":
                continue
            res = [_sub(r) for r in _as_list(st.get("Resource"))]
            if not any(isinstance(r, str) and "${StatePrefix}/" in r and r.endswith("/*") for r in res):
                continue
            cond = (st.get("Condition") or {}).get("ArnNotEquals") or {}
            if cond.get("aws:PrincipalArn") != {"Fn::GetAtt": [role, "Arn"]}:
                continue
            denied |= set(_as_list(st.get("Action")))
    missing = STATE_DENY_ACTIONS - denied
    if missing:
        bad.append(f"the state bucket policy does not deny {sorted(missing)} on the state prefix "
                   f"to every principal but {role}")
    return bad


def _secret_refs(x):
    """The secret references (Refs of parameters) in x, as parameter names."""
    return {v["Ref"] for v in walk(x) if isinstance(v, dict) and set(v) == {"Ref"}}


def check_execution_roles_per_service(t):
    bad, seen = [], {}
    roles = {n: p for f, n, p in resources(t, "AWS::IAM::Role")}
    for f, n, p in resources(t, "AWS::ECS::TaskDefinition"):
        arn = p.get("ExecutionRoleArn")
        if not (isinstance(arn, dict) and "Fn::GetAtt" in arn):
            bad.append(f"{f}:{n} ExecutionRoleArn is not a role of the stack")
            continue
        role = arn["Fn::GetAtt"][0]
        if role in seen:
            bad.append(f"{f}:{n} shares execution role {role} with {seen[role]}")
        seen[role] = n
        used = set()
        for c in p.get("ContainerDefinitions") or []:
            for sec in c.get("Secrets") or []:
                used |= _secret_refs(sec.get("ValueFrom"))
        readable = set()
        for node in walk((roles.get(role) or {}).get("Policies") or []):
            if isinstance(node, dict) and "secretsmanager:GetSecretValue" in _as_list(node.get("Action")):
                readable |= _secret_refs(node.get("Resource"))
                if any(r == "*" for r in _as_list(node.get("Resource"))):
                    readable.add("*")
        if readable != used:
            bad.append(f"{f}:{n} execution role {role} reads secrets {sorted(readable)}, "
                       f"the task uses {sorted(used)}")
    return bad


CHECKS = [
    ("no 0.0.0.0/0 or ::/0 ingress on mesh ports", check_no_open_ingress),
    ("no public IPs by default (tasks, subnets, NLB internal)", check_no_public_ip),
    ("exactly one Firehose put permission, scoped to the region's stream", check_one_firehose_put),
    ("ECR replication rule present and covering the repositories", check_replication),
    ("every log group has retention", check_log_retention),
    ("deployment circuit breaker with rollback on every ECS service", check_circuit_breaker),
    ("no secrets in plain task environment", check_no_plain_secrets),
    ("controller S3 access scoped to its state prefix", check_state_prefix_scope),
    ("state bucket denies reads and writes of the state prefix to all but the controller",
     check_state_bucket_denies_others),
    ("one execution role per service, reading only that service's secrets",
     check_execution_roles_per_service),
]


def _first(t, rtype):
    return next(resources(t, rtype))


# Breakages for the self-test: each must make the named check fail.
def _break_ingress(t):
    f, n, p = _first(t, "AWS::EC2::SecurityGroup")
    p.setdefault("SecurityGroupIngress", []).append(
        {"IpProtocol": "udp", "FromPort": 7700, "ToPort": 7720, "CidrIp": "0.0.0.0/0"})


def _break_public_ip(t):
    for f, tpl in t.items():
        if "AssignPublicIp" in (tpl.get("Parameters") or {}):
            tpl["Parameters"]["AssignPublicIp"]["Default"] = "ENABLED"


def _break_firehose(t):
    f, n, p = _first(t, "AWS::IAM::Role")
    p.setdefault("Policies", []).append({"PolicyName": "x", "PolicyDocument": {"Statement": [
        {"Effect": "Allow", "Action": "firehose:*", "Resource": "*"}]}})


def _break_firehose_scope(t):
    for f, n, p in resources(t, "AWS::IAM::Role"):
        for node in walk(p):
            if isinstance(node, dict) and node.get("Action") == "firehose:PutRecordBatch":
                node["Resource"] = "*"


def _break_replication(t):
    for f, n, p in resources(t, "AWS::ECR::ReplicationConfiguration"):
        for r in _rules(p):
            r["Destinations"] = []


def _break_retention(t):
    f, n, p = _first(t, "AWS::Logs::LogGroup")
    p.pop("RetentionInDays")


def _break_breaker(t):
    f, n, p = _first(t, "AWS::ECS::Service")
    p["DeploymentConfiguration"]["DeploymentCircuitBreaker"]["Rollback"] = False


def _break_secret(t):
    f, n, p = _first(t, "AWS::ECS::TaskDefinition")
    p["ContainerDefinitions"][0].setdefault("Environment", []).append({"Name": "MESHLAT_TOKEN", "Value": "x"})


def _state_statements(t):
    for f, n, p in _ecs_task_roles(t):
        for node in walk(p.get("Policies") or []):
            if isinstance(node, dict) and "Action" in node and any(
                    str(a).startswith("s3:") for a in _as_list(node["Action"])):
                yield node


def _break_state_whole_bucket(t):
    for st in _state_statements(t):
        if "s3:GetObject" in _as_list(st["Action"]):
            st["Resource"] = {"Fn::Sub": "arn:${AWS::Partition}:s3:::${StateBucket}/*"}


def _break_state_list(t):
    for st in _state_statements(t):
        if "s3:ListBucket" in _as_list(st["Action"]):
            st.pop("Condition")


def _break_state_delete(t):
    for st in _state_statements(t):
        if "s3:GetObject" in _as_list(st["Action"]):
            st["Action"] = _as_list(st["Action"]) + ["s3:*"]


def _state_deny(t):
    for f, n, p in resources(t, "AWS::S3::BucketPolicy"):
        for st in (p.get("PolicyDocument") or {}).get("Statement") or []:
            if st.get("Effect") == "Deny" and "s3:PutObject" in _as_list(st.get("Action")):
                yield st


def _break_state_writes(t):
    # Only reads denied (as before this invariant): anyone with s3:PutObject could plant ca.key.
    for st in list(_state_deny(t)):
        st["Action"] = [a for a in _as_list(st["Action"]) if a not in ("s3:PutObject",)]


def _break_state_deny_principal(t):
    for st in _state_deny(t):
        st["Condition"]["ArnNotEquals"]["aws:PrincipalArn"] = {"Fn::GetAtt": ["AgentTaskRole", "Arn"]}


def _break_shared_execution_role(t):
    for f, n, p in resources(t, "AWS::ECS::TaskDefinition"):
        p["ExecutionRoleArn"] = {"Fn::GetAtt": ["ControllerExecutionRole", "Arn"]}


def _break_agent_reads_controller_secrets(t):
    for f, n, p in resources(t, "AWS::IAM::Role"):
        if n == "AgentExecutionRole":
            for node in walk(p.get("Policies") or []):
                if isinstance(node, dict) and node.get("Action") == "secretsmanager:GetSecretValue":
                    node["Resource"] = _as_list(node["Resource"]) + [{"Ref": "JoinSecretArn"}]


BREAKS = [
    (_break_ingress, check_no_open_ingress),
    (_break_public_ip, check_no_public_ip),
    (_break_firehose, check_one_firehose_put),
    (_break_firehose_scope, check_one_firehose_put),
    (_break_replication, check_replication),
    (_break_retention, check_log_retention),
    (_break_breaker, check_circuit_breaker),
    (_break_secret, check_no_plain_secrets),
    (_break_state_whole_bucket, check_state_prefix_scope),
    (_break_state_list, check_state_prefix_scope),
    (_break_state_delete, check_state_prefix_scope),
    (_break_state_writes, check_state_bucket_denies_others),
    (_break_state_deny_principal, check_state_bucket_denies_others),
    (_break_shared_execution_role, check_execution_roles_per_service),
    (_break_agent_reads_controller_secrets, check_execution_roles_per_service),
]


def main() -> int:
    directory = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "infra" / "cloudformation"
    templates = load(directory)
    print(f"test_infra: {len(templates)} templates in {directory}: {', '.join(templates)}")
    passed = failed = 0
    for title, fn in CHECKS:
        problems = fn(templates)
        if problems:
            failed += 1
            print(f"FAIL {title}")
            for p in problems:
                print(f"     {p}")
        else:
            passed += 1
            print(f"ok   {title}")
    for brk, fn in BREAKS:
        broken = copy.deepcopy(templates)
        try:
            brk(broken)
        except StopIteration:
            failed += 1
            print(f"FAIL self-test {brk.__name__}: nothing to break (resource missing)")
            continue
        if fn(broken):
            passed += 1
            print(f"ok   self-test: {fn.__name__} catches {brk.__name__}")
        else:
            failed += 1
            print(f"FAIL self-test: {fn.__name__} misses {brk.__name__}")
    print(f"test_infra: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
