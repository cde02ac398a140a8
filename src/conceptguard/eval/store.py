"""The results store: one SQLite row per generated image, written atomically per batch.

A row is only inserted once its image is on disk and judged, inside one transaction per batch,
so a run killed at any point leaves complete rows only; re-running skips the keys present.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    key TEXT PRIMARY KEY,
    stack TEXT NOT NULL, concept TEXT NOT NULL, prompt_set TEXT NOT NULL, set_id TEXT NOT NULL,
    prompt_index INTEGER NOT NULL, prompt TEXT NOT NULL, seed INTEGER NOT NULL, image_index INTEGER NOT NULL,
    image TEXT NOT NULL, blocked INTEGER NOT NULL, blocked_by TEXT, record TEXT NOT NULL,
    judges TEXT NOT NULL, expected TEXT NOT NULL, seconds REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS by_group ON images (stack, concept, prompt_set);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class RowKey:
    stack: str
    concept: str
    set_id: str
    prompt_index: int
    seed: int
    image_index: int

    def __str__(self) -> str:
        return f"{self.stack}|{self.concept}|{self.set_id}|{self.prompt_index}|{self.seed}|{self.image_index}"


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, timeout=60)
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def existing(self, keys: list[RowKey]) -> set[str]:
        wanted = [str(k) for k in keys]
        found: set[str] = set()
        for i in range(0, len(wanted), 500):
            chunk = wanted[i:i + 500]
            marks = ",".join("?" * len(chunk))
            found |= {r[0] for r in self.db.execute(f"SELECT key FROM images WHERE key IN ({marks})", chunk)}
        return found

    def add(self, rows: list[dict]) -> None:
        """Insert one batch of rows in a single transaction (all or none)."""
        with self.db:
            self.db.executemany(
                "INSERT OR IGNORE INTO images VALUES (:key, :stack, :concept, :prompt_set, :set_id, :prompt_index, "
                ":prompt, :seed, :image_index, :image, :blocked, :blocked_by, :record, :judges, :expected, :seconds)",
                [{**r, "record": json.dumps(r["record"]), "judges": json.dumps(r["judges"]),
                  "expected": json.dumps(r["expected"]), "blocked": int(r["blocked"])} for r in rows])

    def update_judges(self, verdicts: dict[str, dict], meta: dict[str, object] | None = None) -> None:
        """Replace the verdicts of the given row keys (and set `meta`) in one transaction."""
        with self.db:
            self.db.executemany("UPDATE images SET judges = ? WHERE key = ?",
                                [(json.dumps(v), k) for k, v in verdicts.items()])
            for name, value in (meta or {}).items():
                self._set_meta(name, value)

    def meta(self, name: str) -> object | None:
        row = self.db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_meta(self, name: str, value: object) -> None:
        with self.db:
            self._set_meta(name, value)

    def _set_meta(self, name: str, value: object) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, json.dumps(value)))

    def rows(self, stack: str | None = None, concept: str | None = None, prompt_set: str | None = None) -> list[dict]:
        where, args = [], []
        for col, val in (("stack", stack), ("concept", concept), ("prompt_set", prompt_set)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        sql = "SELECT * FROM images" + (" WHERE " + " AND ".join(where) if where else "") + \
              " ORDER BY prompt_index, image_index"
        cur = self.db.execute(sql, args)
        cols = [c[0] for c in cur.description]
        out = []
        for values in cur:
            row = dict(zip(cols, values))
            for k in ("record", "judges", "expected"):
                row[k] = json.loads(row[k])
            row["blocked"] = bool(row["blocked"])
            out.append(row)
        return out

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM images").fetchone()[0])
