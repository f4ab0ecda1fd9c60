#!/usr/bin/env python3
"""Independent check of the Aegis hash-chain vectors (docs/chain.md).

Uses only the Python standard library and the specification: for each line of
vectors.ndjson it re-derives the RFC 8785 canonical form of the record without
its "hash" member, checks it against "canonical", checks SHA-256 of it against
"hash", and checks that each session's records link from the genesis value.

Usage: check_vectors.py [vectors.ndjson]   (exit 0 when every vector holds)
"""
import hashlib
import json
import math
import sys

GENESIS = "0" * 64


def es_number(x):
    """ECMAScript Number::toString, as RFC 8785 requires."""
    if isinstance(x, bool):
        raise TypeError("bool is not a number")
    if isinstance(x, int):
        if abs(x) > 2**53 - 1:
            raise ValueError("integer beyond 2^53-1")
        return str(x)
    if math.isnan(x) or math.isinf(x):
        raise ValueError("NaN and Infinity are not JSON")
    if x == 0:
        return "0"
    sign = "-" if x < 0 else ""
    r = repr(abs(x))  # shortest round-trip digits
    mant, _, exp = r.partition("e")
    digits = mant.replace(".", "")
    point = mant.index(".") if "." in mant else len(mant)
    e = int(exp or 0) + point  # value = 0.digits * 10^e
    digits = digits.lstrip("0")
    e -= len(mant.replace(".", "")) - len(mant.replace(".", "").lstrip("0"))
    digits = digits.rstrip("0") or "0"
    k, n = len(digits), e
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * (-n) + digits
    exp_s = n - 1
    exp_str = ("+" if exp_s >= 0 else "-") + str(abs(exp_s))
    if k == 1:
        return sign + digits + "e" + exp_str
    return sign + digits[0] + "." + digits[1:] + "e" + exp_str


def jcs(v):
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, (int, float)):
        return es_number(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ",".join(jcs(x) for x in v) + "]"
    if isinstance(v, dict):
        keys = sorted(v, key=lambda k: k.encode("utf-16-be"))
        return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + jcs(v[k]) for k in keys) + "}"
    raise TypeError(type(v))


def main(path):
    heads = {}
    n = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            n += 1
            vec = json.loads(line)
            rec = vec["record"]
            body = {k: v for k, v in rec.items() if k != "hash"}
            canonical = jcs(body)
            if canonical != vec["canonical"]:
                sys.exit(f"vector {n}: canonical form differs:\n  got  {canonical}\n  want {vec['canonical']}")
            digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
            if digest != vec["hash"] or digest != rec["hash"]:
                sys.exit(f"vector {n}: hash {digest}, vector says {vec['hash']}")
            key = (rec["tenant_id"], rec["session_id"])
            prev_seq, prev_hash = heads.get(key, (0, GENESIS))
            if rec["seq"] != prev_seq + 1 or rec["prev_hash"] != prev_hash:
                sys.exit(f"vector {n}: does not link to the previous record of {key}")
            heads[key] = (rec["seq"], digest)
    # ECMAScript formatting spot checks (RFC 8785 appendix B).
    for value, want in [(1e21, "1e+21"), (1e-7, "1e-7"), (0.000001, "0.000001"), (1500.0, "1500"),
                        (-0.0, "0"), (123456789012345680000.0, "123456789012345680000"),
                        (5e-324, "5e-324"), (1.7976931348623157e308, "1.7976931348623157e+308"), (0.1, "0.1")]:
        if es_number(value) != want:
            sys.exit(f"es_number({value!r}) = {es_number(value)}, want {want}")
    print(f"{n} vectors OK in {len(heads)} sessions")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "vectors.ndjson")
