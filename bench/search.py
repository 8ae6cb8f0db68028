"""Search (#15): index size against sealed text size, one-term search latency for a user in
200 conversations, and the moderation stage's throughput with the index stage on and off.

In process, on SQLite (or `--postgres`, a fresh database on the local server) with a private
redis-server (the moderation stage's flood check and fan-out use it); no broker or worker.
The data set is loaded with Core bulk inserts of sealed messages, and indexed per conversation
batch through the stage's own code (domain.search.stage.index_many); searches go through the
function the API calls (domain.search.query.search). `--full` is the issue's 1M messages in
10k conversations. Texts are synthetic: 4-30 words drawn from a Zipf-distributed vocabulary.

Throughput: `--moderate` pending messages (in `--moderate-conversations` conversations) are
moderated by domain.moderation_stage.moderate_and_fan_out, as the moderate task would, with
the search index on (the fan-out writes it) and off (`PARLEY_SEARCH_INDEX=false`). Both are
measured in the same run, alternating, `--rounds` times each; the medians and their ratio are
printed.
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import statistics
import tempfile
import time
from collections import defaultdict
from contextlib import ExitStack
from itertools import accumulate
from pathlib import Path
from typing import Any, cast

from bench.report import Figure, write

ME = "bench-user"


def _vocabulary(rng: random.Random, n: int) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(2, 10))) for _ in range(n)]


class Texts:
    def __init__(self, seed: int) -> None:
        self.vocab = _vocabulary(random.Random(15), 20_000)  # one language for every run
        self.rng = random.Random(seed)
        self.cum = list(accumulate(1 / (i + 1) for i in range(20_000)))

    def next(self) -> str:
        words = self.rng.choices(self.vocab, cum_weights=self.cum, k=self.rng.randint(4, 30))
        return " ".join(words).capitalize() + "."


def _conversations(svc: Any, n: int, member_of: int) -> list[tuple[str, str]]:
    from domain.keys import create_data_key
    from models import Conversation, DeliveryCursor, Participant

    out: list[tuple[str, str]] = []
    for start in range(0, n, 1000):
        with svc.Session.begin() as s:
            for i in range(start, min(n, start + 1000)):
                conv = Conversation(type="group")
                s.add(conv)
                s.flush()
                conv.data_key_id = create_data_key(svc, s, conv.id)
                s.add(DeliveryCursor(conversation_id=conv.id))
                s.add(Participant(conversation_id=conv.id, user_id="other"))
                if i < member_of:
                    s.add(Participant(conversation_id=conv.id, user_id=ME))
                out.append((conv.id, conv.data_key_id))
    return out


def _insert(
    svc: Any,
    texts: Texts,
    convs: list[tuple[str, str]],
    per_conv: dict[str, int],
    n: int,
    state: str,
) -> tuple[dict[str, list[str]], int]:
    """Insert `n` sealed messages spread over `convs` (Core, one statement); returns their
    ids per conversation and the sealed bytes."""
    from sqlalchemy import Table, bindparam, insert, update

    from core.ids import new_id
    from domain.keys import message_aad
    from models import Conversation, Message

    rng = texts.rng
    values: list[dict[str, Any]] = []
    ids: dict[str, list[str]] = defaultdict(list)
    sealed = 0
    for _ in range(n):
        cid, dk = convs[rng.randrange(len(convs))]
        per_conv[cid] = per_conv.get(cid, 0) + 1
        mid = new_id()
        ct = svc.keyring.seal_text(dk, texts.next(), message_aad(mid))
        sealed += len(ct)
        ids[cid].append(mid)
        values.append(
            {
                "id": mid,
                "conversation_id": cid,
                "seq": per_conv[cid],
                "sender_id": "other",
                "text_ct": ct,
                "key_id": dk,
                "state": state,
                "moderation_action": "allow" if state == "delivered" else None,
            }
        )
    with svc.Session.begin() as s:
        s.execute(insert(cast(Table, Message.__table__)), values)  # Core: plain executemany
        conversations = cast(Table, Conversation.__table__)
        s.execute(
            update(conversations)
            .where(conversations.c.id == bindparam("c"))
            .values(last_seq=bindparam("q")),
            [{"c": c, "q": per_conv[c]} for c in ids],
        )
    return ids, sealed


def load(svc: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The searchable data set: delivered messages, indexed as the stage indexes them."""
    from domain.search import stage

    texts = Texts(15)
    started = time.perf_counter()
    convs = _conversations(svc, args.conversations, args.member_of)
    per_conv: dict[str, int] = {}
    sealed = 0
    indexing = 0.0
    done = 0
    while done < args.messages:
        n = min(20_000, args.messages - done)
        ids, size = _insert(svc, texts, convs, per_conv, n, "delivered")
        sealed += size
        t0 = time.perf_counter()
        with svc.Session.begin() as s:
            stage.index_many(svc, s, ids)
        indexing += time.perf_counter() - t0
        done += n
        print(f"  loaded {done:,} messages ({time.perf_counter() - started:.0f} s)", flush=True)
    return {
        "sealed_bytes": sealed,
        "load_s": time.perf_counter() - started,
        "index_s": indexing,
        "vocab": texts.vocab,
    }


def index_size(svc: Any, compact: bool = False) -> tuple[int, int]:
    """(bytes of the index's tables and indexes, postings rows). On PostgreSQL every rewrite
    of a postings row leaves a dead version until VACUUM: `compact` first runs VACUUM FULL
    on the index's tables (the size of the live rows); otherwise a plain VACUUM ANALYZE (what
    autovacuum does), which frees the dead versions for reuse but keeps the pages."""
    from sqlalchemy import func, select, text

    from models import SearchPostings

    if svc.dialect == "postgresql":
        with svc.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for table in ("search_postings", "search_conversations"):
                conn.execute(text(f"VACUUM {'FULL ' if compact else ''}ANALYZE {table}"))
    with svc.engine.connect() as conn:
        if svc.dialect == "postgresql":
            size = conn.execute(
                text(
                    "SELECT pg_total_relation_size('search_postings')"
                    " + pg_total_relation_size('search_conversations')"
                )
            ).scalar()
        else:
            size = conn.execute(
                text(
                    "SELECT SUM(pgsize) FROM dbstat WHERE name LIKE '%search_postings%'"
                    " OR name LIKE '%search_conversations%'"
                )
            ).scalar()
        rows = conn.execute(select(func.count()).select_from(SearchPostings)).scalar()
    return int(size or 0), int(rows or 0)


def latencies(svc: Any, vocab: list[str], queries: int) -> dict[str, dict[str, float]]:
    from domain.principals import Principal
    from domain.search import query as search_query

    def pct(values: list[float], p: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    who = Principal(user_id=ME)
    pools = {"common term": vocab[:50], "rarer term": vocab[1000:1200]}
    times: dict[str, list[float]] = {k: [] for k in pools}
    for i in range(queries):
        for label, pool in pools.items():
            started = time.perf_counter()
            with svc.ReadSession() as s:
                search_query.search(svc, s, who, {"q": pool[i % len(pool)], "limit": 20})
            times[label].append((time.perf_counter() - started) * 1000)
    return {
        k: {"p50": statistics.median(v), "p99": pct(v, 0.99), "queries": len(v)}
        for k, v in times.items()
    }


def moderation_round(svc: Any, args: argparse.Namespace, texts: Texts, indexed: bool) -> float:
    """Post `--moderate` pending messages (untimed), then time the moderation stage over them,
    with the search index on or off; returns messages per second."""
    from dataclasses import replace

    from core.config import with_overrides
    from domain import moderation_stage

    run_svc = replace(svc, settings=with_overrides(svc.settings, search_index=indexed))
    convs = _conversations(svc, args.moderate_conversations, 0)
    per_conv: dict[str, int] = {}
    ids, _ = _insert(svc, texts, convs, per_conv, args.moderate, "pending")
    order = [(cid, mid) for cid, mids in ids.items() for mid in mids]
    texts.rng.shuffle(order)
    started = time.perf_counter()
    for cid, mid in order:
        own = moderation_stage.still_to_moderate(run_svc, [(mid, cid)])
        if own:
            moderation_stage.moderate_and_fan_out(run_svc, own)
    return args.moderate / (time.perf_counter() - started)


_STATE = "search-bench.json"


def _shape(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in ("messages", "conversations", "member_of", "postgres")}


def _kept(args: argparse.Namespace) -> tuple[Path, str, dict[str, Any] | None]:
    """`--data-dir`: (data dir, database URL, the kept load's figures, or None when the data
    set is still to load). The database is SQLite in the dir, or a PostgreSQL database the
    state file names; neither is dropped at the end."""
    import secrets as _secrets

    from bench.stack import PG_ADMIN_URL

    tmp = cast(Path, args.data_dir)
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / _STATE
    if path.exists():
        state: dict[str, Any] = json.loads(path.read_text())
        if state["shape"] != _shape(args):
            raise SystemExit(f"{tmp} holds another data set: {state['shape']}")
        return tmp, state["url"], state
    if not args.postgres:
        return tmp, f"sqlite:///{tmp / 'parley.db'}", None
    from sqlalchemy import create_engine, text

    name = f"parley_bench_kept_{_secrets.token_hex(4)}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return tmp, PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}", None


def _keep(args: argparse.Namespace, url: str, loaded: dict[str, Any]) -> None:
    state = {k: v for k, v in loaded.items() if k != "vocab"}
    (cast(Path, args.data_dir) / _STATE).write_text(
        json.dumps({**state, "shape": _shape(args), "url": url})
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench.stack import _database
    from core.redis_server import RedisServer
    from models import User
    from models.migrate import upgrade
    from web import create_app

    with ExitStack() as stack:
        state: dict[str, Any] | None = None
        if args.data_dir is None:
            tmp = Path(tempfile.mkdtemp(prefix="parley-search-bench-"))
            url = stack.enter_context(_database(tmp, args.postgres))
        else:
            tmp, url, state = _kept(args)
        redis = RedisServer(tmp)
        redis.start()
        stack.callback(redis.stop)
        if state is None:
            upgrade(url)
        app = create_app(
            {
                "database_url": url,
                "redis_url": redis.url(),
                "broker_url": "memory://",
                "data_dir": tmp,
                "jwt_secret": "bench-" + secrets.token_hex(16),
                "testing": True,
            }
        )
        svc = app.extensions["parley"]
        stack.callback(svc.engine.dispose)
        with app.app_context():
            if state is None:
                with svc.Session.begin() as s:
                    s.add(User(id=ME))
                    s.add(User(id="other"))
                loaded = load(svc, args)
                if args.data_dir is not None:
                    _keep(args, url, loaded)
            else:
                from domain.search.text import words

                loaded = {**state, "vocab": Texts(15).vocab}
                words(" ".join(loaded["vocab"]))  # the stems the load would have cached
                print(f"  reusing the data set in {tmp} ({url.split('/')[-1]})", flush=True)
            loaded_size, rows = index_size(svc)
            size = index_size(svc, compact=True)[0] if args.postgres else loaded_size
            search_ms = latencies(svc, loaded["vocab"], args.queries)
            rates: dict[str, list[float]] = {"index off": [], "index on": []}
            if not args.skip_throughput:
                texts = Texts(16)
                moderation_round(svc, args, texts, True)  # warm-up, not counted
                for _ in range(args.rounds):
                    for label in rates:
                        rates[label].append(moderation_round(svc, args, texts, label == "index on"))
    result = {
        "database": "PostgreSQL" if args.postgres else "SQLite",
        "messages": args.messages,
        "conversations": args.conversations,
        "member_of": args.member_of,
        "load_s": loaded["load_s"],
        "index_build_msgs_per_s": args.messages / loaded["index_s"],
        "sealed_text_bytes": loaded["sealed_bytes"],
        "index_bytes": size,
        "index_bytes_as_loaded": loaded_size,
        "postings_rows": rows,
        "index_per_message_bytes": size / args.messages,
        "index_to_sealed": size / loaded["sealed_bytes"],
        "target_index_to_sealed": 3.0,
        "search_ms": search_ms,
        "target_search_ms": {"p50": 20, "p99": 100},
    }
    if args.skip_throughput:
        return result
    off = statistics.median(rates["index off"])
    on = statistics.median(rates["index on"])
    return {
        **result,
        "moderation_msgs_per_s": {
            "index off (baseline)": off,
            "index on": on,
            "spread": {k: [round(min(v)), round(max(v))] for k, v in rates.items()},
            "ratio_on_to_off": on / off,
            "target_ratio": 0.9,
            "messages_per_round": args.moderate,
            "rounds": args.rounds,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--conversations", type=int, default=400)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--member-of", type=int, default=200)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--moderate", type=int, default=2000, help="messages per round")
    parser.add_argument("--moderate-conversations", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL, not SQLite")
    parser.add_argument("--full", action="store_true", help="1M messages, 10k conversations")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="keep the loaded data set here (and its PostgreSQL database) and reuse it on the"
        " next run with the same sizes; the throughput rounds add their messages to it",
    )
    parser.add_argument(
        "--skip-throughput", action="store_true", help="only the size and search figures"
    )
    args = parser.parse_args()
    if args.full:
        args.conversations, args.messages = 10_000, 1_000_000
    result = run(args)
    print(json.dumps(result, indent=2))
    scenario = "search-pg" if args.postgres else "search"
    figures = [
        Figure(
            scenario,
            "index size vs sealed text",
            "KB",
            result["index_bytes"] / 1024,
            result["sealed_text_bytes"] / 1024,
            "ratio <= 3",
        ),
        *(
            Figure(scenario, f"one-term search, {label}, {p}", "ms", v[p], None, f"value <= {t}")
            for label, v in result["search_ms"].items()
            for p, t in (("p50", 20), ("p99", 100))
        ),
    ]
    if args.skip_throughput:  # a partial run: printed, not written over the kept report
        return
    mod = result["moderation_msgs_per_s"]
    figures.append(
        Figure(
            scenario,
            "moderation stage with index stage",
            "msgs/s",
            mod["index on"],
            mod["index off (baseline)"],
            "ratio >= 0.9",
        )
    )
    write(scenario, figures, result)


if __name__ == "__main__":
    main()
