/** Schema migrations, applied in order; `PRAGMA user_version` records how many have run. */
export const MIGRATIONS: string[] = [
  `CREATE TABLE vms (
     id          TEXT PRIMARY KEY,
     name        TEXT UNIQUE,
     backend     TEXT NOT NULL,
     status      TEXT NOT NULL CHECK (status IN ('created', 'running', 'paused', 'stopped', 'error')),
     config      TEXT NOT NULL,
     handle      TEXT,
     disk_path   TEXT,
     disk_format TEXT,
     vm_dir      TEXT NOT NULL,
     error       TEXT,
     created_at  TEXT NOT NULL,
     updated_at  TEXT NOT NULL
   );
   CREATE INDEX vms_status ON vms(status);`,
];
