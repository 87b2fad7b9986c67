-- Key lifecycle: expiry (for rotation with an overlap, and keys issued for a limited time) and
-- when a key was last used.
--
-- `expires_at` NULL means the key never expires. A rotation sets the old key's expiry to
-- now() + overlap, so two keys of the same tenant, name and scopes are valid until then.
-- `last_used_at` is approximate: authentication refreshes it at most once a minute per key (see
-- `ApiKey::authenticate`), so it answers "is this key still in use?", not "when exactly?".
ALTER TABLE api_keys
    ADD COLUMN expires_at   timestamptz,
    ADD COLUMN last_used_at timestamptz;
