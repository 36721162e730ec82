"""The SDK end to end, as a requester runs it: a token, a check and a batch, both answers
verified offline, then the check's audit entry proven in the log (inclusion) and the log
proven to extend the checkpoint seen at the start (consistency), each against a
checkpoint verified with the gateway's pinned key.

    TONGBAN_CLIENT_SECRET=... python quickstart.py URL CLIENT_ID GATEWAY_KEY ID [ID ...]

GATEWAY_KEY is the gateway's checkpoint key (a JWK or PEM file, obtained out of band).
Prints one line per step; exits non-zero if anything fails to verify.
"""

from __future__ import annotations

import os
import sys
import time

from tongban_client import Client, NotCheckpointedYet, verify_answer

CLAIM, PURPOSE = "birth_registered", "school_enrollment"


def main(url: str, client_id: str, gateway_key: str, ids: list[str]) -> None:
    secret = os.environ["TONGBAN_CLIENT_SECRET"]
    with Client(url, client_id, client_secret=secret, gateway_key=gateway_key) as gw:
        start = gw.checkpoint()  # verified with the pinned key; kept for consistency
        print(f"checkpoint: {start.size} entries")
        jwks = gw.jwks()
        one = gw.check(CLAIM, PURPOSE, ids[0])
        print(f"check: {one.result}, verified offline: {verify_answer(one.answer, jwks)['result']}")
        many = gw.batch(CLAIM, PURPOSE, ids[1:] or ids)
        signed = verify_answer(many.answer, jwks)
        assert [r["result"] for r in signed["results"]] == [i.result for i in many.items]
        print(f"batch: {[i.result for i in many.items]}, verified offline")
        deadline = time.monotonic() + 60
        while True:  # the gateway checkpoints every few seconds
            try:
                proof = gw.verify_inclusion(one.audit_index)
                break
            except NotCheckpointedYet:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        print(f"inclusion: entry {proof.index} in a tree of {proof.tree_size}")
        grown = gw.verify_consistency(start)
        print(f"consistency: {grown.old_size} -> {grown.new_size}")
    print("ok")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])
