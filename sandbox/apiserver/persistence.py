"""Write-through persistence to SQLite (stdlib `sqlite3`), as k3s keeps its datastore in SQLite.

Every committed write stores the object (or removes it), the resourceVersion counter and the change in a
bounded event history, in one transaction; minted tokens are stored too. On start the store loads them
back, so a restarted server keeps objects, resourceVersions and tokens, and a watch resuming from an old
resourceVersion gets the changes it missed replayed, or `410 Expired` once they fell out of the history
(`HISTORY_LIMIT` changes are kept).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from sandbox.apiserver.watch import Change

HISTORY_LIMIT = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (key TEXT, ns TEXT, name TEXT, body TEXT, PRIMARY KEY (key, ns, name));
CREATE TABLE IF NOT EXISTS history (rv INTEGER PRIMARY KEY, key TEXT, type TEXT, body TEXT, old TEXT);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT);
CREATE TABLE IF NOT EXISTS tokens (token TEXT PRIMARY KEY, body TEXT);
"""


class Database:
    """The SQLite file behind `--state`; all calls come from the server's event loop thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._writes = 0

    def close(self) -> None:
        self._db.close()

    def load_objects(self) -> list[tuple[str, dict[str, Any]]]:
        rows = self._db.execute("SELECT key, body FROM objects").fetchall()
        return [(k, json.loads(b)) for k, b in rows]

    def load_history(self) -> list[Change]:
        rows = self._db.execute("SELECT rv, key, type, body, old FROM history ORDER BY rv").fetchall()
        return [Change(rv, k, t, json.loads(b), json.loads(o) if o else None) for rv, k, t, b, o in rows]

    def meta(self, key: str, default: str) -> str:
        row = self._db.execute("SELECT v FROM meta WHERE k = ?", (key,)).fetchone()
        return str(row[0]) if row else default

    def commit(self, changes: list[Change], rv: int, compacted: int) -> None:
        db = self._db
        db.execute("BEGIN")
        try:
            for c in changes:
                meta = c.obj.get("metadata") or {}
                ident = (c.key, meta.get("namespace") or "", meta.get("name") or "")
                if c.type == "DELETED":
                    db.execute("DELETE FROM objects WHERE key = ? AND ns = ? AND name = ?", ident)
                else:
                    db.execute(
                        "INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?)", (*ident, json.dumps(c.obj))
                    )
                db.execute(
                    "INSERT OR REPLACE INTO history VALUES (?, ?, ?, ?, ?)",
                    (c.rv, c.key, c.type, json.dumps(c.obj), json.dumps(c.old) if c.old else None),
                )
            db.execute("INSERT OR REPLACE INTO meta VALUES ('rv', ?)", (str(rv),))
            self._writes += len(changes)
            if self._writes >= 1000:
                self._writes = 0
                db.execute("DELETE FROM history WHERE rv <= ?", (compacted,))
                db.execute("INSERT OR REPLACE INTO meta VALUES ('compacted', ?)", (str(compacted),))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def save_token(self, token: str, body: dict[str, Any]) -> None:
        self._db.execute("INSERT OR REPLACE INTO tokens VALUES (?, ?)", (token, json.dumps(body)))

    def load_tokens(self) -> dict[str, dict[str, Any]]:
        return {t: json.loads(b) for t, b in self._db.execute("SELECT token, body FROM tokens").fetchall()}
