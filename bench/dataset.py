"""The benchmark's database: migrated like production, then seeded in bulk with generate_series.

1,000 users with 100 conversations each (100,000 rows). Conversations of all users are inserted
in creation-time order, so one user's rows are spread over the whole table as in real traffic,
with a realistic mix: ~5% pinned, ~12% archived, ~10% never messaged (no last_message_at),
most attached to one of three agents.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]

_USERS = """
INSERT INTO auth.users (email, password_hash, name, role)
SELECT 'bench-user-' || g || '@bench.example',
       '$argon2id$v=19$m=65536,t=3,p=4$YmVuY2g$bm90LWEtcmVhbC1oYXNoLWJlbmNoLW9ubHk',
       'Bench User ' || g,
       'user'
FROM generate_series(1, %(users)s) AS g
"""

_AGENTS = """
INSERT INTO chat.agents (name, description, model, system_prompt, temperature, max_tokens)
VALUES ('Coder', 'Writes and reviews code.', 'default', 'You write careful code.', 0.2, 1024),
       ('Writer', 'Drafts and edits prose.', 'default', 'You write clear prose.', 0.9, 768)
"""

_CONVERSATIONS = """
WITH agents AS (SELECT array_agg(id ORDER BY id) AS ids FROM chat.agents),
base AS (
    SELECT u.id AS user_id, n,
           now() - random() * interval '180 days' AS created_at,
           random() AS r_pin, random() AS r_archive, random() AS r_messages,
           random() AS r_agent, random() AS r_status, random() AS r_topic, random() AS r_last
    FROM auth.users u CROSS JOIN generate_series(1, %(per_user)s) AS n
),
shaped AS (
    SELECT base.*,
           CASE WHEN r_messages < 0.10 THEN NULL
                ELSE created_at + r_last * (now() - created_at) END AS last_message_at
    FROM base
)
INSERT INTO chat.conversations
    (title, user_id, agent_id, conversation_type, status, is_archived, is_pinned,
     total_messages, unread_count, last_message_at, created_at, updated_at)
SELECT (ARRAY['Trip planning', 'Code review', 'Recipe ideas', 'Tax questions', 'Workout plan',
              'Book notes', 'Bug triage', 'Essay draft', 'Job interview prep',
              'Garden layout'])[1 + floor(r_topic * 10)::int] || ' ' || n,
       user_id,
       CASE WHEN r_agent < 0.85
            THEN agents.ids[1 + (floor(r_agent * 1000)::int %% array_length(agents.ids, 1))] END,
       CASE WHEN r_status < 0.05 THEN 'support' ELSE 'chat' END,
       CASE WHEN r_status < 0.10 THEN 'closed' ELSE 'active' END,
       r_archive < 0.12,
       r_pin < 0.05,
       CASE WHEN last_message_at IS NULL THEN 0 ELSE 1 + floor(r_messages ^ 3 * 400)::int END,
       CASE WHEN last_message_at IS NULL OR r_archive < 0.5 THEN 0
            ELSE floor(r_archive * 6)::int END,
       last_message_at,
       created_at,
       coalesce(last_message_at, created_at)
FROM shaped CROSS JOIN agents
ORDER BY created_at
"""


@dataclass(frozen=True)
class Dataset:
    user_ids: list[int]
    conversations: int
    pinned: int
    archived: int
    without_messages: int


def migrate(database_url: str, log_path: Path) -> None:
    """`python -m shared.db.migrate`, as an operator runs it."""
    env = {**os.environ, "DATABASE_URL": database_url}
    with log_path.open("ab") as log:
        done = subprocess.run(
            [sys.executable, "-m", "shared.db.migrate"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=300,
            check=False,
        )
    if done.returncode != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-30:]
        raise RuntimeError(
            f"migration failed ({done.returncode}); log {log_path}:\n" + "\n".join(tail)
        )


def seed(database_url: str, *, users: int, per_user: int) -> Dataset:
    with psycopg.connect(database_url, autocommit=False) as conn:
        conn.execute("SELECT setseed(0.42)")
        conn.execute(_USERS, {"users": users})
        conn.execute(_AGENTS)
        conn.execute(_CONVERSATIONS, {"per_user": per_user})
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM (ANALYZE) auth.users")
        conn.execute("VACUUM (ANALYZE) chat.conversations")
        user_ids = [row[0] for row in conn.execute("SELECT id FROM auth.users ORDER BY id")]
        row = conn.execute(
            """
            SELECT count(*), count(*) FILTER (WHERE is_pinned),
                   count(*) FILTER (WHERE is_archived),
                   count(*) FILTER (WHERE last_message_at IS NULL)
            FROM chat.conversations
            """
        ).fetchone()
    assert row is not None
    return Dataset(user_ids, int(row[0]), int(row[1]), int(row[2]), int(row[3]))
