-- The directory sweep is a lease held for the whole sweep (one replica sweeps at a time, however
-- long a sweep takes): `holder` names the sweep that holds it and `lease_until_ms` when the lease
-- runs out unless renewed (a crashed replica's lease runs out and another replica takes over).
-- `last_ms` now says when the last sweep finished (it said when it was claimed): the next sweep
-- starts `revalidate_every` after it. No holder: nobody is sweeping.
ALTER TABLE directory_sweeps ADD COLUMN holder TEXT;
ALTER TABLE directory_sweeps ADD COLUMN lease_until_ms INTEGER;
