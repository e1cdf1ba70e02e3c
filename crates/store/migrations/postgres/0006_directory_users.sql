-- Directory users (SPEC §14, `identity.ldap`): where a user comes from ('local': keyward's
-- own, with a password; 'ldap': created and updated by directory logins, no local password),
-- when a replica last saw them log in through the directory, and when a replica last swept
-- the directory users (one sweep per `revalidate_every` for the whole fleet).
ALTER TABLE users ADD COLUMN source TEXT NOT NULL DEFAULT 'local';
ALTER TABLE users ADD COLUMN directory_seen_ms BIGINT;
CREATE INDEX users_directory ON users (source, id);
CREATE TABLE directory_sweeps (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    last_ms BIGINT NOT NULL
);
