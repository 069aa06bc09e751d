#!/usr/bin/env bash
# SQLite's floor for a planned import's file keys (README, "What the unmet targets wait for"):
# the Users file staged in a table, then one transaction per 32,768 rows, with the writer's
# settings, into the users table as it is (since 0018), into a file keys table as
# `store::claims` makes it, and into two such tables in two database files at once (two
# processes, half the rows each, as a second writer would). No CSV parsing, no validation.
# Each process of the last reads every staged row and keeps half: an upper bound.
# Usage: bench/sqlite_keys_two_files.sh [SIZE_MB] (50 by default). Prints seconds per step.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
python3 "$here/gen_users_csv.py" --size-mb "${1:-50}" --seed 1 > users.csv
sqlite3 stage.db ".mode csv" ".import users.csv staging"
rows=$(sqlite3 stage.db "SELECT count(*) FROM staging")
batches=$(( (rows + 32767) / 32768 ))
pragmas="PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA cache_size=-32768;"
each_batch() { # the statement, with FROM and WHERE for batch $i to follow
  for i in $(seq 0 $((batches - 1))); do
    echo "BEGIN; $1 FROM s.staging WHERE rowid > $((i * 32768)) AND rowid <= $(((i + 1) * 32768)) AND $2; COMMIT;"
  done
}
keys() { # database, which rows
  {
    echo "$pragmas"
    echo "CREATE TABLE claims (generation BIGINT NOT NULL, email TEXT NOT NULL, external_id TEXT, source_row BIGINT NOT NULL, released_external_id TEXT, PRIMARY KEY (generation, email)) WITHOUT ROWID;"
    echo "CREATE UNIQUE INDEX claims_external_id ON claims (generation, external_id) WHERE external_id IS NOT NULL;"
    echo "ATTACH 'stage.db' AS s;"
    each_batch "INSERT INTO claims SELECT rowid >> 17, lower(email), nullif(external_id, ''), rowid, NULL" "$2"
  } | sqlite3 "$1" >/dev/null
}
users() {
  {
    echo "$pragmas"
    echo "CREATE TABLE users (user_id INTEGER PRIMARY KEY, account_key INTEGER NOT NULL, email TEXT NOT NULL, first_name TEXT NOT NULL, last_name TEXT NOT NULL, role TEXT NOT NULL, job_title TEXT NOT NULL, external_id TEXT, import_key INTEGER NOT NULL, source_row INTEGER NOT NULL, create_time INTEGER NOT NULL, update_time INTEGER, updated_by INTEGER);"
    echo "CREATE UNIQUE INDEX users_account_email ON users (account_key, email);"
    echo "CREATE UNIQUE INDEX users_account_external_id ON users (account_key, external_id) WHERE external_id IS NOT NULL;"
    echo "ATTACH 'stage.db' AS s;"
    each_batch "INSERT INTO users (account_key, email, first_name, last_name, role, job_title, external_id, import_key, source_row, create_time) SELECT 7, lower(email), first_name, last_name, role, job_title, nullif(external_id, ''), 1, rowid, 0" "true"
  } | sqlite3 "$1" >/dev/null
}
seconds() { echo "$(date +%s.%N) - $1" | bc; }
for round in 1 2 3; do
  rm -f ./*.db-wal ./*.db-shm u.db k.db k0.db k1.db
  start=$(date +%s.%N); users u.db; echo "round $round ($rows rows): users $(seconds "$start") s"
  start=$(date +%s.%N); keys k.db true; echo "round $round: file keys, one file $(seconds "$start") s"
  start=$(date +%s.%N)
  keys k0.db "rowid % 2 = 0" & first=$!
  keys k1.db "rowid % 2 = 1" & second=$!
  wait "$first" "$second"
  echo "round $round: file keys, two files at once $(seconds "$start") s"
done
