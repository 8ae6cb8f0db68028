"""Search (#15): index size against sealed text size, one-term search latency for a user in
200 conversations, and write throughput with and without the index.

In process, on SQLite in a temporary data dir: no Redis, broker or worker is used. Messages are
sealed and indexed through the domain functions the pipeline stage calls (domain/search/index),
and searched through the one the API calls (domain/search/query). The default data set is
scaled down; `--full` is the issue's 1M messages in 10k conversations. Texts are synthetic:
words drawn from a Zipf-distributed vocabulary, 4-30 words a message.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

OUT = Path(os.environ.get("PARLEY_BENCH_OUT", Path(__file__).parent / "out"))


def _vocabulary(rng: random.Random, n: int) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(2, 10))) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--conversations", type=int, default=400)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--member-of", type=int, default=200)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--full", action="store_true", help="1M messages, 10k conversations")
    args = parser.parse_args()
    if args.full:
        args.conversations, args.messages = 10_000, 1_000_000

    from sqlalchemy import func, insert, select, text

    from core.ids import new_id
    from domain.keys import create_data_key, message_aad
    from domain.principals import Principal
    from domain.search import index as search_index
    from domain.search import query as search_query
    from models import Conversation, DeliveryCursor, Message, Participant, User
    from models.migrate import upgrade
    from web import create_app

    tmp = Path(tempfile.mkdtemp(prefix="parley-search-bench-"))
    url = f"sqlite:///{tmp / 'parley.db'}"
    upgrade(url)
    app = create_app(
        {
            "database_url": url,
            "redis_url": "redis://127.0.0.1:1/0",  # never connected to
            "broker_url": "memory://",
            "data_dir": tmp,
            "jwt_secret": "bench-" + "x" * 32,
            "testing": True,
        }
    )
    svc = app.extensions["parley"]
    rng = random.Random(15)
    vocab = _vocabulary(rng, 20_000)
    weights = [1 / (i + 1) for i in range(len(vocab))]
    me = "bench-user"
    with app.app_context():
        with svc.Session.begin() as s:
            s.add(User(id=me))
            s.add(User(id="other"))
            conv_keys: list[tuple[str, str]] = []
            for i in range(args.conversations):
                conv = Conversation(type="group")
                s.add(conv)
                s.flush()
                conv.data_key_id = create_data_key(svc, s, conv.id)
                s.add(DeliveryCursor(conversation_id=conv.id))
                s.add(Participant(conversation_id=conv.id, user_id="other"))
                if i < args.member_of:
                    s.add(Participant(conversation_id=conv.id, user_id=me))
                conv_keys.append((conv.id, conv.data_key_id))
        sealed_bytes = 0
        timings = {"sealed only": 0.0, "sealed and indexed": 0.0}
        per_conv: dict[str, int] = {}
        batch = 500
        done = 0
        while done < args.messages:
            n = min(batch, args.messages - done)
            rows: list[dict[str, Any]] = []
            texts: list[str] = []
            for _ in range(n):
                cid, dk = rng.choice(conv_keys)
                per_conv[cid] = per_conv.get(cid, 0) + 1
                words = rng.choices(vocab, weights, k=rng.randint(4, 30))
                texts.append(" ".join(words).capitalize() + ".")
                rows.append({"cid": cid, "dk": dk, "seq": per_conv[cid]})
            # Half the batches measure sealing and inserting alone, half add the index stage.
            indexed = (done // batch) % 2 == 1 or args.messages <= batch
            started = time.perf_counter()
            with svc.Session.begin() as s:
                values = []
                for row, body in zip(rows, texts, strict=True):
                    mid = new_id()
                    ct = svc.keyring.seal_text(row["dk"], body, message_aad(mid))
                    sealed_bytes += len(ct)
                    values.append(
                        {
                            "id": mid,
                            "conversation_id": row["cid"],
                            "seq": row["seq"],
                            "sender_id": "other",
                            "text_ct": ct,
                            "key_id": row["dk"],
                            "state": "delivered",
                            "moderation_action": "allow",
                        }
                    )
                s.execute(insert(Message), values)
                if indexed:
                    for row, body in zip(rows, texts, strict=True):
                        search_index.replace(svc, s, row["cid"], row["seq"], row["dk"], body)
            elapsed = time.perf_counter() - started
            timings["sealed and indexed" if indexed else "sealed only"] += elapsed
            done += n
            if not indexed:  # index them too (untimed), so the whole set is searchable
                with svc.Session.begin() as s:
                    for row, body in zip(rows, texts, strict=True):
                        search_index.replace(svc, s, row["cid"], row["seq"], row["dk"], body)
        half = args.messages / 2
        with svc.engine.connect() as conn:
            conn.execute(text("ANALYZE"))
            try:
                sizes = dict(
                    conn.execute(text("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name")).all()
                )
            except Exception:  # SQLite built without dbstat
                sizes = {}
            tokens = conn.execute(text("SELECT COUNT(*) FROM search_tokens")).scalar() or 0
        index_bytes = sum(v for k, v in sizes.items() if "search_tokens" in k)
        who = Principal(user_id=me)
        common = vocab[:50]
        rare = vocab[1000:1200]
        latencies: dict[str, list[float]] = {"common term": [], "rarer term": []}
        for i in range(args.queries):
            for label, pool in (("common term", common), ("rarer term", rare)):
                term = pool[i % len(pool)]
                started = time.perf_counter()
                with svc.ReadSession() as s:
                    search_query.search(svc, s, who, {"q": term, "limit": 20})
                latencies[label].append((time.perf_counter() - started) * 1000)
        with svc.ReadSession() as s:
            total = s.scalar(select(func.count()).select_from(Message)) or 0

    def pct(values: list[float], p: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    result = {
        "messages": total,
        "conversations": args.conversations,
        "member_of": args.member_of,
        "tokens": tokens,
        "tokens_per_message": tokens / max(total, 1),
        "sealed_text_bytes": sealed_bytes,
        "index_bytes": index_bytes,
        "index_to_sealed": index_bytes / sealed_bytes if sealed_bytes else None,
        "search_ms": {
            label: {
                "p50": statistics.median(v),
                "p99": pct(v, 0.99),
            }
            for label, v in latencies.items()
        },
        "write_msgs_per_s": {
            "sealed only": half / timings["sealed only"] if timings["sealed only"] else None,
            "sealed and indexed": half / timings["sealed and indexed"]
            if timings["sealed and indexed"]
            else None,
        },
    }
    print(json.dumps(result, indent=2))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "search.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
