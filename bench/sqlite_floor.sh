#!/usr/bin/env bash
# SQLite's floor for the populated-account scenario (README, "Accounts that already hold
# millions"): the bench's three files staged in a table, then one INSERT ... SELECT per file,
# into the loaders' reference table (one unique index on email, "ref"), into the service's users
# table as it was before migration 0018 (unique (account, email) and (account, external id),
# the account's text, "svc"), and into the table as it is since 0018, with the account's
# integer key in place of its text ("int"), with the writer's settings.
# No CSV parsing, no validation, one transaction per file. Prints seconds per file.
# Run `cargo bench --bench import -- --populated-only --backend sqlite` first: it makes the files.
set -euo pipefail
D="$(cd "$(dirname "$0")/.." && pwd)/target/bench-data"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
for f in users-199mb-seed11.csv users-199mb-seed12-from3000000.csv users-199mb-seed13-from6000000.csv; do
  rm -f stage.db; sqlite3 stage.db <<SQL
.mode csv
.import $D/$f staging
SQL
  for schema in ref svc int; do
    if [ $schema = int ]; then
      init="CREATE TABLE IF NOT EXISTS users (user_id INTEGER PRIMARY KEY, account_key INTEGER NOT NULL, email TEXT NOT NULL, first_name TEXT NOT NULL, last_name TEXT NOT NULL, role TEXT NOT NULL, job_title TEXT NOT NULL, external_id TEXT, import_key INTEGER NOT NULL, source_row INTEGER NOT NULL, create_time INTEGER NOT NULL, update_time INTEGER, updated_by INTEGER);
CREATE UNIQUE INDEX IF NOT EXISTS users_account_email ON users (account_key, email);
CREATE UNIQUE INDEX IF NOT EXISTS users_account_external_id ON users (account_key, external_id) WHERE external_id IS NOT NULL;"
      ins="INSERT INTO users (account_key, email, first_name, last_name, role, job_title, external_id, import_key, source_row, create_time) SELECT 7, lower(email), first_name, last_name, role, job_title, nullif(external_id, ''), 1, rowid, 0 FROM s.staging;"
    elif [ $schema = ref ]; then
      init="CREATE TABLE IF NOT EXISTS users (email TEXT, first_name TEXT, last_name TEXT, role TEXT, job_title TEXT, external_id TEXT);
CREATE UNIQUE INDEX IF NOT EXISTS users_email ON users (email COLLATE NOCASE);"
      ins="INSERT INTO users SELECT email, first_name, last_name, role, job_title, external_id FROM s.staging;"
    else
      init="CREATE TABLE IF NOT EXISTS users (user_id INTEGER PRIMARY KEY, account_id TEXT NOT NULL, email TEXT NOT NULL, first_name TEXT NOT NULL, last_name TEXT NOT NULL, role TEXT NOT NULL, job_title TEXT NOT NULL, external_id TEXT, import_key INTEGER NOT NULL, source_row INTEGER NOT NULL, create_time INTEGER NOT NULL, update_time INTEGER, updated_by INTEGER);
CREATE UNIQUE INDEX IF NOT EXISTS users_account_email ON users (account_id, email);
CREATE UNIQUE INDEX IF NOT EXISTS users_account_external_id ON users (account_id, external_id) WHERE external_id IS NOT NULL;"
      ins="INSERT INTO users (account_id, email, first_name, last_name, role, job_title, external_id, import_key, source_row, create_time) SELECT 'bench-account-populated', lower(email), first_name, last_name, role, job_title, nullif(external_id, ''), 1, rowid, 0 FROM s.staging;"
    fi
    start=$(date +%s.%N)
    sqlite3 $schema.db >/dev/null <<SQL
PRAGMA journal_mode=WAL;
PRAGMA synchronous=NORMAL;
PRAGMA cache_size=-32768;
$init
ATTACH 'stage.db' AS s;
$ins
SQL
    end=$(date +%s.%N)
    echo "$f $schema $(echo "$end - $start" | bc)"
  done
done
