-- Portal passwords: an argon2id PHC string per (user, realm), the same on each of its
-- rows (rows are per digest algorithm, the password is per user and realm). NULL: the user
-- has no portal password yet (created before this migration: `stg user passwd` adds it).
ALTER TABLE stg_users ADD COLUMN password_hash VARCHAR(255) NULL;
