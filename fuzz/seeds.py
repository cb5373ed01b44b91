#!/usr/bin/env python3
"""Writes the seed inputs of each fuzz target into fuzz/corpus/<target>/seed-*.

Small valid inputs for the fuzzer to start from (and a few nearly valid ones): frames and
segments cut from the golden logs in snapshots/, Ledger requests encoded by hand, ingest
payloads of each type. Run from anywhere: `python3 fuzz/seeds.py`. The committed corpora
are what fuzzing kept from these seeds and from its own finds, minimized with
`cargo fuzz cmin` and cut down by fuzz/pick.py.
"""

import json
import pathlib
import struct

FUZZ = pathlib.Path(__file__).resolve().parent
ROOT = FUZZ.parent
FRAME_MAGIC = 0x4D524654
SEGMENT_HEADER_LEN = 64

# log_scan's first byte (fuzz/src/lib.rs, scan_flags).
FIX_HASHES, PAD, SHORT_NAMES = 1, 2, 4


def write(target, name, data):
    directory = FUZZ / "corpus" / target
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"seed-{name}").write_bytes(data)


def frames(segment):
    """(offset, bytes) of each frame of a segment, walked by their length fields."""
    at, found = SEGMENT_HEADER_LEN, []
    while at + 56 <= len(segment) and struct.unpack_from("<I", segment, at)[0] == FRAME_MAGIC:
        length = struct.unpack_from("<I", segment, at + 4)[0]
        found.append((at, segment[at : at + length]))
        at += length
    return found


def golden(version):
    return (ROOT / "snapshots" / f"v{version}" / "log" / "00000000000000000001.seg").read_bytes()


def frame_decode_seeds():
    # One frame for each event kind that opens a frame in the newest golden log.
    seen = set()
    for _, frame in frames(golden(6)):
        kind = struct.unpack_from("<H", frame, 56 + 4)[0]
        if kind not in seen:
            seen.add(kind)
            write("frame_decode", f"kind-{kind:02}", frame)
    # A record on its own: the first record of the log, without its frame header.
    _, first = frames(golden(1))[0]
    write("frame_decode", "record", first[56:])


def log_scan_seeds():
    segment = golden(1)
    found = frames(segment)
    header = segment[:SEGMENT_HEADER_LEN]

    def through(n):
        """The segment up to the end of its n-th frame."""
        at, frame = found[n - 1]
        return segment[: at + len(frame)]

    write("log_scan", "three-frames", bytes([0]) + through(3))
    write("log_scan", "padded", bytes([PAD]) + through(6))
    write("log_scan", "empty", bytes([PAD]) + header)
    write("log_scan", "short-name", bytes([SHORT_NAMES]) + through(2))
    # A torn tail: the last frame cut in the middle, and one cut at a sector.
    cut = through(5)
    write("log_scan", "torn", bytes([PAD]) + cut[: len(cut) - 40])
    write("log_scan", "torn-sector", bytes([FIX_HASHES | PAD]) + through(4)[:512])
    # Bit rot in a frame before the last: corruption, refused.
    rotten = bytearray(through(4))
    rotten[found[1][0] + 100] ^= 0x10
    write("log_scan", "corrupt", bytes([PAD]) + bytes(rotten))
    # Two segments: the second starts at the record after the first's last (its header's
    # first sequence number and checksum are fixed by the harness).
    first_records = sum(struct.unpack_from("<I", f, 8)[0] for _, f in found[:3])
    second_header = bytearray(header)
    struct.pack_into("<Q", second_header, 16, first_records + 1)
    tail = b"".join(f for _, f in found[3:5])
    write("log_scan", "two-segments", bytes([FIX_HASHES]) + through(3) + bytes(second_header) + tail)


def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def uint(number, value):
    return varint(number << 3) + varint(value)


def text(number, value):
    data = value.encode() if isinstance(value, str) else value
    return varint(number << 3 | 2) + varint(len(data)) + data


def double(number, value):
    return varint(number << 3 | 1) + struct.pack("<d", value)


def common(key, account=None):
    fields = text(2, key) + text(4, "corr-1")
    return (text(1, account) if account else b"") + fields


# proto_command's first three bytes: the message, the caller, the clock (fuzz/src/lib.rs).
OPEN, AWARD, RESERVE, COMMIT, RELEASE, BATCH, INGEST, REPLAY, GET_ACCOUNT, GET_HOLD, HISTORY, INGEST_BATCH = range(12)
MEMBER, STAFF, SERVICE, AUDITOR, ADMIN, AS_OWNER = 1, 2, 4, 8, 16, 32


def proto_command_seeds():
    def seed(name, message, who, wire, clock=1):
        write("proto_command", name, bytes([message, who, clock]) + wire)

    open_account = common("k-open", "a2")
    promotion = common("k-award", "a1") + text(12, uint(1, 100) + text(2, "spring") + text(3, "r-9"))
    slip = text(1, "s-1") + uint(2, 2500) + uint(3, 70) + uint(4, 185) + uint(5, 200) + text(6, "blackjack")
    rating = common("k-slip", "a1") + text(10, slip)
    comp = common("k-comp", "a1") + text(11, uint(1, 50) + text(2, "goodwill for a long wait"))
    reserve = common("k-res", "a1") + uint(10, 50) + uint(11, 60)
    commit = uint(1, 4) + common("k-commit") + uint(10, 20)
    release = uint(1, 4) + common("k-release")
    seed("open", OPEN, SERVICE, open_account)
    seed("open-replayed", OPEN, SERVICE, common("open-a1", "a1"))
    seed("award-promotion", AWARD, SERVICE, promotion)
    seed("award-slip", AWARD, SERVICE, rating)
    seed("award-comp", AWARD, STAFF, comp)
    seed("reserve", RESERVE, SERVICE, reserve)
    seed("reserve-own", RESERVE, MEMBER | AS_OWNER, reserve)
    seed("commit", COMMIT, SERVICE, commit)
    seed("release", RELEASE, SERVICE, release)
    seed("release-expired", RELEASE, SERVICE, release, clock=60)
    batch = text(1, text(1, open_account)) + text(1, text(2, promotion)) + text(1, text(3, reserve))
    seed("batch", BATCH, SERVICE, batch)
    payload = json.dumps({"member_id": "a1", "points": 25, "promotion_id": "p-2"})
    ingest = text(1, "partner") + text(2, "e-9") + text(3, "points.award") + text(4, payload)
    seed("ingest", INGEST, SERVICE, ingest)
    entry = lambda key, value: text(1, text(1, key) + text(2, value))  # noqa: E731
    struct_payload = entry("member_id", text(3, "m1")) + entry("points", double(2, 7.0)) + entry(
        "promotion_id", text(3, "p-3")
    )
    seed(
        "ingest-struct",
        INGEST,
        SERVICE,
        text(1, "partner") + text(2, "e-10") + text(3, "points.award") + text(6, struct_payload),
    )
    seed("ingest-batch", INGEST_BATCH, SERVICE, text(1, ingest))
    seed("replay", REPLAY, AUDITOR, uint(1, 2) + uint(2, 5) + text(5, text(1, "points.awarded") + text(2, "a1")))
    seed("get-account", GET_ACCOUNT, AUDITOR, text(1, "a1"))
    seed("get-hold", GET_HOLD, AUDITOR, uint(1, 4))
    seed("history", HISTORY, AUDITOR, text(1, "a1") + uint(2, 10) + text(3, "3"))


def ingest_json_seeds():
    payloads = {
        "enrolled": {"member_id": "m-7"},
        "award": {"member_id": "a1", "points": 250, "promotion_id": "spring-2026"},
        "slip": {
            "member_id": "p-1001",
            "slip_id": "88121",
            "game": "blackjack",
            "average_bet_cents": 2500,
            "decisions_per_hour": 70,
            "minutes_played": 185,
            "house_edge_bps": 200,
        },
        "reverse": {
            "member_id": "a1",
            "original_external_id": "e-1",
            "policy": "cap_to_available",
            "reason": "the award was sent twice",
        },
    }
    for name, payload in payloads.items():
        write("ingest_json", name, json.dumps(payload).encode())
    write("ingest_json", "twice", b'{"member_id":"a1","points":1,"promotion_id":"p","points":999999}')
    write("ingest_json", "escaped-twice", b'{"member_id":"m-7","\\u006dember_id":"m-8"}')
    write("ingest_json", "nested", b'{"member_id":"m-7","x":[1,{"a":null,"b":[true,2.5e3]}],"y":"\\ud83d\\ude00"}')


if __name__ == "__main__":
    frame_decode_seeds()
    log_scan_seeds()
    proto_command_seeds()
    ingest_json_seeds()
