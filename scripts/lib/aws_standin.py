"""A local AWS stand-in that runs the rendered stacks of a deploy.sh dry run (scripts/test_aws_local.sh).

    python aws_standin.py --regions eu-west-1,af-south-1,sa-east-1 --image-tag TAG --work DIR
                          [--mutate NAME] [--timeout S] [--keep]

Needs root (network namespaces, nftables, rootful podman), PyYAML and boto3 and moto[server]
(.venv-moto), and the images localhost/meshlat-{agent,controller}:TAG (scripts/images.sh build).

What stands in for what (everything else is read from the rendered templates and run as written):

  AWS                          here
  VPC of region i              network namespace <run>r<i> acting as the VPC router; every task has
                               its own namespace <run>r<i>t<n> (awsvpc: one ENI per task) joined to
                               it by a point-to-point veth, address from its subnet's CidrBlock
  VPC peering + routes         a veth pair per AWS::EC2::VPCPeeringConnection, a route per
                               AWS::EC2::Route with VpcPeeringConnectionId (non-transitive)
  security groups              nftables in each task's namespace, generated from the SGs of its
                               service (SecurityGroupIngress/Egress, standalone Ingress/Egress
                               resources, CIDRs, prefix lists, SG references as live sets);
                               stateful (ct established); the ECS metadata address is exempt, as
                               in Fargate
  NLB                          DNAT in the region's router from the NLB address (first usable+4
                               of the first subnet) to the target task, per listener and target
                               group; SNAT to the NLB address unless the target group sets
                               preserve_client_ip.enabled=true (AWS default for IP targets: off)
  DNS (Route53, NLB names)     /etc/hosts entries (podman --add-host): the NLB DNS names for every
                               task; a private hosted zone's records only for tasks in a VPC the
                               zone is associated with
  ECS task                     podman containers (rootful, runc) in the task namespace with the
                               task definition's image (ECR URI -> localhost/meshlat-*:TAG),
                               command, entry point, environment, user, read-only root, mount
                               points (fresh host directories: task storage), secrets read from
                               moto at start as ECS injects them (a task whose secret has no value
                               fails to start and is retried, as the ECS scheduler does)
  ECS task metadata            an HTTP server on 169.254.170.2:80 (ECS_CONTAINER_METADATA_URI_V4):
                               task IP, AZ, task ARN, ClockDrift
  Firehose, S3, Secrets Mgr    one moto server on 10.255.255.1:443 (plain HTTP on port 443, so the
                               security groups' 443 rules apply), in the namespace <run>c every
                               router reaches (the VPC endpoints)

Overridden in every container, nothing else: MESHLAT_FIREHOSE_ENDPOINT, MESHLAT_STATE_ENDPOINT,
AWS_ENDPOINT_URL (+ per-service forms) = the moto URL; AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY =
dummies; ECS_CONTAINER_METADATA_URI(_V4) = the stand-in.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import ipaddress
import json
import os
import re
import secrets as pysecrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cfn_resolve as cfn  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MOTO_IP = "10.255.255.1"
MOTO_URL = f"http://{MOTO_IP}:443"
META_IP = "169.254.170.2"
S3_PREFIX_LIST = "pl-5a0f5a0f"  # com.amazonaws.<region>.s3 here: the moto address
NLB_MARK = "cs6"  # DSCP the VPC router puts on what an NLB forwarded (security group references to the NLB)
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def sh(*args: str, check: bool = True, inp: str | None = None) -> subprocess.CompletedProcess:
    p = subprocess.run(list(args), input=inp, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: exit {p.returncode}: {p.stderr.strip()}")
    return p


def ipn(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh("ip", "-n", ns, *args, check=check)


def nsexec(ns: str, *args: str, inp: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return sh("nsenter", f"--net=/run/netns/{ns}", *args, inp=inp, check=check)


def setns(ns: str) -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
        raise OSError(ctypes.get_errno(), "setns")
    os.close(fd)


# ---- the model: what the templates say runs where ----------------------------------------------

@dataclass
class Region:
    name: str
    idx: int
    cidr: str
    vpc_id: str
    router: str
    subnets: list[tuple[str, str, str]] = field(default_factory=list)  # (id, cidr, az)
    nlbs: dict[str, str] = field(default_factory=dict)  # LB arn -> address
    next_host: dict[str, int] = field(default_factory=dict)


@dataclass
class Task:
    region: Region
    service: str
    family: str
    task_def: dict
    sgs: list[str]
    subnet: tuple[str, str, str]
    n: int
    ns: str = ""
    ip: str = ""
    gw: str = ""
    task_id: str = ""
    arn: str = ""
    containers: list[str] = field(default_factory=list)
    dirs: dict[str, Path] = field(default_factory=dict)
    started: float = 0.0
    running: bool = False
    target_groups: list[tuple[str, int]] = field(default_factory=list)  # (tg arn, container port)


class StandIn:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.run = "sl" + pysecrets.token_hex(2)
        self.work = Path(args.work).resolve()
        self.core = f"{self.run}c"
        self.namespaces: list[str] = []
        self.containers: list[str] = []
        self.tasks: list[Task] = []
        self.regions: dict[str, Region] = {}
        self.moto: subprocess.Popen | None = None
        self.meta: ThreadingHTTPServer | None = None
        self.stream_prefix: dict[str, str] = {}
        self.hosts_lb: dict[str, str] = {}
        self.links: dict[str, dict[str, str]] = {}
        self.routes: set[tuple[str, str]] = set()
        self.services: dict[tuple[str, str], dict] = {}
        self.pending: list[Task] = []
        self.records_bucket: str | None = None
        self.n = 0
        self.failures: list[str] = []
        self.lock = threading.RLock()
        self.now = dt.datetime.now(dt.timezone.utc)

    # ---------------------------------------------------------------------------------- plan
    def render(self) -> None:
        root = Path(self.args.checkout).resolve()
        cmd = [str(root / "scripts/deploy.sh"), "--dry-run", "--skip-lint", "--regions",
               ",".join(self.args.regions), "--tag", self.args.image_tag]
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
        (self.work / "plan.txt").write_text(p.stdout + p.stderr)
        if p.returncode != 0:
            raise RuntimeError(f"deploy.sh --dry-run failed (exit {p.returncode}): {p.stderr[-400:]}")
        self.plan = cfn.parse_plan(p.stdout)
        n = sum(isinstance(x, cfn.PlanStack) for x in self.plan)
        log(f"rendered plan: {n} stack deployments, {len(self.plan) - n} other steps ({self.work / 'plan.txt'})")
        from mutations import apply as mutate  # noqa: PLC0415
        self.mutations = 0

        def mutating(ps: cfn.PlanStack, tpl: dict) -> None:
            self.mutations += mutate(self.args.mutate, ps, tpl)
        self.dep = cfn.Deployment(root, self.deploy_secret, self.placeholder, mutating if self.args.mutate else None)

    def deploy_secret(self, region: str, name: str) -> str:
        """deploy.sh's ensure_secret: created once; join secret and operator credential random,
        every other secret created without a value (written later by the deployment). NAME.sha256:
        the SHA-256 of the secret's value (deploy.sh passes it to make a changed value visible)."""
        sm = self.client("secretsmanager", region)
        if name.endswith(".sha256"):
            import hashlib  # noqa: PLC0415
            v = sm.get_secret_value(SecretId=name[: -len(".sha256")])["SecretString"]
            return hashlib.sha256(v.encode()).hexdigest()
        try:
            return sm.describe_secret(SecretId=name)["ARN"]
        except sm.exceptions.ResourceNotFoundException:
            pass
        kw: dict[str, Any] = {"Name": name}
        if name.endswith("join-secret"):
            kw["SecretString"] = pysecrets.token_hex(32)
        elif name.endswith("operator-credential"):
            kw["SecretString"] = "op-meshlat:" + pysecrets.token_hex(24)
        return sm.create_secret(**kw)["ARN"]

    def placeholder(self, region: str, what: str) -> str:
        m = re.match(r"^prefix-list:com\.amazonaws\.([a-z0-9-]+)\.s3$", what)
        if m:
            return S3_PREFIX_LIST
        raise RuntimeError(f"plan placeholder {{{{{region}/{what}}}}}: not modelled by the stand-in")

    def deploy(self, stop: threading.Event) -> None:
        """Replays the plan: every stack deployment in order (created or updated), and the steps
        deploy.sh performs itself between them."""
        for item in self.plan:
            if isinstance(item, cfn.PlanStep):
                self.plan_step(item, stop)
                continue
            with self.lock:  # the scheduler thread reads the stacks too
                st = self.dep.evaluate(item)
                self.apply(st)
                self.dep.compute_outputs(st)
                if isinstance(st.outputs.get("RecordsBucketName"), str):
                    self.records_bucket = st.outputs["RecordsBucketName"]
                self.refresh()

    def plan_step(self, item: cfn.PlanStep, stop: threading.Event) -> None:
        m = re.search(r"wait .*until the controllers of (.+) have written (.+)$", item.text)
        if m:
            regions = m.group(1).split()
            names = re.findall(r"\S*<r>\S*", m.group(2))
            t0 = time.monotonic()
            for r in regions:
                for n in names:
                    name = n.replace("<r>", r)
                    while self.secret_string(r, name) is None:
                        if time.monotonic() - t0 > self.args.first_start_timeout or stop.is_set():
                            raise RuntimeError(f"plan step [{item.step}]: {name} has no value after "
                                               f"{self.args.first_start_timeout:.0f} s (the controller did not write it)")
                        time.sleep(1)
            log(f"plan step [{item.step}]: the controllers wrote {names} ({time.monotonic() - t0:.0f} s)")
            return
        m = re.search(r"peer CA certificates of (\S+)'s peers \(their (\S+)\) into (\S+)", item.text)
        if m:
            r, src, dst = m.group(1), m.group(2), m.group(3)
            bundle = ""
            for o in self.args.regions:
                if o != r:
                    bundle += (self.secret_string(o, src.replace("<peer>", o)) or "").rstrip("\n") + "\n"
            bundle = bundle[:-1] if bundle.endswith("\n") else bundle  # as deploy.sh writes it
            self.client("secretsmanager", r).put_secret_value(SecretId=dst, SecretString=bundle)
            log(f"plan step [{item.step}]: {dst} = the CA certificates of {r}'s peers")
            return
        log(f"plan step [{item.step}]: {item.text[:100]} (nothing to do here)")

    def secret_value(self, value_from: str) -> str | None:
        """ECS's secret injection: a Secrets Manager ARN (optionally :json-key:stage:version) or an
        SSM parameter ARN; None while the secret has no value (the task cannot start yet)."""
        m = re.match(r"^(arn:aws:secretsmanager:([^:]+):\d+:secret:[^:]+)(?::([^:]*):([^:]*):([^:]*))?$", value_from)
        if m:
            s = self.secret_string(m.group(2), m.group(1))
            if s is not None and m.group(3):
                s = json.loads(s)[m.group(3)]
            return s
        m = re.match(r"^arn:aws:ssm:([^:]+):\d+:parameter/(.+)$", value_from)
        if m:
            try:
                return self.client("ssm", m.group(1)).get_parameter(
                    Name="/" + m.group(2), WithDecryption=True)["Parameter"]["Value"]
            except Exception:  # noqa: BLE001
                return None
        raise RuntimeError(f"secret ValueFrom {value_from!r}: not a Secrets Manager or SSM ARN")

    def secret_string(self, region: str, name: str) -> str | None:
        try:
            return self.client("secretsmanager", region).get_secret_value(SecretId=name).get("SecretString")
        except Exception:  # noqa: BLE001 - no value (or no secret)
            return None

    # ---------------------------------------------------------------------------------- apply a stack
    def apply(self, st: cfn.Stack) -> None:
        res = st.resources()
        for logical, r in res.items():
            typ = r["Type"]
            if typ == "AWS::EC2::VPC":
                self.add_vpc(st, logical)
        for logical, r in res.items():
            typ = r["Type"]
            if typ == "AWS::EC2::Subnet":
                p = st.props(logical)
                reg = self.region_of_vpc(p["VpcId"])
                sub = (st.ref(logical), p["CidrBlock"], p["AvailabilityZone"])
                if sub not in reg.subnets:
                    reg.subnets.append(sub)
            elif typ == "AWS::EC2::VPCPeeringConnection":
                self.add_peering(st, logical)
            elif typ == "AWS::S3::Bucket":
                self.add_bucket(st, logical)
            elif typ == "AWS::SecretsManager::Secret":
                self.add_secret(st, logical)
            elif typ == "AWS::KinesisFirehose::DeliveryStream":
                self.add_stream(st, logical)
            elif typ == "AWS::ElasticLoadBalancingV2::LoadBalancer":
                reg = self.regions[st.region]
                addr = str(ipaddress.ip_network(reg.subnets[0][1]).network_address + 4)
                reg.nlbs[st.ref(logical)] = addr
                self.hosts_lb[cfn.lb_dns(st, logical, None)] = addr
        for logical, r in res.items():
            if r["Type"] == "AWS::EC2::Route":
                p = st.props(logical)
                if "VpcPeeringConnectionId" in p and (st.region, p["DestinationCidrBlock"]) not in self.routes:
                    reg = self.regions[st.region]
                    via = self.links[p["VpcPeeringConnectionId"]][reg.name]
                    ipn(reg.router, "route", "add", p["DestinationCidrBlock"], "via", via)
                    self.routes.add((st.region, p["DestinationCidrBlock"]))
                    log(f"route in {reg.name}: {p['DestinationCidrBlock']} via peering")
        for logical, r in res.items():
            if r["Type"] == "AWS::ECS::Service":
                self.reconcile(st, logical)

    def region_of_vpc(self, vpc_id: str) -> Region:
        return next(r for r in self.regions.values() if r.vpc_id == vpc_id)

    def add_vpc(self, st: cfn.Stack, logical: str) -> None:
        if st.region in self.regions:
            return
        i = len(self.regions)
        p = st.props(logical)
        r = Region(st.region, i, p["CidrBlock"], st.ref(logical), f"{self.run}r{i}")
        self.regions[st.region] = r
        self.ns_add(r.router)
        nsexec(r.router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        # the AWS side (S3 through the gateway endpoint, interface endpoints, metadata): 10.253.<i>.0/30
        ipn(r.router, "link", "add", "aws", "type", "veth", "peer", "name", f"r{i}", "netns", self.core)
        ipn(r.router, "addr", "add", f"10.253.{i}.2/30", "dev", "aws")
        ipn(self.core, "addr", "add", f"10.253.{i}.1/30", "dev", f"r{i}")
        ipn(r.router, "link", "set", "aws", "up")
        ipn(self.core, "link", "set", f"r{i}", "up")
        ipn(r.router, "route", "add", f"{MOTO_IP}/32", "via", f"10.253.{i}.1")
        ipn(r.router, "route", "add", f"{META_IP}/32", "via", f"10.253.{i}.1")
        ipn(self.core, "route", "add", r.cidr, "via", f"10.253.{i}.2")
        log(f"VPC {r.name} {r.cidr} -> namespace {r.router}")

    def add_peering(self, st: cfn.Stack, logical: str) -> None:
        p = st.props(logical)
        pcx = st.ref(logical)
        if pcx in self.links:
            return
        a, b = self.region_of_vpc(p["VpcId"]), self.region_of_vpc(p["PeerVpcId"])
        k = len(self.links)
        ipn(a.router, "link", "add", f"p{b.idx}", "type", "veth", "peer", "name", f"p{a.idx}", "netns", b.router)
        ipn(a.router, "addr", "add", f"10.252.{k}.1/30", "dev", f"p{b.idx}")
        ipn(b.router, "addr", "add", f"10.252.{k}.2/30", "dev", f"p{a.idx}")
        ipn(a.router, "link", "set", f"p{b.idx}", "up")
        ipn(b.router, "link", "set", f"p{a.idx}", "up")
        self.links[pcx] = {a.name: f"10.252.{k}.2", b.name: f"10.252.{k}.1"}
        log(f"peering {pcx}: {a.name} <-> {b.name}")

    def add_bucket(self, st: cfn.Stack, logical: str) -> None:
        name = st.ref(logical)
        s3 = self.client("s3", st.region)
        try:
            s3.head_bucket(Bucket=name)
            return
        except Exception:  # noqa: BLE001 - not there yet
            pass
        kw: dict[str, Any] = {"Bucket": name}
        if st.region != "us-east-1":
            kw["CreateBucketConfiguration"] = {"LocationConstraint": st.region}
        s3.create_bucket(**kw)

    def add_secret(self, st: cfn.Stack, logical: str) -> None:
        p = st.props(logical)
        name = p.get("Name") or cfn.physical_name(st, logical, st.template["Resources"][logical])
        value = p.get("SecretString")
        if value is None and "GenerateSecretString" in p:
            g = p["GenerateSecretString"]
            alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
            value = "".join(pysecrets.choice(alphabet) for _ in range(int(g.get("PasswordLength", 32))))
        regions = [st.region] + [x["Region"] for x in p.get("ReplicaRegions", [])]
        for r in regions:  # the primary and its replicas: same name and value in every region
            sm = self.client("secretsmanager", r)
            try:
                arn = sm.describe_secret(SecretId=name)["ARN"]
            except sm.exceptions.ResourceNotFoundException:
                kw: dict[str, Any] = {"Name": name}
                if value is not None:
                    kw["SecretString"] = value
                arn = sm.create_secret(**kw)["ARN"]
            if r == st.region:
                self.dep.overrides[(st.region, st.name, logical)] = arn
        log(f"secret {name} in {regions}")

    def add_stream(self, st: cfn.Stack, logical: str) -> None:
        p = st.props(logical)
        d = p["ExtendedS3DestinationConfiguration"]
        prefix = firehose_expand(d.get("Prefix", ""), self.now)
        self.stream_prefix[st.region] = prefix
        fh = self.client("firehose", st.region)
        if p["DeliveryStreamName"] in fh.list_delivery_streams()["DeliveryStreamNames"]:
            return
        fh.create_delivery_stream(
            DeliveryStreamName=p["DeliveryStreamName"], DeliveryStreamType="DirectPut",
            ExtendedS3DestinationConfiguration={
                "RoleARN": d["RoleARN"], "BucketARN": d["BucketARN"], "Prefix": prefix,
                "ErrorOutputPrefix": firehose_expand(d.get("ErrorOutputPrefix", ""), self.now),
            })
        log(f"firehose {st.region}/{p['DeliveryStreamName']} -> {d['BucketARN']} prefix {prefix}")

    # ---------------------------------------------------------------------------------- ECS services
    def reconcile(self, st: cfn.Stack, logical: str) -> None:
        """ECS: a new task definition replaces the service's tasks (old ones stopped first, as
        MinimumHealthyPercent 0 asks for the controller; the stand-in does so for every service);
        a new DesiredCount adds or stops tasks."""
        p = st.props(logical)
        td_arn = p["TaskDefinition"]
        td = next((tst.props(tl) for tst, tl, _ in self.dep.all_resources("AWS::ECS::TaskDefinition")
                   if tst.ref(tl) == td_arn and tst.region == st.region), None)
        if td is None:
            raise RuntimeError(f"service {logical}: task definition {td_arn} not found")
        key = (st.region, p.get("ServiceName", logical))
        count = int(p.get("DesiredCount", 1))
        old = self.services.get(key)
        with self.lock:
            if old and json.dumps(old["td"], sort_keys=True) == json.dumps(td, sort_keys=True) and old["svc"] == p:
                mine = [t for t in self.tasks + self.pending if t.running or t in self.pending]
                mine = [t for t in mine if (t.region.name, t.service) == key]
                for _ in range(count - len(mine)):
                    self.pending.append(self.new_task(st, p, td))
                for t in mine[count:]:
                    self.stop_task(t)
                return
            if old:
                for t in [t for t in self.tasks if t.running and (t.region.name, t.service) == key]:
                    self.stop_task(t)
                self.pending = [t for t in self.pending if (t.region.name, t.service) != key]
            self.services[key] = {"stack": st, "svc": p, "td": td}
            for _ in range(count):
                self.pending.append(self.new_task(st, p, td))
        log(f"service {key[0]}/{key[1]}: {count} task(s) of {td['Family']}" + (" (updated)" if old else ""))

    def scheduler(self, stop: threading.Event) -> None:
        """The ECS service scheduler: starts pending tasks, retrying those whose secrets have no
        value yet (ECS fails such a launch and tries again)."""
        while not stop.is_set():
            with self.lock:
                batch = list(self.pending)
            for t in batch:
                if stop.is_set():
                    return
                try:
                    ok = self.start_task(t)
                except Exception as e:  # noqa: BLE001
                    self.failures.append(f"task {t.region.name}/{t.service} failed to start: {e}")
                    log(self.failures[-1])
                    ok = True
                if ok:
                    with self.lock:
                        if t in self.pending:
                            self.pending.remove(t)
            stop.wait(1)

    def client(self, svc: str, region: str):
        import boto3  # noqa: PLC0415
        return boto3.client(svc, region_name=region, endpoint_url=MOTO_URL,
                            aws_access_key_id="standin", aws_secret_access_key="standin")

    def start_moto(self) -> None:
        moto = Path(sys.executable).parent / "moto_server"
        logf = open(self.work / "moto.log", "w")
        self.moto = subprocess.Popen([str(moto), "-H", MOTO_IP, "-p", "443"], stdout=logf, stderr=logf)
        import urllib.request  # noqa: PLC0415
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{MOTO_URL}/moto-api/", timeout=1)
                log(f"moto at {MOTO_URL}")
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("moto did not start (see moto.log)")

    # ---------------------------------------------------------------------------------- network
    def ns_add(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        ipn(name, "link", "set", "lo", "up")

    def build_core(self) -> None:
        self.ns_add(self.core)
        setns(self.core)  # this process (moto, metadata, boto3) lives in the "AWS" namespace
        ipn(self.core, "addr", "add", f"{MOTO_IP}/32", "dev", "lo")
        ipn(self.core, "addr", "add", f"{META_IP}/32", "dev", "lo")
        nsexec(self.core, "sysctl", "-qw", "net.ipv4.ip_forward=1")


    # ---------------------------------------------------------------------------------- security groups
    def refresh(self) -> None:
        """Security groups, NLBs and endpoints as nftables, from the current stacks."""
        with self.lock:
            self.sg_model()
            for t in self.tasks:
                if t.running:
                    nsexec(t.ns, "nft", "-f", "-", inp=self.nft_task(t))
            for r in self.regions.values():
                nsexec(r.router, "nft", "-f", "-", inp=self.nft_router(r))

    def sg_model(self) -> None:
        self.sg_rules: dict[str, dict[str, Any]] = {}
        for st, logical, _ in self.dep.all_resources("AWS::EC2::SecurityGroup"):
            p = st.props(logical)
            self.sg_rules[st.ref(logical)] = {"in": list(p.get("SecurityGroupIngress", [])),
                                              "out": list(p.get("SecurityGroupEgress", [])), "region": st.region}
        for typ, way in (("AWS::EC2::SecurityGroupIngress", "in"), ("AWS::EC2::SecurityGroupEgress", "out")):
            for st, logical, _ in self.dep.all_resources(typ):
                p = st.props(logical)
                if p["GroupId"] in self.sg_rules:
                    self.sg_rules[p["GroupId"]][way].append(p)
        self.prefix_lists: dict[str, list[str]] = {S3_PREFIX_LIST: [f"{MOTO_IP}/32"]}
        for st, logical, _ in self.dep.all_resources("AWS::EC2::PrefixList"):
            p = st.props(logical)
            self.prefix_lists[st.ref(logical)] = [e["Cidr"] for e in p.get("Entries", [])]
        # NLBs and interface endpoints: their addresses and security groups
        self.lb_sgs: dict[str, list[str]] = {}  # address -> SGs
        for st, logical, _ in self.dep.all_resources("AWS::ElasticLoadBalancingV2::LoadBalancer"):
            addr = self.regions[st.region].nlbs.get(st.ref(logical))
            if addr:
                self.lb_sgs[addr] = list(st.props(logical).get("SecurityGroups", []))
        self.ep_sgs: dict[str, list[str]] = {}
        for st, logical, _ in self.dep.all_resources("AWS::EC2::VPCEndpoint"):
            p = st.props(logical)
            if p.get("VpcEndpointType") == "Interface":
                ep = self.endpoint_addr(self.regions[st.region])
                self.ep_sgs.setdefault(ep, [])
                for g in p.get("SecurityGroupIds", []):
                    if g not in self.ep_sgs[ep]:
                        self.ep_sgs[ep].append(g)
        self.members: dict[str, list[str]] = {}
        for g in self.sg_rules:
            m = [t.ip for t in self.tasks if t.running and g in t.sgs]
            m += [a for a, gs in list(self.lb_sgs.items()) + list(self.ep_sgs.items()) if g in gs]
            self.members[g] = sorted(m)
        self.lb_groups = {g for gs in self.lb_sgs.values() for g in gs}

    def endpoint_addr(self, r: Region) -> str:
        return str(ipaddress.ip_network(r.subnets[0][1]).network_address + 5)

    def nft_match(self, rule: dict, way: str) -> list[str]:
        """The nft match(es) of one security group rule (several: alternatives); [] if it matches nothing."""
        proto = str(rule.get("IpProtocol", "-1")).lower()
        proto = {"6": "tcp", "17": "udp", "1": "icmp"}.get(proto, proto)
        parts = []
        if proto != "-1":
            parts.append(f"meta l4proto {proto}")
            lo, hi = rule.get("FromPort", -1), rule.get("ToPort", -1)
            if proto in ("tcp", "udp") and int(lo) != -1:
                parts.append(f"th dport {lo}-{hi}" if lo != hi else f"th dport {lo}")
        addr = "saddr" if way == "in" else "daddr"
        if "CidrIp" in rule:
            return [" ".join(parts + [f"ip {addr} {rule['CidrIp']}"])]
        if "CidrIpv6" in rule:
            return []
        pl = rule.get("SourcePrefixListId") or rule.get("DestinationPrefixListId")
        if pl:
            cidrs = self.prefix_lists.get(pl)
            if cidrs is None:
                raise RuntimeError(f"security group rule {rule}: prefix list {pl} is not modelled")
            return [" ".join(parts + [f"ip {addr} {{ {', '.join(cidrs)} }}"])] if cidrs else []
        g = rule.get("SourceSecurityGroupId") or rule.get("DestinationSecurityGroupId")
        if g:
            out = [" ".join(parts + [f"ip {addr} @{setname(g)}"])]
            if way == "in" and g in self.lb_groups:
                # traffic an NLB in group g forwarded with the client's address (marked by the router)
                out.append(" ".join(parts + [f"ip dscp {NLB_MARK}"]))
            return out
        raise RuntimeError(f"security group rule {rule}: no source or destination")

    def nft_rules(self, sgs: list[str], way: str, verdict: str) -> list[str]:
        out = []
        for g in sgs:
            if g not in self.sg_rules:
                raise RuntimeError(f"security group {g} is not in any stack")
            for rule in self.sg_rules[g][way]:
                desc = str(rule.get("Description", ""))[:60].replace('"', "'")
                for m in self.nft_match(rule, way):
                    out.append(f"    {m} {verdict} comment \"{desc}\"")
        return out

    def nft_sets(self) -> list[str]:
        return [f"  set {setname(g)} {{ type ipv4_addr;" + (f" elements = {{ {', '.join(m)} }};" if m else "") + " }"
                for g, m in self.members.items()]

    def nft_task(self, t: Task) -> str:
        lines = ["flush ruleset", "table inet sg {", *self.nft_sets(),
                 "  chain input { type filter hook input priority 0; policy drop;",
                 "    ct state established,related accept", "    iif lo accept",
                 *self.nft_rules(t.sgs, "in", "accept"),
                 "  }", "  chain output { type filter hook output priority 0; policy drop;",
                 "    ct state established,related accept", "    oif lo accept",
                 f"    ip daddr {META_IP} tcp dport 80 accept comment \"ECS task metadata (no security group applies)\"",
                 *self.nft_rules(t.sgs, "out", "accept"), "  }", "}"]
        return "\n".join(lines) + "\n"

    def nft_router(self, r: Region) -> str:
        pre, post, fwd, chains = [], [], [], []
        ep = self.endpoint_addr(r)
        pre.append(f"    ip daddr {ep} tcp dport 443 dnat ip to {MOTO_IP}:443 comment \"interface endpoints\"")
        for st, logical, _ in self.dep.all_resources("AWS::ElasticLoadBalancingV2::Listener"):
            if st.region != r.name:
                continue
            p = st.props(logical)
            addr = r.nlbs.get(p["LoadBalancerArn"])
            if addr is None:
                continue
            proto = {"tcp_udp": "tcp", "tls": "tcp"}.get(p["Protocol"].lower(), p["Protocol"].lower())
            for act in p["DefaultActions"]:
                tg = self.target_group(act["TargetGroupArn"])
                targets = [(t, port) for t in self.tasks if t.running
                           for (a, port) in t.target_groups if a == act["TargetGroupArn"]]
                if not targets:
                    continue
                t, port = targets[-1]
                pre.append(f"    ip daddr {addr} {proto} dport {p['Port']} dnat ip to {t.ip}:{port}")
                if not tg["preserve"]:
                    post.append(f"    ct original ip daddr {addr} ip daddr {t.ip} {proto} dport {port} snat ip to {addr}")
        fwd.append(f"    ip dscp {NLB_MARK} ip dscp set cs0 comment \"nobody else sets the NLB mark\"")
        for addr, sgs in self.lb_sgs.items():
            if addr not in r.nlbs.values():
                continue
            fwd.append(f"    ct status dnat ct original ip daddr {addr} ip dscp set {NLB_MARK}")
        fwd.append("    ct state established,related accept")
        for kind, table in (("lb", self.lb_sgs), ("ep", self.ep_sgs)):
            for addr, sgs in table.items():
                if (kind == "lb" and addr not in r.nlbs.values()) or (kind == "ep" and addr != ep) or not sgs:
                    continue
                c = f"{kind}_{addr.replace('.', '_')}"
                fwd.append(f"    ct original ip daddr {addr} jump {c}_in")
                chains += [f"  chain {c}_in {{", *[x.replace(" accept comment", f" goto {c}_out comment")
                                                   for x in self.nft_rules(sgs, "in", "accept")], "    drop", "  }"]
                out_rules = self.nft_rules(sgs, "out", "accept") if kind == "lb" else ["    accept"]
                chains += [f"  chain {c}_out {{", *out_rules, "    drop", "  }"]
        lines = ["flush ruleset", "table inet vpc {", *self.nft_sets(),
                 "  chain nat_pre { type nat hook prerouting priority -100;", *pre, "  }",
                 "  chain nat_post { type nat hook postrouting priority 100;", *post, "  }",
                 "  chain filter_fwd { type filter hook forward priority 0; policy accept;", *fwd, "  }",
                 *chains, "}"]
        return "\n".join(lines) + "\n"

    def target_group(self, arn: str) -> dict:
        for st, logical, _ in self.dep.all_resources("AWS::ElasticLoadBalancingV2::TargetGroup"):
            if st.ref(logical) == arn:
                p = st.props(logical)
                attrs = {a["Key"]: str(a["Value"]).lower() for a in p.get("TargetGroupAttributes", [])}
                # AWS default: off for IP targets over TCP/TLS, on otherwise
                default = "false" if p.get("TargetType") == "ip" and p.get("Protocol") in ("TCP", "TLS") else "true"
                return {"preserve": attrs.get("preserve_client_ip.enabled", default) == "true", "props": p}
        raise KeyError(arn)

    # ---------------------------------------------------------------------------------- DNS
    def hosts_for(self, task: Task) -> list[str]:
        out = [f"{n}:{a}" for n, a in self.hosts_lb.items()]
        zones = {}
        for st, logical, _ in self.dep.all_resources("AWS::Route53::HostedZone"):
            p = st.props(logical)
            zones[st.ref(logical)] = [v["VPCId"] for v in p.get("VPCs", [])]
        for st, logical, _ in self.dep.all_resources("AWS::Route53::RecordSet"):
            p = st.props(logical)
            if "HostedZoneId" in p and task.region.vpc_id not in zones.get(p["HostedZoneId"], []):
                continue  # a private zone answers only in the VPCs it is associated with
            name = p["Name"].rstrip(".")
            if "AliasTarget" in p:
                a = self.hosts_lb.get(p["AliasTarget"]["DNSName"].rstrip(".").lower())
                if a:
                    out.append(f"{name}:{a}")
            for v in p.get("ResourceRecords", []):
                if p.get("Type") == "A":
                    out.append(f"{name}:{v}")
        return out

    def new_task(self, st: cfn.Stack, svc: dict, td: dict) -> Task:
        r = self.regions[st.region]
        net = svc["NetworkConfiguration"]["AwsvpcConfiguration"]
        self.n += 1
        subnet_id = net["Subnets"][self.n % len(net["Subnets"])]
        subnet = next(s for s in r.subnets if s[0] == subnet_id)
        t = Task(r, svc.get("ServiceName", "svc"), td["Family"], td, list(net.get("SecurityGroups", [])), subnet, self.n)
        t.target_groups = [(lb["TargetGroupArn"], int(lb["ContainerPort"])) for lb in svc.get("LoadBalancers", [])]
        return t

    def start_task(self, t: Task) -> bool:
        """Starts the task's containers; False (nothing started) if a secret has no value yet."""
        envs = []
        for c in t.task_def["ContainerDefinitions"]:
            env = {e["Name"]: str(e["Value"]) for e in c.get("Environment", [])}
            for s in c.get("Secrets", []):
                v = self.secret_value(s["ValueFrom"])
                if v is None:
                    return False
                env[s["Name"]] = v
            envs.append(env)
        r = t.region
        net = ipaddress.ip_network(t.subnet[1])
        host = r.next_host.get(t.subnet[0], 10)
        r.next_host[t.subnet[0]] = host + 1
        t.ip = str(net.network_address + host)
        t.gw = str(net.network_address + 1)
        t.ns = f"{self.run}r{r.idx}t{t.n}"
        t.task_id = uuid.uuid4().hex
        cluster = next((st.outputs.get("ClusterName") for st in self.dep.stacks
                        if st.region == r.name and "ClusterName" in st.outputs), "cluster")
        t.arn = f"arn:aws:ecs:{r.name}:{cfn.ACCOUNT}:task/{cluster}/{t.task_id}"
        self.ns_add(t.ns)
        ipn(t.ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"t{t.n}", "netns", r.router)
        ipn(t.ns, "addr", "add", f"{t.ip}/32", "dev", "eth0")
        ipn(t.ns, "link", "set", "eth0", "up")
        ipn(t.ns, "route", "add", t.gw, "dev", "eth0", "scope", "link")
        ipn(t.ns, "route", "add", "default", "via", t.gw, "dev", "eth0")
        ipn(r.router, "addr", "add", f"{t.gw}/32", "dev", f"t{t.n}")
        ipn(r.router, "link", "set", f"t{t.n}", "up")
        ipn(r.router, "route", "add", f"{t.ip}/32", "dev", f"t{t.n}")
        with self.lock:
            t.running = True
            self.tasks.append(t)
        self.refresh()
        ep_url = f"http://{self.endpoint_addr(r)}:443"
        vols = {v["Name"]: v for v in t.task_def.get("Volumes", [])}
        for c, env in zip(t.task_def["ContainerDefinitions"], envs):
            name = f"{self.run}-{r.name}-{t.service}-{t.n}-{c['Name']}"
            env.update({
                "AWS_REGION": r.name, "AWS_DEFAULT_REGION": r.name, "AWS_EXECUTION_ENV": "AWS_ECS_FARGATE",
                "ECS_CONTAINER_METADATA_URI_V4": f"http://{META_IP}/v4/{t.task_id}",
                "ECS_CONTAINER_METADATA_URI": f"http://{META_IP}/v3/{t.task_id}",
                "AWS_ACCESS_KEY_ID": "standin", "AWS_SECRET_ACCESS_KEY": "standin",
                # interface endpoints (private DNS) in the VPC; S3 through the gateway endpoint
                "AWS_ENDPOINT_URL": ep_url, "MESHLAT_FIREHOSE_ENDPOINT": ep_url,
                "MESHLAT_SECRETS_ENDPOINT": ep_url, "AWS_ENDPOINT_URL_S3": MOTO_URL,
                "MESHLAT_STATE_ENDPOINT": MOTO_URL,
            })
            cmd = [*PODMAN, "run", "-d", "--name", name, "--network", f"ns:/run/netns/{t.ns}",
                   "--label", f"meshlat-test-stage={os.environ.get('MESHLAT_TEST_STAGE', 'none')}",
                   "--no-healthcheck", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1000:1000",
                   "--hostname", f"ip-{t.ip.replace('.', '-')}.{r.name}.compute.internal"]
            for hname in self.hosts_for(t):
                cmd += ["--add-host", hname]
            if c.get("ReadonlyRootFilesystem"):
                cmd += ["--read-only", "--read-only-tmpfs=false"]
            if c.get("User"):
                cmd += ["--user", str(c["User"])]
            for mp in c.get("MountPoints", []):
                vol = vols[mp["SourceVolume"]]
                if "EFSVolumeConfiguration" in vol:
                    d = self.work / "efs" / str(vol["EFSVolumeConfiguration"].get("FileSystemId"))
                else:
                    d = self.work / "tasks" / f"{self.run}-{t.n}-{t.service}" / mp["SourceVolume"]
                d.mkdir(parents=True, exist_ok=True)
                os.chown(d, 65532, 65532)  # the image's ownership of the path (copied into the volume)
                t.dirs[mp["SourceVolume"]] = d
                cmd += ["-v", f"{d}:{mp['ContainerPath']}" + (":ro" if mp.get("ReadOnly") else "")]
            # as ECS sets them: values may span lines (PEM bundles), so no --env-file
            for k, v in env.items():
                cmd += ["-e", f"{k}={v}"]
            if c.get("EntryPoint"):
                cmd += ["--entrypoint", json.dumps(c["EntryPoint"])]
            cmd.append(self.image(c["Image"]))
            cmd += [str(a) for a in c.get("Command", [])]
            sh(*cmd)
            self.containers.append(name)
            t.containers.append(name)
        t.started = time.time()
        self.refresh()
        log(f"task {r.name}/{t.service}#{t.n} {t.ip} ({t.subnet[2]}) started: {', '.join(t.containers)}")
        return True

    def image(self, uri: str) -> str:
        m = re.match(r"^(?:\d+|<account>)\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com/meshlat/([a-z]+):(.+)$", uri)
        if not m:
            raise RuntimeError(f"image {uri!r}: not this deployment's ECR repository")
        if m.group(2) != self.args.image_tag:
            raise RuntimeError(f"image {uri!r}: tag is not the plan's --tag {self.args.image_tag}")
        return f"localhost/meshlat-{m.group(1)}:{self.args.image_tag}"

    def stop_task(self, t: Task, kill: bool = True) -> None:
        for c in t.containers:
            self.save_log(c)
            sh(*PODMAN, "rm", "-f", "-t", "0", c, check=False)
            self.containers.remove(c)
        with self.lock:
            t.running = False
        sh("ip", "netns", "del", t.ns, check=False)
        self.namespaces.remove(t.ns)
        self.refresh()

    def check_containers(self) -> None:
        """Every container of a running task still exists (rootful podman is shared by the whole
        machine: another run's cleanup could remove ours; that must fail loudly, not as a mesh
        that stopped measuring)."""
        names = set(sh(*PODMAN, "ps", "--format", "{{.Names}}", check=False).stdout.split())
        gone = [c for t in self.tasks if t.running for c in t.containers if c not in names]
        if gone:
            raise RuntimeError(f"containers of running tasks vanished (stopped or removed from outside this run): {gone}")

    def save_log(self, c: str) -> None:
        p = sh(*PODMAN, "logs", c, check=False)
        (self.work / "logs").mkdir(exist_ok=True)
        with open(self.work / "logs" / f"{c}.log", "a") as f:
            f.write(p.stdout + p.stderr)

    # ---------------------------------------------------------------------------------- metadata
    def start_metadata(self) -> None:
        standin = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                path = re.sub(r"^https?://[^/]+", "", self.path)  # absolute-form request targets too
                m = re.match(r"^/v[34]/([0-9a-f]+)(/task)?/?$", path)
                t = next((t for t in standin.tasks if m and t.task_id == m.group(1)), None)
                if t is None:
                    log(f"metadata: 404 for {self.path}")
                    self.send_response(404)
                    self.end_headers()
                    return
                body = json.dumps(standin.metadata(t, bool(m.group(2)))).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.meta = ThreadingHTTPServer((META_IP, 80), H)
        threading.Thread(target=self.meta.serve_forever, daemon=True).start()

    def metadata(self, t: Task, task_level: bool) -> dict:
        nets = [{"NetworkMode": "awsvpc", "IPv4Addresses": [t.ip], "IPv4SubnetCIDRBlock": t.subnet[1],
                 "PrivateDNSName": f"ip-{t.ip.replace('.', '-')}.{t.region.name}.compute.internal",
                 "SubnetGatewayIpv4Address": f"{t.gw}/{t.subnet[1].split('/')[1]}"}]
        containers = [{"DockerId": c, "Name": c.rsplit("-", 1)[1], "Networks": nets,
                       "DesiredStatus": "RUNNING", "KnownStatus": "RUNNING"} for c in t.containers]
        if not task_level:
            return containers[0] if containers else {}
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"Cluster": t.arn.split("/")[1], "TaskARN": t.arn, "Family": t.family, "Revision": "1",
                "DesiredStatus": "RUNNING", "KnownStatus": "RUNNING", "LaunchType": "FARGATE",
                "AvailabilityZone": t.subnet[2], "Containers": containers,
                "ClockDrift": {"ClockErrorBound": 0.5, "ReferenceTimestamp": now,
                               "ClockSynchronizationStatus": "SYNCHRONIZED"}}

    # ---------------------------------------------------------------------------------- cleanup
    def cleanup(self) -> None:
        for c in list(self.containers):
            self.save_log(c)
        if self.containers:
            sh(*PODMAN, "rm", "-f", "--ignore", "-t", "0", *self.containers, check=False)
        left = [n for n in sh(*PODMAN, "ps", "-a", "--format", "{{.Names}}", check=False).stdout.split()
                if n.startswith(self.run + "-")]
        if left:
            log(f"containers left after podman rm: {left}; removing one by one")
            for n in left:
                sh(*PODMAN, "rm", "-f", "-t", "0", n, check=False)
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)
        if self.meta:
            self.meta.shutdown()
        if self.moto and self.moto.poll() is None:
            self.moto.terminate()
            try:
                self.moto.wait(5)
            except subprocess.TimeoutExpired:
                self.moto.kill()


def setname(g: str) -> str:
    return "sg_" + re.sub(r"[^A-Za-z0-9_]", "_", g)


_JAVA = [("yyyy", "%Y"), ("MM", "%m"), ("dd", "%d"), ("HH", "%H"), ("mm", "%M"), ("ss", "%S")]


def firehose_expand(prefix: str, now: dt.datetime) -> str:
    """Firehose's prefix expressions (moto ignores them): !{timestamp:FMT} at delivery time (here:
    stream creation; the run is minutes long), !{firehose:error-output-type}, !{firehose:random-string}."""
    def ts(m: re.Match) -> str:
        f = m.group(1)
        for j, p in _JAVA:
            f = f.replace(j, p)
        return now.strftime(f)
    s = re.sub(r"!\{timestamp:([^}]+)\}", ts, prefix)
    s = s.replace("!{firehose:error-output-type}", "processing-failed")
    s = s.replace("!{firehose:random-string}", pysecrets.token_hex(5))
    if "!{" in s:
        raise RuntimeError(f"Firehose prefix {prefix!r}: an expression the stand-in does not know")
    return s


# ---- what is asserted ---------------------------------------------------------------------------

class Records:
    """Objects of the records bucket in moto, downloaded once each into DIR in the Hive layout
    athena-local reads (moto appends YYYY/MM/DD/HH/ to the prefix, which real Firehose does not
    with a custom prefix: that part is dropped here, and checked to be there)."""

    def __init__(self, s: StandIn):
        self.s = s
        self.seen: set[str] = set()
        self.rows: list[dict] = []
        self.bad_keys: list[str] = []
        self.dir = s.work / "s3"

    def poll(self) -> None:
        if not self.s.records_bucket:
            return
        s3 = self.s.client("s3", self.s.args.regions[0])
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=self.s.records_bucket)
        for page in pages:
            for o in page.get("Contents", []):
                k = o["Key"]
                if k in self.seen:
                    continue
                self.seen.add(k)
                prefix = next((p for p in self.s.stream_prefix.values() if k.startswith(p)), None)
                rest = k[len(prefix):] if prefix else ""
                m = re.match(r"^\d{4}/\d{2}/\d{2}/\d{2}/([^/]+)$", rest)
                if not prefix or not m:
                    self.bad_keys.append(k)
                    continue
                body = s3.get_object(Bucket=self.s.records_bucket, Key=k)["Body"].read()
                out = self.dir / prefix / (m.group(1) + ".ndjson")
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(body)
                region = re.search(r"region=([^/]+)", prefix)
                for line in body.decode().splitlines():
                    if line.strip():
                        r = json.loads(line)
                        r["_stream_region"] = region.group(1) if region else None
                        self.rows.append(r)


def writer_region(r: dict) -> str | None:
    """The region of the agent that wrote a record (its Firehose stream's region): the prober for
    probe and relay records, the reflector for serve records, the relay for relay_serve records."""
    kind = r.get("kind")
    if kind == "serve":
        return r.get("dst_region")
    if kind == "relay_serve":
        return r.get("relay_region")
    return r.get("src_region")


def agents_by_region(rows: list[dict]) -> dict[str, set[str]]:
    """Agents that wrote probe or relay records, by region (server records name their sources
    by inference, so they do not count here)."""
    out: dict[str, set[str]] = {}
    for r in rows:
        if r.get("kind") in ("probe", "relay") and r.get("src_agent") and r.get("src_region"):
            out.setdefault(r["src_region"], set()).add(r["src_agent"])
    return out


def missing_probes(rows: list[dict], regions: list[str], protocols: list[str], agents: dict[str, set[str]],
                   since: float = 0.0, only_dst: str | None = None) -> list[str]:
    have = set()
    for r in rows:
        if r.get("kind") == "probe" and r.get("ok") and ts_of(r) >= since:
            have.add((r.get("src_agent"), r.get("dst_agent"), r.get("protocol")))
    miss = []
    for a in regions:
        for b in regions:
            if a == b or (only_dst and b != only_dst):
                continue
            for sa in sorted(agents.get(a, [])):
                for db in sorted(agents.get(b, [])):
                    for p in protocols:
                        if (sa, db, p) not in have:
                            miss.append(f"{a}:{sa[-8:]} -> {b}:{db[-8:]} {p}")
    return miss


def missing_relays(rows: list[dict], regions: list[str]) -> list[str]:
    have = {(r.get("src_region"), r.get("dst_region"), r.get("relay_region"))
            for r in rows if r.get("kind") == "relay" and r.get("ok")}
    return [f"{a} -> {b} via {c}" for a in regions for b in regions for c in regions
            if len({a, b, c}) == 3 and (a, b, c) not in have]


def ts_of(r: dict) -> float:
    try:
        return dt.datetime.strptime(r["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc).timestamp()
    except (KeyError, ValueError):
        return 0.0


class Checks:
    def __init__(self, s: StandIn):
        self.s = s
        self.results: list[tuple[bool, str]] = []

    def check(self, ok: bool, what: str) -> bool:
        self.results.append((ok, what))
        print(("ok   " if ok else "FAIL ") + what, flush=True)
        return ok

    def wait(self, what: str, fn, timeout: float, every: float = 3.0) -> Any:
        """Polls fn() (returns (done, detail)) until done or timeout; returns the last detail."""
        end = time.monotonic() + timeout
        while True:
            self.s_records.poll()
            self.s.check_containers()
            done, detail = fn()
            if done or time.monotonic() > end:
                return done, detail
            time.sleep(every)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--regions", default="eu-west-1,af-south-1,sa-east-1")
    ap.add_argument("--image-tag", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--mutate", default=None)
    ap.add_argument("--timeout", type=float, default=150.0, help="seconds for the mesh to converge")
    ap.add_argument("--protocols", default=None,
                    help="protocols to require (default: those of the default probe jobs in the controllers' task definitions)")
    ap.add_argument("--checkout", default=str(ROOT),
                    help="the checkout whose scripts/deploy.sh and infra/cloudformation are run (default: this one)")
    ap.add_argument("--first-start-timeout", type=float, default=90.0,
                    help="seconds for the controllers' first start to write their secrets")
    args = ap.parse_args()
    args.regions = args.regions.split(",")
    s = StandIn(args)
    s.work.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()

    def on_term(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    rc = 1
    try:
        rc = run(s, stop)
    except KeyboardInterrupt:
        log("interrupted")
    except Exception as e:  # noqa: BLE001
        log(f"ERROR: {type(e).__name__}: {e}")
    finally:
        stop.set()
        s.cleanup()
        log(f"cleaned up: {len(s.containers)} containers, namespaces of run {s.run}")
    return rc


def run(s: StandIn, stop: threading.Event) -> int:
    regions = s.args.regions
    s.build_core()
    s.start_moto()
    s.start_metadata()
    s.render()
    sched = threading.Thread(target=s.scheduler, args=(stop,), daemon=True)
    sched.start()
    s.deploy(stop)
    log("plan replayed: every stack deployed")
    if s.args.mutate and not s.mutations:
        print(f"FAIL --mutate {s.args.mutate}: nothing in the rendered templates to change (a mutation check must change something)")
        return 2
    jobs = default_jobs(s)
    protocols = s.args.protocols.split(",") if s.args.protocols else sorted(
        {p for j in jobs if j.get("kind") == "probe" for p in j.get("protocols", [])})
    c0 = Checks(s)
    if not c0.check(bool(protocols), f"the controllers' task definitions carry default probe jobs "
                                     f"({len(jobs)} jobs; protocols {protocols})"):
        return finish(s, c0)
    c = c0
    recs = Records(s)
    c.s_records = recs
    t_start = time.time()

    # 1. every region's agents measure every other region's agents on every protocol
    def mesh() -> tuple[bool, Any]:
        ag = agents_by_region(recs.rows)
        if set(ag) != set(regions):
            return False, f"records from regions {sorted(ag)} only (want {regions})"
        miss = missing_probes(recs.rows, regions, protocols, ag)
        return not miss, miss
    done, detail = c.wait("mesh", mesh, s.args.timeout)
    if not c.check(done, f"every region's agents measure every other region's agents on {','.join(protocols)} "
                         f"({time.time() - t_start:.0f} s, {len(recs.rows)} records)"):
        print(f"      missing: {detail if isinstance(detail, str) else detail[:12]}"
              f"{'' if isinstance(detail, str) else f' ({len(detail)} in all)'}")
        if s.pending:
            print(f"      tasks never started (secret without value): {[f'{t.region.name}/{t.service}' for t in s.pending]}")
        return finish(s, c)

    # every container's task-definition health check passes (ECS would replace a failing task)
    bad = []
    for t in [t for t in s.tasks if t.running]:
        for cdef, name in zip(t.task_def["ContainerDefinitions"], t.containers):
            hc = (cdef.get("HealthCheck") or {}).get("Command")
            if not hc:
                continue
            cmd = hc[1:] if hc[0] == "CMD" else ["/bin/sh", "-c", hc[1]]
            p = sh(*PODMAN, "exec", name, *cmd, check=False)
            if p.returncode != 0:
                bad.append(f"{name}: exit {p.returncode} {p.stderr.strip()[-120:]}")
    c.check(not bad, f"every running container passes its task definition's health check {bad or ''}")

    # 2. relays
    done, detail = c.wait("relay", lambda: (not missing_relays(recs.rows, regions), missing_relays(recs.rows, regions)), 60)
    c.check(done, "relay records for every ordered region pair through each third region's relay")
    if not done:
        print(f"      missing: {detail}")

    # 3. records of all regions in S3 under the Firehose prefix
    recs.poll()
    by_stream = {}
    for r in recs.rows:
        by_stream.setdefault(r["_stream_region"], set()).add(writer_region(r))
    c.check(not recs.bad_keys and all(by_stream.get(r) == {r} for r in regions),
            f"records of every region in S3 under its Firehose prefix ({len(recs.seen)} objects; "
            f"streams -> record regions {dict((k, sorted(v)) for k, v in by_stream.items())}; keys elsewhere: {recs.bad_keys[:3]})")

    # 4. athena-local over those objects: the full region x region matrix
    q = subprocess.run([str(ROOT / "scripts/athena-local"), "--data", str(recs.dir), "--format", "json",
                        str(ROOT / "infra/athena/latency_matrix_region.sql")], capture_output=True, text=True)
    cells = set()
    if q.returncode == 0:
        for row in json.loads(q.stdout):
            if row.get("samples"):
                cells.add((row["src_region"], row["dst_region"], row["protocol"]))
    want = {(a, b, p) for a in regions for b in regions if a != b for p in protocols}
    c.check(q.returncode == 0 and want <= cells,
            f"athena-local latency_matrix_region.sql: {len(want & cells)}/{len(want)} region x region x protocol cells"
            + ("" if q.returncode == 0 else f" (exit {q.returncode}: {q.stderr[-300:]})"))

    # 5. fail-static: kill one region's controller; the others keep measuring its agents
    victim = regions[1]
    ctl = next(t for t in s.tasks if t.running and t.region.name == victim and "controller" in t.service)
    ag_before = agents_by_region(recs.rows)
    ca_before = (ctl.dirs.get("data") or next(iter(ctl.dirs.values()))) / "ca.pem"
    ca_pem = ca_before.read_bytes() if ca_before.exists() else b""
    t_kill = time.time()
    log(f"killing the controller of {victim} ({ctl.containers})")
    s.stop_task(ctl)
    others = [r for r in regions if r != victim]
    done, detail = c.wait("fail-static", lambda: (not (m := missing_probes(recs.rows, others + [victim], protocols, ag_before, since=t_kill + 5, only_dst=victim)), m), 45)
    c.check(done, f"controller of {victim} down: the other regions keep measuring its agents on every protocol")
    if not done:
        print(f"      missing: {detail[:8]} ({len(detail)} in all)")

    # 6. restart on an empty disk: same CA, no new agent id
    t_restart = time.time()
    svc = s.services[(victim, ctl.service)]
    new = s.new_task(svc["stack"], svc["svc"], svc["td"])
    if not s.start_task(new):
        c.check(False, f"the replacement controller of {victim} could not start (secret without value)")
        return finish(s, c)
    ids = ag_before.get(victim, set())

    def rejoined() -> tuple[bool, Any]:
        logs = "".join(sh(*PODMAN, "logs", n, check=False).stdout + sh(*PODMAN, "logs", n, check=False).stderr for n in new.containers)
        connected = set(re.findall(r'"agent":"([^"]+)"[^\n]*Agent connected|Agent connected\.[^\n]*"agent":"([^"]+)"', logs))
        flat = {x for pair in connected for x in pair if x}
        return ids <= flat, flat
    done, connected = c.wait("rejoin", rejoined, 60)
    c.check(done, f"{victim}'s controller restarted on an empty disk: its agents {sorted(i[-8:] for i in ids)} reconnected "
                  f"({time.time() - t_restart:.0f} s)")
    ca_after = (new.dirs.get("data") or next(iter(new.dirs.values()))) / "ca.pem"
    same_ca = ca_after.exists() and ca_pem and ca_after.read_bytes() == ca_pem
    c.check(bool(same_ca), f"{victim}'s controller kept its CA across the restart (restored from the state bucket)")
    time.sleep(5)
    recs.poll()
    new_ids = agents_by_region([r for r in recs.rows if ts_of(r) >= t_restart]).get(victim, set()) - ids
    c.check(not new_ids and not (connected - ids if isinstance(connected, set) else set()),
            f"no new agent id in {victim} after the restart (new: {sorted(new_ids)})")

    # 7. servers write records too (seed 004: every receiving client, and the server): serve
    # records from every region's reflectors and relay_serve records from every region's relay,
    # each in its own region's stream (checked with the others above). They come every
    # --serve-interval (60 s by default, as rendered), so this waits for the first ones.
    def servers() -> tuple[bool, Any]:
        got = {(k, writer_region(r)) for r in recs.rows if (k := r.get("kind")) in ("serve", "relay_serve")}
        miss = [f"{k} from {r}" for k in ("serve", "relay_serve") for r in regions if (k, r) not in got]
        return not miss, miss
    done, detail = c.wait("servers", servers, 120)
    c.check(done, "server records: kind=serve from every region's reflectors, kind=relay_serve from every "
                  f"region's relay{'' if done else f' (missing: {detail})'}")
    recs.poll()
    stray = sorted({f"{r.get('kind')} written by {writer_region(r)} in {r['_stream_region']}'s stream"
                    for r in recs.rows if writer_region(r) != r["_stream_region"]})
    c.check(not stray, f"every record (clients and servers) in its writer's region's stream {stray[:4] or ''}")
    return finish(s, c)


def default_jobs(s: StandIn) -> list[dict]:
    """The job specs of every controller's --default-jobs / MESHLAT_DEFAULT_JOBS, as rendered."""
    out = []
    for key, svc in s.services.items():
        for c in svc["td"]["ContainerDefinitions"]:
            env = {e["Name"]: e["Value"] for e in c.get("Environment", [])}
            cmd = [str(x) for x in c.get("Command", [])]
            raw = env.get("MESHLAT_DEFAULT_JOBS")
            if "--default-jobs" in cmd:
                raw = cmd[cmd.index("--default-jobs") + 1]
            if raw:
                out += json.loads(raw)
    return out


def finish(s: StandIn, c: Checks) -> int:
    bad = [w for ok, w in c.results if not ok] + s.failures
    for f in s.failures:
        print(f"FAIL {f}")
    print(f"aws-local: {sum(ok for ok, _ in c.results)} passed, {len(bad)} failed; run {s.run}; logs in {s.work}/logs")
    return 0 if not bad and c.results else 1


if __name__ == "__main__":
    sys.exit(main())
