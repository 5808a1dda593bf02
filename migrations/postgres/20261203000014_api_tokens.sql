-- Bearer tokens of `renderq serve`. Only a SHA-256 of each token's secret is kept;
-- `id` is the token's public part (it is printed in `renderq token list`).
CREATE TABLE renderq.api_tokens (
    id           text PRIMARY KEY,
    name         text NOT NULL,
    scope        text NOT NULL CHECK (scope IN ('read', 'submit', 'admin')),
    secret_hash  bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
