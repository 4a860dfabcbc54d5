"""PUT and GET throughput of one object size through boto3, against several
S3-compatible endpoints in the same run. Driven by benches/s3-compare.sh, which starts
the servers; usable alone:

  python benches/s3-compare.py --target NAME=URL=ACCESS_KEY_ID=SECRET[=KMS_KEY_ID] [...]
         [--region R] [--size-mib M] [--rounds N]

Each target gets a bucket; a target with a KMS key id gets SSE-KMS default encryption
under it (atrest encrypts every object), one without stores what it is given (moto
keeps plaintext in memory). Each round PUTs one object of random bytes and GETs it back
on every target, rotating the order; the GET is checked byte for byte. MB/s = 10^6
bytes per second of wall clock, client included; the table shows the medians and
the ratios of the first target to each other one. Prints a table and one JSON line.
"""

import argparse
import json
import os
import statistics
import sys
import time

import boto3
from botocore.config import Config


def parse_target(text):
    parts = text.split("=")
    if len(parts) not in (4, 5):
        raise argparse.ArgumentTypeError("NAME=URL=ACCESS_KEY_ID=SECRET[=KMS_KEY_ID]")
    return {"name": parts[0], "url": parts[1], "key_id": parts[2], "secret": parts[3],
            "kms_key": parts[4] if len(parts) == 5 else None}


def client(target, region):
    return boto3.client(
        "s3",
        endpoint_url=target["url"],
        region_name=region,
        aws_access_key_id=target["key_id"],
        aws_secret_access_key=target["secret"],
        config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=parse_target, action="append", required=True)
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--report", help="also write the rounds as a chart report (JSON) here")
    args = parser.parse_args()
    if args.size_mib <= 0 or args.rounds <= 0:
        parser.error("--size-mib and --rounds must be positive")

    body = os.urandom(args.size_mib << 20)
    clients = {}
    for t in args.target:
        c = client(t, args.region)
        c.create_bucket(Bucket="bench")
        if t["kms_key"]:
            c.put_bucket_encryption(
                Bucket="bench",
                ServerSideEncryptionConfiguration={"Rules": [{"ApplyServerSideEncryptionByDefault": {
                    "SSEAlgorithm": "aws:kms", "KMSMasterKeyID": t["kms_key"]}}]},
            )
        clients[t["name"]] = c

    results = {t["name"]: {"put": [], "get": []} for t in args.target}
    names = [t["name"] for t in args.target]
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            c = clients[name]
            key = f"obj-{r}"
            start = time.perf_counter()
            c.put_object(Bucket="bench", Key=key, Body=body)
            put_s = time.perf_counter() - start
            start = time.perf_counter()
            got = c.get_object(Bucket="bench", Key=key)["Body"].read()
            get_s = time.perf_counter() - start
            if got != body:
                sys.exit(f"{name}: GET returned other bytes than the PUT")
            c.delete_object(Bucket="bench", Key=key)
            results[name]["put"].append(len(body) / put_s / 1e6)
            results[name]["get"].append(len(body) / get_s / 1e6)

    median = {n: {op: statistics.median(v) for op, v in ops.items()} for n, ops in results.items()}
    first = names[0]
    print(f"{args.size_mib} MiB objects through boto3, median of {args.rounds} rounds (MB/s)")
    print(f"{'server':<10} {'PUT':>10} {'GET':>10}")
    for n in names:
        print(f"{n:<10} {median[n]['put']:>10.1f} {median[n]['get']:>10.1f}")
    ratios = {}
    for n in names[1:]:
        ratios[n] = {op: median[first][op] / median[n][op] for op in ("put", "get")}
        print(f"{first}/{n:<5} {ratios[n]['put']:>9.2f}x {ratios[n]['get']:>9.2f}x")
    if args.report:
        with open(args.report, "w") as f:
            json.dump({"bench": "s3-compare",
                       "title": f"{args.size_mib} MiB objects through boto3, {args.rounds} rounds",
                       "charts": [{"name": "throughput", "title": "S3 PUT and GET throughput",
                                   "groups": [{"label": op.upper(), "unit": "MB/s",
                                               "bars": [{"series": n, "rounds": results[n][op]}
                                                        for n in names]} for op in ("put", "get")]}]},
                      f, indent=1)
    print(json.dumps({"size_mib": args.size_mib, "rounds": args.rounds, "median_mb_s": median,
                      "rounds_mb_s": results, "ratios": ratios}))


if __name__ == "__main__":
    main()
