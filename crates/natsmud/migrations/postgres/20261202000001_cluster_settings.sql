-- Facts every node of a world must agree on, one row each (today the JWT secret's
-- fingerprint, so a node started with another secret can say so).
CREATE TABLE cluster_settings (
    key TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
