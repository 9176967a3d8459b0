"""The CloudFormation a three-region dry run renders, resolved as CloudFormation would (stdlib + PyYAML).

Used by scripts/lib/aws_standin.py (scripts/test_aws_local.sh). It reads the plan printed by
`scripts/deploy.sh --dry-run` (stack, region, template, parameters with `{{region/stack.Output}}`
and `{{region/secret:NAME}}` placeholders), loads each template with its short-form tags, and
evaluates every stack in plan order: Parameters (defaults, list types), pseudo parameters,
Conditions, Ref, Fn::Sub (both forms, `${!Literal}`), Fn::GetAtt, Fn::Join, Fn::Select, Fn::Split,
Fn::If, Fn::Equals/Not/And/Or, Fn::ImportValue (exports of earlier stacks of the same region),
Fn::Cidr, Fn::GetAZs, Fn::FindInMap, Fn::Base64, and the Outputs later stacks read.

Physical ids are made up deterministically (vpc-<hash>, sg-<hash>, bucket names from the stack and
logical id, ARNs in account 123456789012); a name property (BucketName, DeliveryStreamName, Name,
...) wins as in AWS. An attribute this module does not know raises UnknownAttribute naming the
resource, so a template change that the stand-in cannot model fails loudly instead of running
something else.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cfn_yaml import load_template

ACCOUNT = "123456789012"
NO_VALUE = object()


class UnknownAttribute(Exception):
    pass


# ---- the dry-run plan ---------------------------------------------------------------------------

@dataclass
class PlanStack:
    step: int
    name: str
    region: str
    template: str
    params: dict[str, str]


@dataclass
class PlanStep:
    """A step of the plan that is not a stack (images, secrets, waits, copies): its text."""
    step: int
    text: str


def parse_plan(text: str) -> list[PlanStack | PlanStep]:
    """The steps of `deploy.sh --dry-run` output, in order."""
    stacks: list[PlanStack | PlanStep] = []
    cur: PlanStack | None = None
    for line in text.splitlines():
        m = re.match(r"^\[(\d+)\] stack (\S+)  region (\S+)  template (\S+)$", line)
        if m:
            cur = PlanStack(int(m.group(1)), m.group(2), m.group(3), m.group(4), {})
            stacks.append(cur)
            continue
        m = re.match(r"^\[(\d+)\] (.*)$", line)
        if m:
            stacks.append(PlanStep(int(m.group(1)), m.group(2)))
            cur = None
            continue
        if cur is None:
            continue
        m = re.match(r"^      ([A-Za-z0-9]+)=(.*)$", line)
        if m:
            cur.params[m.group(1)] = m.group(2)
        elif not line.startswith("      "):
            cur = None
    return stacks


# ---- evaluation ---------------------------------------------------------------------------------

def h(*parts: str, n: int = 17) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:n]


@dataclass
class Stack:
    plan: PlanStack
    template: dict
    params: dict[str, Any] = field(default_factory=dict)
    conditions: dict[str, bool] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    exports: dict[str, Any] = field(default_factory=dict)

    @property
    def region(self) -> str:
        return self.plan.region

    @property
    def name(self) -> str:
        return self.plan.name

    def resources(self) -> dict[str, dict]:
        """Resources whose Condition holds."""
        out = {}
        for k, r in (self.template.get("Resources") or {}).items():
            c = r.get("Condition")
            if c is None or self.condition(c):
                out[k] = r
        return out

    def resources_of(self, typ: str) -> dict[str, dict]:
        return {k: r for k, r in self.resources().items() if r.get("Type") == typ}

    # -- intrinsic functions --
    def condition(self, name: str) -> bool:
        if name not in self.conditions:
            self.conditions[name] = bool(self.eval(self.template["Conditions"][name]))
        return self.conditions[name]

    def props(self, logical: str) -> dict:
        r = self.template["Resources"][logical]
        return self.eval(r.get("Properties") or {})

    def ref(self, name: str) -> Any:
        pseudo = {
            "AWS::Region": self.region, "AWS::AccountId": ACCOUNT, "AWS::StackName": self.name,
            "AWS::Partition": "aws", "AWS::URLSuffix": "amazonaws.com", "AWS::NoValue": NO_VALUE,
            "AWS::StackId": f"arn:aws:cloudformation:{self.region}:{ACCOUNT}:stack/{self.name}/{h(self.name, self.region)}",
        }
        if name in pseudo:
            return pseudo[name]
        if name in self.params:
            return self.params[name]
        res = self.template.get("Resources") or {}
        if name not in res:
            raise KeyError(f"{self.name} ({self.region}): Ref {name}: no such parameter or resource")
        return physical_id(self, name, res[name])

    def getatt(self, logical: str, attr: str) -> Any:
        res = (self.template.get("Resources") or {}).get(logical)
        if res is None:
            raise KeyError(f"{self.name} ({self.region}): GetAtt {logical}.{attr}: no such resource")
        return attribute(self, logical, res, attr)

    def sub(self, s: str, extra: dict[str, Any]) -> str:
        def repl(m: re.Match) -> str:
            key = m.group(1)
            if key.startswith("!"):
                return "${" + key[1:] + "}"
            if key in extra:
                v = extra[key]
            elif "." in key and not key.startswith("AWS::"):
                a, b = key.split(".", 1)
                v = self.getatt(a, b)
            else:
                v = self.ref(key)
            if isinstance(v, list):
                raise ValueError(f"{self.name}: Sub ${{{key}}} is a list")
            return str(v)
        return re.sub(r"\$\{([^}]+)\}", repl, s)

    def eval(self, x: Any) -> Any:
        if isinstance(x, list):
            out = [self.eval(v) for v in x]
            return [v for v in out if v is not NO_VALUE]
        if not isinstance(x, dict):
            return x
        if len(x) == 1:
            (k, v), = x.items()
            if k == "Ref":
                return self.ref(v)
            if k == "Condition":
                return self.condition(v)
            if k == "Fn::Sub":
                if isinstance(v, str):
                    return self.sub(v, {})
                return self.sub(v[0], {n: self.eval(e) for n, e in v[1].items()})
            if k == "Fn::GetAtt":
                a, b = v if isinstance(v, list) else v.split(".", 1)
                return self.getatt(self.eval(a), self.eval(b))
            if k == "Fn::Join":
                sep, items = v[0], self.eval(v[1])
                return sep.join(str(i) for i in items)
            if k == "Fn::Select":
                idx, items = int(self.eval(v[0])), self.eval(v[1])
                return items[idx]
            if k == "Fn::Split":
                return str(self.eval(v[1])).split(v[0])
            if k == "Fn::If":
                return self.eval(v[1]) if self.condition(v[0]) else self.eval(v[2])
            if k == "Fn::Equals":
                a, b = self.eval(v[0]), self.eval(v[1])
                return str(a) == str(b)
            if k == "Fn::Not":
                return not self.eval(v[0])
            if k == "Fn::And":
                return all(self.eval(c) for c in v)
            if k == "Fn::Or":
                return any(self.eval(c) for c in v)
            if k == "Fn::ImportValue":
                name = self.eval(v)
                return self.imports(name)
            if k == "Fn::Cidr":
                block, count, bits = self.eval(v[0]), int(self.eval(v[1])), int(self.eval(v[2]))
                net = ipaddress.ip_network(block)
                return [str(s) for s in list(net.subnets(new_prefix=net.max_prefixlen - bits))[:count]]
            if k == "Fn::GetAZs":
                return [f"{self.region}a", f"{self.region}b", f"{self.region}c"]
            if k == "Fn::FindInMap":
                m, a, b = (self.eval(e) for e in v)
                return self.template["Mappings"][m][a][b]
            if k == "Fn::Base64":
                return base64.b64encode(str(self.eval(v)).encode()).decode()
            if k == "Fn::Length":
                return len(self.eval(v))
        out_d = {}
        for k, v in x.items():
            ev = self.eval(v)
            if ev is not NO_VALUE:
                out_d[k] = ev
        return out_d

    imports: Callable[[str], Any] = None  # set by Deployment
    overrides: dict = None  # set by Deployment


# ---- physical ids and attributes -----------------------------------------------------------------

_PREFIX = {
    "AWS::EC2::VPC": "vpc-", "AWS::EC2::Subnet": "subnet-", "AWS::EC2::SecurityGroup": "sg-",
    "AWS::EC2::PrefixList": "pl-", "AWS::EC2::RouteTable": "rtb-", "AWS::EC2::InternetGateway": "igw-",
    "AWS::EC2::VPCPeeringConnection": "pcx-", "AWS::EC2::VPCEndpoint": "vpce-",
    "AWS::Route53::HostedZone": "Z", "AWS::EC2::NatGateway": "nat-",
}
_NAME_PROP = {
    "AWS::S3::Bucket": "BucketName", "AWS::KinesisFirehose::DeliveryStream": "DeliveryStreamName",
    "AWS::Logs::LogGroup": "LogGroupName", "AWS::ECS::Cluster": "ClusterName",
    "AWS::IAM::Role": "RoleName", "AWS::SSM::Parameter": "Name", "AWS::Logs::LogStream": "LogStreamName",
    "AWS::Glue::Database": "DatabaseInput.Name", "AWS::Athena::WorkGroup": "Name",
    "AWS::ECR::Repository": "RepositoryName", "AWS::SecretsManager::Secret": "Name",
}


def _name_prop(st: Stack, logical: str, res: dict) -> str | None:
    p = _NAME_PROP.get(res.get("Type", ""))
    if not p:
        return None
    v: Any = (res.get("Properties") or {})
    for part in p.split("."):
        v = v.get(part) if isinstance(v, dict) else None
    return st.eval(v) if v is not None else None


def physical_name(st: Stack, logical: str, res: dict) -> str:
    n = _name_prop(st, logical, res)
    if n:
        return str(n)
    base = f"{st.name}-{logical}-{h(st.region, st.name, logical, n=12)}"
    if res["Type"] == "AWS::S3::Bucket":
        return base.lower()[:63]
    return base


def physical_id(st: Stack, logical: str, res: dict) -> Any:
    if st.overrides and (st.region, st.name, logical) in st.overrides:
        return st.overrides[(st.region, st.name, logical)]
    typ = res.get("Type", "")
    r = st.region
    if typ in _PREFIX:
        return _PREFIX[typ] + h(r, st.name, logical)
    name = physical_name(st, logical, res)
    if typ == "AWS::SecretsManager::Secret":
        return f"arn:aws:secretsmanager:{r}:{ACCOUNT}:secret:{name}-{h(name, n=6)}"
    if typ in ("AWS::ECS::TaskDefinition", "AWS::ElasticLoadBalancingV2::LoadBalancer",
               "AWS::ElasticLoadBalancingV2::TargetGroup", "AWS::ElasticLoadBalancingV2::Listener",
               "AWS::ECS::Service"):
        return arn(st, logical, res)
    return name


def arn(st: Stack, logical: str, res: dict) -> str:
    typ, r = res.get("Type", ""), st.region
    name = physical_name(st, logical, res)
    svc = {
        "AWS::S3::Bucket": lambda: f"arn:aws:s3:::{name}",
        "AWS::KinesisFirehose::DeliveryStream": lambda: f"arn:aws:firehose:{r}:{ACCOUNT}:deliverystream/{name}",
        "AWS::IAM::Role": lambda: f"arn:aws:iam::{ACCOUNT}:role/{name}",
        "AWS::Logs::LogGroup": lambda: f"arn:aws:logs:{r}:{ACCOUNT}:log-group:{name}:*",
        "AWS::SecretsManager::Secret": lambda: physical_id(st, logical, res),
        "AWS::ECS::Cluster": lambda: f"arn:aws:ecs:{r}:{ACCOUNT}:cluster/{name}",
        "AWS::ECS::TaskDefinition": lambda: f"arn:aws:ecs:{r}:{ACCOUNT}:task-definition/{name}:1",
        "AWS::ECS::Service": lambda: f"arn:aws:ecs:{r}:{ACCOUNT}:service/{name}",
        "AWS::ElasticLoadBalancingV2::LoadBalancer": lambda: f"arn:aws:elasticloadbalancing:{r}:{ACCOUNT}:loadbalancer/net/{name[:32]}/{h(name, n=16)}",
        "AWS::ElasticLoadBalancingV2::TargetGroup": lambda: f"arn:aws:elasticloadbalancing:{r}:{ACCOUNT}:targetgroup/{name[:32]}/{h(name, n=16)}",
        "AWS::ElasticLoadBalancingV2::Listener": lambda: f"arn:aws:elasticloadbalancing:{r}:{ACCOUNT}:listener/net/{name[:32]}/{h(name, n=16)}",
        "AWS::KMS::Key": lambda: f"arn:aws:kms:{r}:{ACCOUNT}:key/{h(name, n=32)}",
        "AWS::SSM::Parameter": lambda: f"arn:aws:ssm:{r}:{ACCOUNT}:parameter/{name.lstrip('/')}",
        "AWS::Glue::Database": lambda: f"arn:aws:glue:{r}:{ACCOUNT}:database/{name}",
        "AWS::ECR::Repository": lambda: f"arn:aws:ecr:{r}:{ACCOUNT}:repository/{name}",
        "AWS::SNS::Topic": lambda: f"arn:aws:sns:{r}:{ACCOUNT}:{name}",
        "AWS::Lambda::Function": lambda: f"arn:aws:lambda:{r}:{ACCOUNT}:function:{name}",
        "AWS::EC2::PrefixList": lambda: f"arn:aws:ec2:{r}:{ACCOUNT}:prefix-list/{physical_id(st, logical, res)}",
    }.get(typ)
    if svc is None:
        svc = lambda: f"arn:aws:{typ.split('::')[1].lower()}:{r}:{ACCOUNT}:{logical.lower()}/{name}"  # noqa: E731
    return svc()


def lb_dns(st: Stack, logical: str, res: dict) -> str:
    return f"{st.name}-{logical}-{h(st.region, logical, n=10)}.elb.{st.region}.amazonaws.com".lower()


def attribute(st: Stack, logical: str, res: dict, attr: str) -> Any:
    typ = res.get("Type", "")
    if attr == "Arn":
        return arn(st, logical, res)
    if typ == "AWS::ElasticLoadBalancingV2::LoadBalancer":
        if attr == "DNSName":
            return lb_dns(st, logical, res)
        if attr == "CanonicalHostedZoneID":
            return "Z2IFOLAFXWLO4F"
        if attr == "LoadBalancerFullName":
            return arn(st, logical, res).split("loadbalancer/", 1)[1]
    if typ == "AWS::EC2::VPC" and attr == "CidrBlock":
        return st.props(logical)["CidrBlock"]
    if typ == "AWS::EC2::SecurityGroup" and attr == "GroupId":
        return physical_id(st, logical, res)
    if typ == "AWS::EC2::PrefixList" and attr == "PrefixListId":
        return physical_id(st, logical, res)
    if typ == "AWS::EC2::Subnet" and attr == "SubnetId":
        return physical_id(st, logical, res)
    if typ == "AWS::S3::Bucket" and attr in ("DomainName", "RegionalDomainName"):
        return f"{physical_name(st, logical, res)}.s3.{st.region}.amazonaws.com"
    if typ == "AWS::SecretsManager::Secret" and attr == "Id":
        return physical_id(st, logical, res)
    if typ == "AWS::Route53::HostedZone" and attr == "Id":
        return physical_id(st, logical, res)
    if typ == "AWS::IAM::Role" and attr == "RoleId":
        return "AROA" + h(logical, n=17).upper()
    if typ == "AWS::KMS::Key" and attr == "KeyId":
        return h(logical, n=32)
    if typ == "AWS::EC2::VPCPeeringConnection" and attr == "Id":
        return physical_id(st, logical, res)
    if typ == "AWS::ECR::Repository" and attr == "RepositoryUri":
        return f"{ACCOUNT}.dkr.ecr.{st.region}.amazonaws.com/{physical_name(st, logical, res)}"
    if typ == "AWS::ECS::Service" and attr == "Name":
        return st.eval((res.get("Properties") or {}).get("ServiceName", logical))
    raise UnknownAttribute(f"{st.name} ({st.region}): GetAtt {logical}.{attr} ({typ}) is not modelled by the stand-in")


# ---- a whole deployment --------------------------------------------------------------------------

class Deployment:
    """The stacks of the plan, evaluated one at a time in plan order (`evaluate`), so that a
    placeholder is filled when its step is reached. `secret(region, name)` turns a
    `{{region/secret:NAME}}` placeholder into an ARN (or a value such as NAME.sha256), and
    `other(region, what)` any other `{{region/KIND:...}}` placeholder (prefix lists);
    `mutate(plan_stack, template)` may edit a template before evaluation (mutation checks).
    A stack rendered twice (deploy.sh's first start, then the full deployment) is an update:
    `get` returns its latest evaluation. `overrides[(region, stack, logical)]` replaces a
    resource's physical id (e.g. a secret's ARN as moto made it)."""

    def __init__(self, root: Path, secret: Callable[[str, str], str], other: Callable[[str, str], str],
                 mutate: Callable[[PlanStack, dict], None] | None = None):
        self.root = root
        self.stacks: list[Stack] = []
        self.secret = secret
        self.other = other
        self.mutate = mutate
        self.exports: dict[tuple[str, str], Any] = {}
        self.overrides: dict[tuple[str, str, str], Any] = {}

    def evaluate(self, ps: PlanStack) -> Stack:
        tpl = load_template(self.root / ps.template)
        if self.mutate:
            self.mutate(ps, tpl)
        st = Stack(ps, tpl)
        st.imports = lambda name, r=ps.region: self.exports[(r, name)]
        st.overrides = self.overrides
        given = {k: self.fill(v) for k, v in ps.params.items()}
        for name, spec in (tpl.get("Parameters") or {}).items():
            v = given.get(name, spec.get("Default"))
            if v is None:
                raise KeyError(f"{ps.name} ({ps.region}): parameter {name} has no value")
            t = spec.get("Type", "String")
            if t == "CommaDelimitedList" or t.startswith("List<"):
                v = [] if v == "" else (v if isinstance(v, list) else str(v).split(","))
            st.params[name] = v
        self.stacks.append(st)
        return st

    def compute_outputs(self, st: Stack) -> None:
        for k, o in (st.template.get("Outputs") or {}).items():
            if o.get("Condition") and not st.condition(o["Condition"]):
                continue
            try:
                st.outputs[k] = st.eval(o["Value"])
            except UnknownAttribute as e:  # only an error if a later stack reads it
                st.outputs[k] = e
                continue
            if "Export" in o:
                self.exports[(st.region, st.eval(o["Export"]["Name"]))] = st.outputs[k]

    def fill(self, v: str) -> str:
        def repl(m: re.Match) -> str:
            region, rest = m.group(1), m.group(2)
            if rest.startswith("secret:"):
                return self.secret(region, rest[len("secret:"):])
            if re.match(r"^[a-z-]+:", rest):
                return self.other(region, rest)
            stack, key = rest.rsplit(".", 1)
            st = self.get(region, stack)
            out = st.outputs[key]
            if isinstance(out, Exception):
                raise out
            return ",".join(out) if isinstance(out, list) else str(out)
        return re.sub(r"\{\{([^/}]+)/([^}]+)\}\}", repl, v)

    def get(self, region: str, name: str) -> Stack:
        for st in reversed(self.stacks):
            if st.region == region and st.name == name:
                return st
        raise KeyError(f"no stack {name} in {region} before this point of the plan")

    def current(self) -> list[Stack]:
        """The latest evaluation of every stack."""
        out: dict[tuple[str, str], Stack] = {}
        for st in self.stacks:
            out[(st.region, st.name)] = st
        return list(out.values())

    def all_resources(self, typ: str) -> list[tuple[Stack, str, dict]]:
        return [(st, k, r) for st in self.current() for k, r in st.resources_of(typ).items()]
