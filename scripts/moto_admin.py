#!/usr/bin/env python3
"""Test helper for the moto server (run with the .venv-moto python: scripts/moto.sh python).

  moto_admin.py --endpoint URL setup --bucket B --stream S --prefix P
      creates bucket B and a DirectPut Firehose stream S delivering to s3://B/P
  moto_admin.py --endpoint URL dump --bucket B [--prefix P]
      prints every object's key on stderr and its content on stdout
  moto_admin.py --endpoint URL create-bucket --bucket B
  moto_admin.py --endpoint URL get --bucket B --key K
      writes the object's bytes to stdout (exit 3 if there is no such object)
  moto_admin.py --endpoint URL create-secret --name N
      creates Secrets Manager secret N without a value (as deploy.sh does); prints its ARN
  moto_admin.py --endpoint URL get-secret --arn A
      writes the secret's current value to stdout (exit 3 if it has none)
  moto_admin.py --endpoint URL secret-versions --arn A
      prints how many versions the secret has
"""
import argparse
import sys

import boto3


def clients(endpoint):
    kw = dict(endpoint_url=endpoint, region_name="us-east-1",
              aws_access_key_id="test", aws_secret_access_key="test")
    return boto3.client("s3", **kw), boto3.client("firehose", **kw)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("setup")
    s.add_argument("--bucket", required=True)
    s.add_argument("--stream", required=True)
    s.add_argument("--prefix", required=True)
    d = sub.add_parser("dump")
    d.add_argument("--bucket", required=True)
    d.add_argument("--prefix", default="")
    c = sub.add_parser("create-bucket")
    c.add_argument("--bucket", required=True)
    g = sub.add_parser("get")
    g.add_argument("--bucket", required=True)
    g.add_argument("--key", required=True)
    for name, arg in (("create-secret", "--name"), ("get-secret", "--arn"), ("secret-versions", "--arn")):
        sub.add_parser(name).add_argument(arg, required=True)
    a = ap.parse_args()
    s3, fh = clients(a.endpoint)
    sm = boto3.client("secretsmanager", endpoint_url=a.endpoint, region_name="us-east-1",
                      aws_access_key_id="test", aws_secret_access_key="test")
    if a.cmd == "create-secret":
        print(sm.create_secret(Name=a.name)["ARN"])
        return
    if a.cmd == "get-secret":
        try:
            sys.stdout.write(sm.get_secret_value(SecretId=a.arn)["SecretString"])
        except sm.exceptions.ResourceNotFoundException:
            sys.exit(3)
        return
    if a.cmd == "secret-versions":
        print(len(sm.list_secret_version_ids(SecretId=a.arn)["Versions"]))
        return
    if a.cmd == "setup":
        s3.create_bucket(Bucket=a.bucket)
        fh.create_delivery_stream(
            DeliveryStreamName=a.stream,
            DeliveryStreamType="DirectPut",
            ExtendedS3DestinationConfiguration={
                "RoleARN": "arn:aws:iam::123456789012:role/firehose",
                "BucketARN": f"arn:aws:s3:::{a.bucket}",
                "Prefix": a.prefix,
                "ErrorOutputPrefix": "errors/",
                "BufferingHints": {"SizeInMBs": 64, "IntervalInSeconds": 60},
            },
        )
    elif a.cmd == "create-bucket":
        s3.create_bucket(Bucket=a.bucket)
    elif a.cmd == "get":
        try:
            body = s3.get_object(Bucket=a.bucket, Key=a.key)["Body"].read()
        except s3.exceptions.NoSuchKey:
            sys.exit(3)
        sys.stdout.buffer.write(body)
    else:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=a.bucket, Prefix=a.prefix)
        for page in pages:
            for o in page.get("Contents", []):
                print(o["Key"], file=sys.stderr)
                body = s3.get_object(Bucket=a.bucket, Key=o["Key"])["Body"].read()
                sys.stdout.write(body.decode())
                if body and not body.endswith(b"\n"):
                    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
