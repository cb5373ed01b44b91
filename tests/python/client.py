"""A client generated from proto/ by protoc for Python, against a running server.

Usage: client.py ADDRESS GENERATED_DIR SERVICE_TOKEN AUDITOR_TOKEN API_KEY_ID API_KEY_SECRET.
Exits non-zero on the first answer that is not the one the README's grpcurl session shows.
Bearer tokens for the session; the external event is sent as a signed call (HMAC-SHA256 over
method, timestamp and the message's SHA-256), the way a partner's service would.
"""
import hashlib
import hmac
import sys
import time

sys.path.insert(0, sys.argv[2])

import grpc  # noqa: E402
from tally.v1 import audit_pb2 as A, audit_pb2_grpc as AG  # noqa: E402
from tally.v1 import ledger_pb2 as L, ledger_pb2_grpc as LG  # noqa: E402
from tally.v1 import ingest_pb2 as I, ingest_pb2_grpc as IG  # noqa: E402
from tally.v1 import identity_pb2 as ID, identity_pb2_grpc as IDG  # noqa: E402

channel = grpc.insecure_channel(sys.argv[1])
ledger, audit, ingest = LG.LedgerStub(channel), AG.AuditStub(channel), IG.IngestStub(channel)
identity = IDG.IdentityStub(channel)
service_token, auditor_token, key_id, secret = sys.argv[3:7]
md = [("authorization", f"Bearer {service_token}")]
auditor = [("authorization", f"Bearer {auditor_token}")]


def signed(path, message, seconds_ago=0):
    timestamp = str(int(time.time()) - seconds_ago)
    digest = hashlib.sha256(message.SerializeToString()).hexdigest()
    signature = hmac.new(secret.encode(), f"{path}\n{timestamp}\n{digest}".encode(), hashlib.sha256).hexdigest()
    return [("x-tally-key-id", key_id), ("x-tally-timestamp", timestamp), ("x-tally-signature", signature)]


def check(what, got, expected):
    if got != expected:
        sys.exit(f"{what}: got {got!r}, expected {expected!r}")


me = identity.WhoAmI(ID.WhoAmIRequest(), metadata=md)
check("who am I", (me.subject, me.tenant, list(me.roles), me.credential), ("pos-7", "casino-1", ["service"], "operator_token"))
opened = ledger.OpenAccount(L.OpenAccountRequest(account_id="player-42", idempotency_key="open-player-42"), metadata=md)
check("tier", opened.balance.tier, "Member")
slip = L.RatingSlipAccrual(slip_id="S-1001", game="blackjack", average_bet_cents=2500, decisions_per_hour=70, minutes_played=185, house_edge_bps=200)
award = ledger.Award(L.AwardRequest(account_id="player-42", idempotency_key="slip-S-1001", rating_slip=slip), metadata=md)
check("points", (award.points_awarded, award.accrual.theo_cents), (107, 10791))
reserved = ledger.Reserve(L.ReserveRequest(account_id="player-42", idempotency_key="order-881-hold", amount=50, ttl_seconds=120), metadata=md)
hold = reserved.hold
check("hold id", hold.hold_id, reserved.outcome.sequence)
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
try:
    ledger.GetAccount(L.GetAccountRequest(account_id="player-42"))
    sys.exit("a call without a credential was answered")
except grpc.RpcError as error:
    check("no credential", error.code(), grpc.StatusCode.UNAUTHENTICATED)
try:
    audit.Replay(A.ReplayRequest(), metadata=md).next()
    sys.exit("a service read the audit stream")
except grpc.RpcError as error:
    check("no permission", error.code(), grpc.StatusCode.PERMISSION_DENIED)
kinds = [r.event.kind for r in audit.Replay(A.ReplayRequest(), metadata=auditor) if r.HasField("event")]
check("replay", kinds, ["api_key.created", "account.opened", "points.awarded", "hold.reserved", "hold.committed"])
event = I.IngestRequest(source="promo-engine", external_id="rw-5521", type="points.award")
event.payload.update({"member_id": "player-42", "points": 250, "promotion_id": "spring"})
accepted = ingest.Ingest(event, metadata=signed("/tally.v1.Ingest/Ingest", event))
check("ingest", (accepted.outcome, accepted.points, accepted.duplicate), (I.INGEST_OUTCOME_PROCESSED, 250, I.DUPLICATE_NONE))
replayed = signed("/tally.v1.Ingest/Ingest", event, seconds_ago=1)
again = ingest.Ingest(event, metadata=replayed)
check("ingest retry", (again.duplicate, again.receipt_sequence), (I.DUPLICATE_EXTERNAL_ID, accepted.receipt_sequence))
try:
    ingest.Ingest(event, metadata=replayed)
    sys.exit("a replayed signature was accepted")
except grpc.RpcError as error:
    check("replayed signature", error.details().split(":")[0], "SIGNATURE_REPLAYED")
print("python client: ok")
