-- One row per account. `username_folded` makes names unique case-insensitively (the same
-- folding as SQLite's, done by natsmud, so both stores agree on what "the same name" is);
-- `room_id` is where the player was last, so a restart puts them back there.
CREATE TABLE players (
    id TEXT PRIMARY KEY NOT NULL,
    username TEXT NOT NULL,
    username_folded TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    room_id TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
