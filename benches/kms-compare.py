"""GenerateDataKey + Decrypt pairs per second through boto3, against several
AWS-KMS-compatible endpoints in the same run. Driven by benches/kms-compare.sh, which
starts the servers; usable alone:

  python benches/kms-compare.py --target NAME=URL=ACCESS_KEY_ID=SECRET [...]
         [--region R] [--seconds S] [--rounds N] [--threads T]

Every target gets its own key (CreateKey) and, per thread, one boto3 client. Each
round measures every target for S seconds (the order rotates between rounds); the
result is the median pairs/s over the rounds. Prints a table and one JSON line.
"""

import argparse
import json
import statistics
import sys
import threading
import time

import boto3
from botocore.config import Config


def make_client(url, key_id, secret, region):
    return boto3.client(
        "kms",
        endpoint_url=url,
        region_name=region,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}, max_pool_connections=4),
    )


def pairs_for(clients, cmk, seconds):
    """Runs GenerateDataKey+Decrypt pairs on every client (one thread each) for
    `seconds`; returns pairs per second."""
    counts = [0] * len(clients)
    errors = []
    deadline = time.monotonic() + seconds
    start_gate = threading.Barrier(len(clients) + 1)

    def worker(i, client):
        ctx = {"bench": str(i)}
        start_gate.wait()
        try:
            while time.monotonic() < deadline:
                dk = client.generate_data_key(KeyId=cmk, KeySpec="AES_256", EncryptionContext=ctx)
                out = client.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext=ctx)
                if out["Plaintext"] != dk["Plaintext"]:
                    raise RuntimeError("Decrypt returned another key than GenerateDataKey")
                counts[i] += 1
        except Exception as err:  # reported below; the run is then invalid
            errors.append(repr(err))

    threads = [threading.Thread(target=worker, args=(i, c)) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    begin = time.monotonic()
    start_gate.wait()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - begin
    if errors:
        raise RuntimeError(errors[0])
    return sum(counts) / elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", action="append", required=True,
                        help="NAME=URL=ACCESS_KEY_ID=SECRET")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=20, help="pairs per client before measuring")
    parser.add_argument("--report", help="also write the rounds as a chart report (JSON) here")
    args = parser.parse_args()

    targets = []
    for spec in args.target:
        parts = spec.split("=", 3)
        if len(parts) != 4:
            parser.error(f"--target {spec!r} is not NAME=URL=ACCESS_KEY_ID=SECRET")
        name, url, key_id, secret = parts
        clients = [make_client(url, key_id, secret, args.region) for _ in range(args.threads)]
        cmk = clients[0].create_key(Description=f"kms-compare {name}")["KeyMetadata"]["KeyId"]
        pairs_for(clients, cmk, 0.0)
        for client in clients:
            for _ in range(args.warmup):
                dk = client.generate_data_key(KeyId=cmk, KeySpec="AES_256")
                client.decrypt(CiphertextBlob=dk["CiphertextBlob"])
        targets.append((name, clients, cmk))

    results = {name: [] for name, _, _ in targets}
    for round_no in range(args.rounds):
        order = targets[round_no % len(targets):] + targets[:round_no % len(targets)]
        for name, clients, cmk in order:
            rate = pairs_for(clients, cmk, args.seconds)
            results[name].append(rate)
            print(f"round {round_no + 1}: {name:10s} {rate:10.1f} pairs/s", file=sys.stderr,
                  flush=True)

    medians = {name: statistics.median(rates) for name, rates in results.items()}
    print(f"\nGenerateDataKey+Decrypt pairs/s through boto3 "
          f"({args.threads} client thread(s), {args.rounds} x {args.seconds:g} s, median):")
    first = targets[0][0]
    for name, median in medians.items():
        spread = (max(results[name]) - min(results[name])) / median * 100 if median else 0
        ratio = medians[first] / median if median else float("inf")
        line = f"  {name:10s} {median:10.1f} pairs/s  (spread {spread:4.1f}%)"
        if name != first:
            line += f"   {first}/{name} = {ratio:.1f}x"
        print(line)
    print(json.dumps({"medians": medians, "rounds": results, "threads": args.threads,
                      "seconds": args.seconds}))
    if args.report:
        with open(args.report, "w") as f:
            json.dump({"bench": "kms-compare",
                       "title": f"GenerateDataKey+Decrypt pairs, {args.threads} client thread(s), "
                                f"{args.rounds} rounds x {args.seconds:g} s",
                       "charts": [{"name": "pairs", "title": "GenerateDataKey+Decrypt pairs per second",
                                   "groups": [{"label": "boto3 client", "unit": "pairs/s",
                                               "bars": [{"series": n, "rounds": r}
                                                        for n, r in results.items()]}]}]}, f, indent=1)


if __name__ == "__main__":
    main()
