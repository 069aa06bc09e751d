#!/usr/bin/env python3
# Vendored from ../shared/bench/gen_users_csv.py (the team tool) so that a clone alone can
# run the tests; tests prefer the shared copy when it sits beside the repository.
"""Deterministic generator of Users import CSV files, for benchmarks and tests.

Columns (the Users template): email,first_name,last_name,role,job_title,external_id

  gen_users_csv.py --size-mb 200 > users.csv          # ~200 MB, all rows valid
  gen_users_csv.py --rows 100000 --invalid-rate 0.01 --dup-rate 0.005 > mixed.csv
  gen_users_csv.py --rows 10 --seed 7 --crlf --bom > excel.csv
  gen_users_csv.py --size-mb 200 --start 10000000 > more.csv  # other users than the first file
  gen_users_csv.py --size-mb 200 --changed-rate 0.05 --new-rate 0.05 > resync.csv
      # the same users as the first line's file, 5% with another first name, 5% replaced by new users:
      # a re-sync of an HR export, for UPDATE and SKIP imports

Invalid rows are of a few known kinds (bad email, unknown role, over-long name, missing
email); duplicates repeat an earlier email with different case. With --stats the counts
of valid, invalid and duplicate rows are written to stderr as one JSON line, so a test
can assert the exact figures an import must report.
"""
import argparse, json, random, sys

FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Dennis",
         "Margaret", "Linus", "Guido", "Bjarne", "Radia", "Leslie", "Tony", "Niklaus", "John",
         "Sophie", "Chloé", "José", "Zoë", "Søren", "Łukasz", "Aoife", "Mãe", "Renée", "Yuki"]
LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson",
        "Ritchie", "Hamilton", "Torvalds", "van Rossum", "Stroustrup", "Perlman", "Lamport",
        "Hoare", "Wirth", "McCarthy", "O'Brien", "Müller", "García", "Nguyễn", "Smith, Jr."]
ROLES = ["member", "member", "member", "admin", "viewer", "Member", "ADMIN"]
TITLES = ["Engineer", "Data Scientist", "Product Manager", "Designer", "Support Lead",
          "Head of \"Growth\"", "VP, Sales", "", ""]
DOMAINS = ["example.com", "example.org", "corp.example.net", "mail.example.io"]


def quote(field):
    if any(c in field for c in ',"\r\n'):
        return '"' + field.replace('"', '""') + '"'
    return field


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=0, help="number of data rows")
    ap.add_argument("--size-mb", type=float, default=0, help="stop once the file reaches this size")
    ap.add_argument("--invalid-rate", type=float, default=0.0)
    ap.add_argument("--dup-rate", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--start", type=int, default=0,
                    help="number of the first user: files with ranges that do not overlap hold different users")
    ap.add_argument("--changed-rate", type=float, default=0.0,
                    help="share of valid rows whose first name differs from the same seed's file without it")
    ap.add_argument("--new-rate", type=float, default=0.0,
                    help="share of valid rows replaced by users that the same seed's file does not hold")
    ap.add_argument("--crlf", action="store_true", help="CRLF line endings, as Excel writes")
    ap.add_argument("--bom", action="store_true", help="start with a UTF-8 byte order mark")
    ap.add_argument("--stats", action="store_true", help="print counts as JSON to stderr")
    a = ap.parse_args()
    if not a.rows and not a.size_mb:
        ap.error("give --rows or --size-mb")
    rnd = random.Random(a.seed)
    resync = random.Random(a.seed * 7919 + 1)  # its own stream: the base rows stay as they are
    changed = new = 0
    nl = "\r\n" if a.crlf else "\n"
    out = sys.stdout.buffer
    written = 0
    limit = int(a.size_mb * 1024 * 1024) if a.size_mb else None
    head = ("\ufeff" if a.bom else "") + "email,first_name,last_name,role,job_title,external_id" + nl
    buf = [head]
    written += len(head.encode())
    valid = invalid = dups = 0
    seen = []
    i = 0
    while True:
        if a.rows and i >= a.rows:
            break
        if limit and written >= limit:
            break
        first, last = rnd.choice(FIRST), rnd.choice(LAST)
        local = "".join(ch for ch in f"{first}.{last}".lower() if ch in "abcdefghijklmnopqrstuvwxyz0123456789.")
        local = ".".join(part for part in local.split(".") if part) or "user"
        n = a.start + i
        email = f"{local}.{n}@{rnd.choice(DOMAINS)}"
        role = rnd.choice(ROLES)
        title = rnd.choice(TITLES)
        ext = f"EMP-{n:08d}"
        r = rnd.random()
        kind = "valid"
        if r < a.invalid_rate:
            kind = "invalid"
            bad = rnd.randrange(4)
            if bad == 0:
                email = email.replace("@", " at ")
            elif bad == 1:
                role = "superuser"
            elif bad == 2:
                first = "x" * 300
            else:
                email = ""
        elif r < a.invalid_rate + a.dup_rate and seen:
            kind = "dup"
            email = rnd.choice(seen).upper()
            ext = ""
        elif len(seen) < 10000:
            seen.append(email)
        if kind == "valid" and (a.changed_rate or a.new_rate):
            x = resync.random()
            if x < a.new_rate:
                n2 = a.start + 50_000_000 + i
                email, ext = f"{local}.{n2}@{email.rsplit('@', 1)[1]}", f"EMP-{n2:08d}"
                new += 1
            elif x < a.new_rate + a.changed_rate:
                first = "Re" + first
                changed += 1
        if kind == "valid":
            valid += 1
        elif kind == "invalid":
            invalid += 1
        else:
            dups += 1
        line = ",".join(quote(f) for f in (email, first, last, role, title, ext)) + nl
        buf.append(line)
        written += len(line.encode())
        i += 1
        if len(buf) >= 4096:
            out.write("".join(buf).encode())
            buf.clear()
    out.write("".join(buf).encode())
    out.flush()
    if a.stats:
        stats = {"rows": i, "valid": valid, "invalid": invalid, "duplicates": dups, "bytes": written}
        if a.changed_rate or a.new_rate:
            stats.update(changed=changed, new=new)
        print(json.dumps(stats), file=sys.stderr)


if __name__ == "__main__":
    main()
