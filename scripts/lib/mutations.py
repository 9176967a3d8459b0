"""Mutation checks for scripts/test_aws_local.sh --mutate NAME: each edits the rendered templates
the way a plausible mistake would, and the stand-in run must then fail.

  drop-federation-ingress        the controller's (and its NLB's) security groups lose their
                                 ingress rule(s) for TCP 7400 from beyond the VPC (the other
                                 regions' controllers)
  drop-relay-service             the relay ECS service is removed from services.yaml
  block-controller-grpc-egress   the controller security group loses its egress rule(s) that allow
                                 TCP 7400 (agents' controller, peer controllers)
"""

from __future__ import annotations

from typing import Any

NAMES = ("drop-federation-ingress", "drop-relay-service", "block-controller-grpc-egress")


def _covers(rule: dict, port: int) -> bool:
    proto = str(rule.get("IpProtocol", "-1"))
    if proto == "-1":
        return True
    if proto not in ("tcp", "6"):
        return False
    lo, hi = rule.get("FromPort", -1), rule.get("ToPort", -1)
    return isinstance(lo, int) and isinstance(hi, int) and lo <= port <= hi


def apply(name: str, ps: Any, tpl: dict) -> int:
    """Edits tpl in place; returns the number of changes."""
    if name not in NAMES:
        raise SystemExit(f"--mutate {name!r}: one of {', '.join(NAMES)}")
    res = tpl.get("Resources") or {}
    hit = 0
    if name in ("drop-federation-ingress", "block-controller-grpc-egress"):
        way = "SecurityGroupIngress" if name == "drop-federation-ingress" else "SecurityGroupEgress"
        for logical, r in list(res.items()):
            if r.get("Type") == "AWS::EC2::SecurityGroup" and _targets(logical, way):
                rules = (r.get("Properties") or {}).get(way) or []
                keep = [x for x in rules if not (_covers(x, 7400) and _from_elsewhere(x, way))]
                hit += len(rules) - len(keep)
                r["Properties"][way] = keep
            standalone = "AWS::EC2::SecurityGroupIngress" if way == "SecurityGroupIngress" else "AWS::EC2::SecurityGroupEgress"
            group = str(r.get("Properties", {}).get("GroupId"))
            if r.get("Type") == standalone and _targets(group, way) \
                    and _covers(r.get("Properties") or {}, 7400) and _from_elsewhere(r.get("Properties") or {}, way):
                del res[logical]
                hit += 1
    elif name == "drop-relay-service":
        for logical, r in list(res.items()):
            if r.get("Type") == "AWS::ECS::Service" and "Relay" in logical:
                del res[logical]
                hit += 1
    if hit:
        print(f"mutation {name}: {hit} change(s) in {ps.name} ({ps.region})", flush=True)
    return hit


def _targets(name: str, way: str) -> bool:
    """Ingress: the controller's and its NLB's groups (the NLB is where federation enters);
    egress: the controller's group only (what the controller itself may send)."""
    if way == "SecurityGroupIngress":
        return "Controller" in name or "LoadBalancer" in name
    return "Controller" in name and "LoadBalancer" not in name


def _from_elsewhere(rule: dict, way: str) -> bool:
    """Ingress from beyond this VPC (a prefix list or a CIDR other than the VPC's; not a
    same-region security group), or any egress."""
    if way == "SecurityGroupEgress":
        return True
    if "SourceSecurityGroupId" in rule:
        return False
    return "VpcCidr" not in str(rule.get("CidrIp", ""))
