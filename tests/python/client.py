"""A client generated from proto/ by protoc for Python, against a running server.

Usage: client.py ADDRESS GENERATED_DIR. Exits non-zero on the first answer that is not the
one the README's grpcurl session shows.
"""
import sys

sys.path.insert(0, sys.argv[2])

import grpc  # noqa: E402
from tally.v1 import audit_pb2 as A, audit_pb2_grpc as AG  # noqa: E402
from tally.v1 import ledger_pb2 as L, ledger_pb2_grpc as LG  # noqa: E402
from tally.v1 import ingest_pb2 as I, ingest_pb2_grpc as IG  # noqa: E402

channel = grpc.insecure_channel(sys.argv[1])
ledger, audit, ingest = LG.LedgerStub(channel), AG.AuditStub(channel), IG.IngestStub(channel)
md = [("x-tally-tenant", "casino-1"), ("x-tally-actor", "pos-7")]


def check(what, got, expected):
    if got != expected:
        sys.exit(f"{what}: got {got!r}, expected {expected!r}")


opened = ledger.OpenAccount(L.OpenAccountRequest(account_id="player-42", idempotency_key="open-player-42"), metadata=md)
check("tier", opened.balance.tier, "Member")
slip = L.RatingSlipAccrual(slip_id="S-1001", game="blackjack", average_bet_cents=2500, decisions_per_hour=70, minutes_played=185, house_edge_bps=200)
award = ledger.Award(L.AwardRequest(account_id="player-42", idempotency_key="slip-S-1001", rating_slip=slip), metadata=md)
check("points", (award.points_awarded, award.accrual.theo_cents), (107, 10791))
hold = ledger.Reserve(L.ReserveRequest(account_id="player-42", idempotency_key="order-881-hold", amount=50, ttl_seconds=120), metadata=md).hold
check("hold id", hold.hold_id, 3)
commit = L.CommitRequest(hold_id=hold.hold_id, idempotency_key="order-881-commit", amount=40)
first = ledger.Commit(commit, metadata=md)
check("commit", (first.hold.committed_amount, first.hold.released_amount, first.balance.posted, first.outcome.replayed), (40, 10, 67, False))
again = ledger.Commit(commit, metadata=md)
check("retry", (again.outcome.replayed, again.outcome.sequence), (True, first.outcome.sequence))
try:
    ledger.Commit(L.CommitRequest(hold_id=hold.hold_id, idempotency_key="order-881-commit", amount=41), metadata=md)
    sys.exit("a conflicting retry was accepted")
except grpc.RpcError as error:
    check("conflict code", error.code(), grpc.StatusCode.ALREADY_EXISTS)
    check("conflict reason", error.details().split(":")[0], "IDEMPOTENCY_CONFLICT")
kinds = [r.event.kind for r in audit.Replay(A.ReplayRequest(), metadata=md) if r.HasField("event")]
check("replay", kinds, ["account.opened", "points.awarded", "hold.reserved", "hold.committed"])
event = I.IngestRequest(source="promo-engine", external_id="rw-5521", type="points.award")
event.payload.update({"member_id": "player-42", "points": 250, "promotion_id": "spring"})
accepted = ingest.Ingest(event, metadata=md)
check("ingest", (accepted.outcome, accepted.points, accepted.duplicate), (I.INGEST_OUTCOME_PROCESSED, 250, I.DUPLICATE_NONE))
again = ingest.Ingest(event, metadata=md)
check("ingest retry", (again.duplicate, again.receipt_sequence), (I.DUPLICATE_EXTERNAL_ID, accepted.receipt_sequence))
print("python client: ok")
