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
  `CREATE TABLE snapshots (
     id         TEXT PRIMARY KEY,
     name       TEXT UNIQUE,
     vm_id      TEXT NOT NULL,
     backend    TEXT NOT NULL,
     config     TEXT NOT NULL,
     boot       TEXT NOT NULL,
     accel      TEXT NOT NULL,
     dir        TEXT NOT NULL,
     mem_file   TEXT NOT NULL,
     disk_file  TEXT NOT NULL,
     mem_bytes  INTEGER NOT NULL,
     size_bytes INTEGER NOT NULL,
     parent_id  TEXT,
     created_at TEXT NOT NULL
   );
   ALTER TABLE vms ADD COLUMN snapshot_id TEXT;`,
  `CREATE TABLE ops (
     id         INTEGER PRIMARY KEY AUTOINCREMENT,
     kind       TEXT NOT NULL,
     vm_id      TEXT,
     path       TEXT,
     data       TEXT NOT NULL DEFAULT '{}',
     pid        INTEGER NOT NULL,
     pid_start  TEXT NOT NULL,
     started_at TEXT NOT NULL
   );`,
  `CREATE TABLE net_leases (
     idx        INTEGER PRIMARY KEY,
     vm_id      TEXT NOT NULL UNIQUE,
     tap        TEXT NOT NULL,
     created_at TEXT NOT NULL
   );
   CREATE TABLE vm_net (
     vm_id TEXT PRIMARY KEY,
     info  TEXT NOT NULL
   );
   CREATE TABLE ports (
     vm_id      TEXT NOT NULL,
     guest_port INTEGER NOT NULL,
     host       TEXT NOT NULL,
     host_port  INTEGER NOT NULL,
     pid        INTEGER,
     pid_start  TEXT,
     created_at TEXT NOT NULL,
     PRIMARY KEY (host, host_port)
   );`,
  // a snapshot made for one command (fork, pack): its memory goes when the command ends, its disk layer with its
  // last user (sandbox/snapshots.ts collectTemporary)
  `ALTER TABLE snapshots ADD COLUMN temporary INTEGER NOT NULL DEFAULT 0;`,
  // a status for VMs that died without being asked (SQLite changes a CHECK only by copying the table)
  `CREATE TABLE vms_next (
     id          TEXT PRIMARY KEY,
     name        TEXT UNIQUE,
     backend     TEXT NOT NULL,
     status      TEXT NOT NULL CHECK (status IN ('created', 'running', 'paused', 'stopped', 'crashed', 'error')),
     config      TEXT NOT NULL,
     handle      TEXT,
     disk_path   TEXT,
     disk_format TEXT,
     vm_dir      TEXT NOT NULL,
     error       TEXT,
     created_at  TEXT NOT NULL,
     updated_at  TEXT NOT NULL,
     snapshot_id TEXT
   );
   INSERT INTO vms_next (id, name, backend, status, config, handle, disk_path, disk_format, vm_dir, error, created_at,
                         updated_at, snapshot_id)
     SELECT id, name, backend, status, config, handle, disk_path, disk_format, vm_dir, error, created_at, updated_at,
            snapshot_id FROM vms;
   DROP TABLE vms;
   ALTER TABLE vms_next RENAME TO vms;
   CREATE INDEX vms_status ON vms(status);`,
];
