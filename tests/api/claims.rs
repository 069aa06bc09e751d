//! The values a planned import's rows took in its file (its file keys) live in a table of the
//! import's own while it runs (`import_claims_{key}`), and the table goes with its ending; the
//! rows of earlier versions' shared table are moved into such tables at start, and an import's
//! table of the version before (`import_file_keys_{key}`, keyed by address) by its first batch.

use bulk_import::domain::{AccountId, Filename, ImportId, ImportType, NewImport};
use bulk_import::proto;
use bulk_import::store::{self, OpenOptions};

use crate::helpers::*;
use crate::resume::{finish_of, send, until};
use crate::resume_planned::first;

/// Runs `sql` (one value per row, as text) on the database at `url`.
pub(crate) async fn texts(backend: Backend, url: &str, sql: &str) -> Vec<String> {
    match backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(url).await.unwrap();
            let rows = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
                .fetch_all(&pool)
                .await
                .unwrap();
            pool.close().await;
            rows
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            let rows = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
                .fetch_all(&pool)
                .await
                .unwrap();
            pool.close().await;
            rows
        }
    }
}

/// The file key tables of the database, by name: this version's and the version before's.
async fn claim_tables(backend: Backend, url: &str) -> Vec<String> {
    let sql = match backend {
        Backend::Sqlite => {
            "SELECT name FROM sqlite_schema WHERE type = 'table' \
             AND (name LIKE 'import\\_claims\\_%' ESCAPE '\\' \
                  OR name LIKE 'import\\_file\\_keys\\_%' ESCAPE '\\') ORDER BY name"
        }
        Backend::Postgres => {
            "SELECT tablename::text FROM pg_tables \
             WHERE tablename LIKE 'import\\_claims\\_%' ESCAPE '\\' \
                OR tablename LIKE 'import\\_file\\_keys\\_%' ESCAPE '\\' ORDER BY tablename"
        }
    };
    texts(backend, url, sql).await
}

/// What the versions before made of a waiting import's file keys table `table`: a table keyed
/// by address, `import_file_keys_{key}`, with the same rows, unlogged or not (PostgreSQL), with
/// its sentinel or not. This version's table goes. The earlier table's name.
async fn as_the_version_before(
    app: &TestApp,
    backend: Backend,
    table: &str,
    unlogged: bool,
    sentinel: bool,
) -> String {
    let earlier = table.replace("import_claims_", "import_file_keys_");
    let unlogged = if unlogged { "UNLOGGED " } else { "" };
    app.execute(&format!(
        "CREATE {unlogged}TABLE {earlier} (email TEXT NOT NULL PRIMARY KEY, external_id TEXT, \
         source_row BIGINT NOT NULL, released_external_id TEXT)"
    ))
    .await;
    app.execute(&format!(
        "CREATE UNIQUE INDEX {earlier}_external_id ON {earlier} (external_id) \
         WHERE external_id IS NOT NULL"
    ))
    .await;
    let keep = if sentinel { "" } else { " WHERE email <> ''" };
    app.execute(&format!(
        "INSERT INTO {earlier} SELECT email, external_id, source_row, released_external_id \
         FROM {table}{keep}"
    ))
    .await;
    app.execute(&format!("DROP TABLE {table}")).await;
    assert_eq!(
        claim_tables(backend, &app.database_url).await,
        std::slice::from_ref(&earlier)
    );
    earlier
}

backend_tests! {
    async fn a_planned_import_s_file_keys_live_in_its_own_table_until_it_ends(backend) {
        let app = spawn_app_with(backend, |a| a.batch_rows = Some(20)).await;
        let (file, _) = generate(&["--rows", "300", "--dup-rate", "0.05", "--seed", "43"]);
        // Half the file, then the client goes: the import waits, its file keys kept (one per
        // valid row before the cut, a dry run inserting no user, and the sentinel).
        waiting_dry_run(&app, backend, "r", &file).await;
        // The rest: the import completes, and its table goes.
        let done = resume_dry_run(&app, "r", &file).await.unwrap();
        assert_eq!(done.rows_imported, done.rows_processed - done.rows_failed);
        assert_eq!(claim_tables(backend, &app.database_url).await, Vec::<String>::new());
        let mut client = app.client.clone();
        // A SKIP import that fails a batch ends too: cancelled while it waits, its table goes.
        let skip = |m: &mut proto::ImportMetadata| {
            m.on_conflict = proto::ConflictPolicy::Skip as i32
        };
        let mut messages = vec![first(ACCOUNT, "s", 0, &skip)];
        messages.extend(file[..file.len() / 2].chunks(2000).map(chunk));
        send(&mut client, messages).await.unwrap_err();
        until(&mut client, ACCOUNT, "s", std::time::Duration::from_secs(30), |i| {
            i.resume_deadline.is_some()
        })
        .await;
        assert_eq!(claim_tables(backend, &app.database_url).await.len(), 1);
        client
            .cancel_import(proto::CancelImportRequest {
                account_id: ACCOUNT.into(),
                import_id: "s".into(),
            })
            .await
            .unwrap();
        assert_eq!(claim_tables(backend, &app.database_url).await, Vec::<String>::new());
    }

    async fn a_table_of_an_earlier_version_without_a_sentinel_keeps_its_rows(backend) {
        let app = spawn_app_with(backend, |a| a.batch_rows = Some(20)).await;
        let (file, stats) = generate(&["--rows", "300", "--dup-rate", "0.1", "--seed", "45"]);
        let table = waiting_dry_run(&app, backend, "earlier", &file).await;
        // What the versions before the unlogged tables made: a logged table keyed by address,
        // without a sentinel.
        as_the_version_before(&app, backend, &table, false, false).await;
        let done = resume_dry_run(&app, "earlier", &file).await.unwrap();
        // Its rows still judge the rows after the cut: every duplicate is found.
        assert_eq!(status(&done), proto::ImportStatus::CompletedPartial, "{done:?}");
        assert_eq!(done.rows_processed, stats.rows);
        assert_eq!(done.rows_failed, stats.rows - stats.valid);
        assert!(stats.duplicates > 0);
        assert_eq!(claim_tables(backend, &app.database_url).await, Vec::<String>::new());
    }

    async fn a_table_keyed_by_address_moves_into_generations_with_its_rows(backend) {
        let app = spawn_app_with(backend, |a| a.batch_rows = Some(20)).await;
        let (file, stats) = generate(&["--rows", "300", "--dup-rate", "0.1", "--seed", "46"]);
        let table = waiting_dry_run(&app, backend, "before", &file).await;
        let kept = texts(backend, &app.database_url, &format!(
            "SELECT email FROM {table} ORDER BY email")).await;
        // The version just before: unlogged on PostgreSQL, with its sentinel.
        as_the_version_before(&app, backend, &table, backend == Backend::Postgres, true).await;
        // Another import's batch takes nothing over: the table is the waiting import's.
        app.upload_with(ACCOUNT, "other", &file, 4096, dry).await.unwrap();
        assert_eq!(claim_tables(backend, &app.database_url).await.len(), 1);
        // The resume's first batch moves the rows (sentinel included) before its lookups.
        let mut client = app.client.clone();
        let offset = app.get(ACCOUNT, "before").await.unwrap().committed_bytes as usize;
        let mut messages = vec![first(ACCOUNT, "before", offset as u64, &dry)];
        messages.extend(file[offset..].chunks(2000).map(chunk));
        let sent = send(&mut client, messages).await;
        assert!(sent.is_err(), "no finish message: the import waits again");
        until(&mut client, ACCOUNT, "before", std::time::Duration::from_secs(30), |i| {
            i.resume_deadline.is_some()
        })
        .await;
        assert_eq!(
            claim_tables(backend, &app.database_url).await,
            std::slice::from_ref(&table)
        );
        let moved = texts(backend, &app.database_url, &format!(
            "SELECT email FROM {table} ORDER BY email"
        ))
        .await;
        assert!(kept.iter().all(|email| moved.contains(email)), "{kept:?} {moved:?}");
        let done = resume_dry_run(&app, "before", &file).await.unwrap();
        assert_eq!(status(&done), proto::ImportStatus::CompletedPartial, "{done:?}");
        assert_eq!(done.rows_processed, stats.rows);
        assert_eq!(done.rows_failed, stats.rows - stats.valid);
        assert_eq!(claim_tables(backend, &app.database_url).await, Vec::<String>::new());
    }

    async fn a_file_longer_than_a_generation_finds_its_duplicates_in_every_one(backend) {
        // Batches of 5,000 rows: a row's duplicate in a later batch is found in the table.
        let app = spawn_app_with(backend, |a| a.batch_rows = Some(5000)).await;
        // 140,000 rows: two generations of file keys (`claims::generation`: rows from 131,072
        // on are the second), and duplicates of rows of the first in the second (the
        // generator repeats addresses of its first 10,000 rows).
        let (mut file, stats) =
            generate(&["--rows", "140000", "--dup-rate", "0.002", "--seed", "48"]);
        let lines: Vec<&str> = std::str::from_utf8(&file).unwrap().lines().collect();
        // Two rows more at the end. An external id of the first row, found in generation 0;
        // the address of row 135,001 (the file's line), in capitals, found in generation 1
        // from a later batch. The generator's rows are all valid but for its duplicates.
        let first_id = lines[1].rsplit(',').next().unwrap().to_owned();
        let second = lines[135_000].split(',').next().unwrap().to_uppercase();
        assert!(!second.is_empty());
        let more = format!(
            "someone.new@example.org,Some,One,member,Tester,{first_id}\n\
             {second},Other,One,member,Tester,\n"
        );
        file.extend_from_slice(more.as_bytes());
        let (rows, failed) = (stats.rows + 2, stats.rows - stats.valid + 2);
        assert!(stats.duplicates > 100, "{stats:?}");
        let dry = app.upload_with(ACCOUNT, "dry", &file, 64 * 1024, dry).await.unwrap();
        assert_eq!(
            (dry.rows_processed, dry.rows_imported, dry.rows_failed),
            (rows, rows - failed, failed),
            "{dry:?}"
        );
        let plain = app.upload(ACCOUNT, "plain", &file, 64 * 1024).await.unwrap();
        assert_eq!(
            (plain.rows_processed, plain.rows_imported, plain.rows_failed),
            (rows, rows - failed, failed)
        );
        let skip = app
            .upload_with(ACCOUNT, "skip", &file, 64 * 1024, |m| {
                m.on_conflict = proto::ConflictPolicy::Skip as i32
            })
            .await
            .unwrap();
        assert_eq!(
            (skip.rows_processed, skip.rows_skipped, skip.rows_failed),
            (rows, rows - failed, failed),
            "{skip:?}"
        );
        for import in ["dry", "skip"] {
            let errors = app.errors(ACCOUNT, import).await;
            let at = |row: i64, column: &str| {
                errors
                    .iter()
                    .find(|e| e.row_number == row && e.column == column)
                    .map(|e| e.code.clone())
            };
            assert_eq!(
                at(rows, "external_id").as_deref(),
                Some("DUPLICATE_IN_FILE"),
                "{import}"
            );
            assert_eq!(at(rows + 1, "email").as_deref(), Some("DUPLICATE_IN_FILE"), "{import}");
        }
    }

    async fn keys_past_the_recorded_rows_go_when_the_import_resumes(backend) {
        // What a batch's keys written beside its transaction leave when that transaction does
        // not commit (the server dies between them, `postgres::beside`): keys of rows past the
        // import's recorded ones. The resume removes them, as it does their users; kept, they
        // would make those rows duplicates of themselves.
        let app = spawn_app_with(backend, |a| a.batch_rows = Some(20)).await;
        let (file, stats) = generate(&["--rows", "300", "--dup-rate", "0.05", "--seed", "49"]);
        let table = waiting_dry_run(&app, backend, "left", &file).await;
        let waiting = app.get(ACCOUNT, "left").await.unwrap();
        // The header and the rows processed are the recorded spreadsheet rows; the next 20
        // lines of the file are rows the resume writes again.
        let recorded = waiting.rows_processed as usize + 1;
        let text = std::str::from_utf8(&file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let keys = || async {
            texts(backend, &app.database_url, &format!("SELECT email FROM {table}"))
                .await
                .len()
        };
        let before = keys().await;
        for (line, row) in lines[recorded..recorded + 20].iter().zip(recorded + 1..) {
            let email = line.split(',').next().unwrap().to_lowercase();
            let id = line.rsplit(',').next().unwrap();
            app.execute(&format!(
                "INSERT INTO {table} (generation, email, external_id, source_row) \
                 VALUES (0, '{email}', '{id}', {row}) ON CONFLICT DO NOTHING"
            ))
            .await;
        }
        let left = keys().await - before;
        assert!(left >= 15, "the rows after the cut are new addresses: {left} keys left");
        let done = resume_dry_run(&app, "left", &file).await.unwrap();
        assert_eq!(status(&done), proto::ImportStatus::CompletedPartial, "{done:?}");
        assert_eq!(
            (done.rows_processed, done.rows_failed),
            (stats.rows, stats.rows - stats.valid),
            "{done:?}"
        );
        assert_eq!(claim_tables(backend, &app.database_url).await, Vec::<String>::new());
    }

    async fn the_shared_file_keys_of_earlier_versions_move_to_their_import_s_table(backend) {
        let database = TestDatabase::new(backend).await;
        let store = store::open(&database.url, OpenOptions::default()).await.unwrap();
        let import = store
            .create_import(&NewImport {
                account_id: AccountId::parse(ACCOUNT).unwrap(),
                import_id: ImportId::parse("waiting").unwrap(),
                kind: ImportType::Users,
                filename: Filename::parse("users.csv").unwrap(),
                created_by: String::new(),
                validate_only: true,
                on_conflict: Default::default(),
                retry_of: None,
                invitations: Default::default(),
                resumable: true,
                resume_offset: 0,
            })
            .await
            .unwrap();
        store.close().await;
        drop(store);
        // What an earlier version left of an import that waited for its client's resume.
        let legacy = format!(
            "INSERT INTO import_file_keys (import_key, email, external_id, source_row, \
             released_external_id) VALUES ({k}, 'a@example.com', 'E1', 2, NULL), \
             ({k}, 'b@example.com', NULL, 3, 'E9') RETURNING email",
            k = import.key
        );
        assert_eq!(texts(backend, &database.url, &legacy).await.len(), 2);

        let store = store::open(&database.url, OpenOptions::default()).await.unwrap();
        let table = format!("import_claims_{}", import.key);
        assert_eq!(claim_tables(backend, &database.url).await, vec![table.clone()]);
        let moved = texts(backend, &database.url, &format!(
            "SELECT email || '|' || coalesce(external_id, '') || '|' || \
             CAST(source_row AS TEXT) || '|' || coalesce(released_external_id, '') \
             FROM {table} ORDER BY email"
        ))
        .await;
        // The table's sentinel first (`claims::SENTINEL`), then the keys.
        assert_eq!(moved, ["||0|", "a@example.com|E1|2|", "b@example.com||3|E9"]);
        let left = texts(backend, &database.url,
            "SELECT email FROM import_file_keys").await;
        assert_eq!(left, Vec::<String>::new());
        store.close().await;
    }
}

/// PostgreSQL's crash recovery empties an unlogged table: here emptied as it does. The resume
/// that meets the table without its sentinel fails the import, with words that say why and
/// what to do (tried for real with `pg_ctlcluster 15 main stop -m immediate`: see the README).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "TEST_DATABASE_URL is not set (.ci/run sets it)"
)]
async fn a_resume_whose_file_keys_were_lost_fails_the_import_and_says_why() {
    let backend = Backend::Postgres;
    let app = spawn_app_with(backend, |a| a.batch_rows = Some(20)).await;
    let (file, _) = generate(&["--rows", "300", "--dup-rate", "0.05", "--seed", "44"]);
    let table = waiting_dry_run(&app, backend, "lost", &file).await;
    app.execute(&format!("TRUNCATE {table}")).await;
    let refused = resume_dry_run(&app, "lost", &file).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert_eq!(
        refused.message(),
        "the database lost what it kept of this import's earlier rows (PostgreSQL recovered \
         from a crash); upload the whole file again as a new import"
    );
    let ended = ended_without_tables(&app, backend, "lost").await;
    assert_eq!(
        ended.error_message,
        "the import failed because the database lost what it kept of this import's earlier \
         rows (PostgreSQL recovered from a crash), so nothing was imported; upload the whole \
         file again"
    );
}

/// The same for a table of the version before (unlogged, keyed by address) that lost its rows:
/// the first batch that finds it moves nothing, and the resume fails the import the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "TEST_DATABASE_URL is not set (.ci/run sets it)"
)]
async fn a_table_of_the_version_before_that_lost_its_rows_fails_the_import() {
    let backend = Backend::Postgres;
    let app = spawn_app_with(backend, |a| a.batch_rows = Some(20)).await;
    let (file, _) = generate(&["--rows", "300", "--dup-rate", "0.05", "--seed", "47"]);
    let table = waiting_dry_run(&app, backend, "lost", &file).await;
    let earlier = as_the_version_before(&app, backend, &table, true, true).await;
    app.execute(&format!("TRUNCATE {earlier}")).await;
    let refused = resume_dry_run(&app, "lost", &file).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    ended_without_tables(&app, backend, "lost").await;
}

/// Waits for import `id` to end, which it must in ERROR_UNKNOWN with no file key table left;
/// the import as it ended.
async fn ended_without_tables(app: &TestApp, backend: Backend, id: &str) -> proto::Import {
    let ended = until(
        &mut app.client.clone(),
        ACCOUNT,
        id,
        std::time::Duration::from_secs(30),
        |i| i.status != proto::ImportStatus::Processing as i32,
    )
    .await;
    assert_eq!(
        status(&ended),
        proto::ImportStatus::ErrorUnknown,
        "{ended:?}"
    );
    assert_eq!(
        claim_tables(backend, &app.database_url).await,
        Vec::<String>::new()
    );
    ended
}

/// A dry run's metadata.
fn dry(m: &mut proto::ImportMetadata) {
    m.validate_only = true;
}

/// A resumable dry run of the first half of `file` whose client goes: the import waits. Its
/// file keys table, which holds one key per valid row before the cut and the sentinel.
async fn waiting_dry_run(app: &TestApp, backend: Backend, id: &str, file: &[u8]) -> String {
    let mut client = app.client.clone();
    let mut messages = vec![first(ACCOUNT, id, 0, &dry)];
    messages.extend(file[..file.len() / 2].chunks(2000).map(chunk));
    send(&mut client, messages).await.unwrap_err();
    let waiting = until(
        &mut client,
        ACCOUNT,
        id,
        std::time::Duration::from_secs(30),
        |i| i.resume_deadline.is_some(),
    )
    .await;
    let tables = claim_tables(backend, &app.database_url).await;
    assert_eq!(tables.len(), 1, "{tables:?}");
    let keys = texts(
        backend,
        &app.database_url,
        &format!("SELECT email FROM {}", tables[0]),
    )
    .await;
    assert_eq!(
        keys.len() as i64,
        waiting.rows_processed - waiting.rows_failed + 1
    );
    tables[0].clone()
}

/// The rest of `file`, from where the waiting dry run `id` resumes; the server's answer.
async fn resume_dry_run(
    app: &TestApp,
    id: &str,
    file: &[u8],
) -> Result<proto::Import, tonic::Status> {
    let mut client = app.client.clone();
    let offset = app.get(ACCOUNT, id).await.unwrap().committed_bytes as usize;
    let mut messages = vec![first(ACCOUNT, id, offset as u64, &dry)];
    messages.extend(file[offset..].chunks(2000).map(chunk));
    messages.push(finish_of(file));
    send(&mut client, messages).await
}

/// PostgreSQL: a planned batch whose file keys were written partly beside its transaction, by a
/// second connection that committed (`postgres::beside`), and whose own transaction then lost
/// a race and ran again: the second run removes the keys the first left beside before its
/// lookups, and judges its rows as the first time. The race is a serialization failure raised
/// once by a trigger on the batch's record, which also notes how many transactions had written
/// the batch's keys by then (a sequence: what a failed transaction does to one stays).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "TEST_DATABASE_URL is not set (.ci/run sets it)"
)]
async fn a_batch_run_again_after_its_keys_beside_committed_judges_its_rows_afresh() {
    // Every batch's keys split, whatever its size: the reader may cut a batch short.
    let app = spawn_app_with(Backend::Postgres, |a| {
        a.batch_rows = Some(5000);
        a.file_keys_beside_from = 1;
    })
    .await;
    for sql in [
        "CREATE SEQUENCE beside_attempts",
        "CREATE SEQUENCE beside_writers",
        "CREATE FUNCTION fail_second_batch_once() RETURNS trigger LANGUAGE plpgsql AS $$ \
         DECLARE writers bigint; \
         BEGIN \
           IF NEW.import_id = 'again' AND OLD.rows_processed > 0 \
              AND NEW.rows_processed > OLD.rows_processed \
              AND nextval('beside_attempts') = 1 THEN \
             EXECUTE format('SELECT count(DISTINCT xmin::text) FROM import_claims_%s \
                             WHERE source_row > %s', NEW.import_key, OLD.rows_processed + 1) \
               INTO writers; \
             PERFORM setval('beside_writers', writers); \
             RAISE EXCEPTION 'a race lost, for the test' USING ERRCODE = '40001'; \
           END IF; \
           RETURN NEW; \
         END $$",
        "CREATE TRIGGER fail_second_batch_once BEFORE UPDATE ON imports \
         FOR EACH ROW EXECUTE FUNCTION fail_second_batch_once()",
    ] {
        app.execute(sql).await;
    }
    // Three batches of up to 5,000 rows, with duplicates of earlier batches' rows in later ones.
    let (file, stats) = generate(&["--rows", "15000", "--dup-rate", "0.01", "--seed", "50"]);
    assert!(stats.duplicates > 50, "{stats:?}");
    let again = app
        .upload_with(ACCOUNT, "again", &file, 64 * 1024, dry)
        .await
        .unwrap();
    let noted = |sql: &'static str| {
        let url = app.database_url.clone();
        async move { texts(Backend::Postgres, &url, sql).await }
    };
    // The second batch failed once, with its keys written by two transactions, then ran again
    // (and so did every batch after it: one number each).
    let attempts = noted(
        "SELECT coalesce(CASE WHEN is_called THEN last_value END, 0)::text FROM beside_attempts",
    )
    .await;
    assert!(
        attempts[0].parse::<i64>().unwrap() >= 2,
        "the second batch ran twice: {attempts:?}"
    );
    assert_eq!(
        noted(
            "SELECT coalesce(CASE WHEN is_called THEN last_value END, 0)::text \
             FROM beside_writers"
        )
        .await,
        ["2"],
        "the keys of the failed attempt were written beside it"
    );
    assert_eq!(
        status(&again),
        proto::ImportStatus::CompletedPartial,
        "{again:?}"
    );
    assert_eq!(
        (again.rows_processed, again.rows_imported, again.rows_failed),
        (stats.rows, stats.valid, stats.rows - stats.valid),
        "{again:?}"
    );
    // The same row errors as a dry run with no failure.
    let plain = app
        .upload_with(ACCOUNT, "plain", &file, 64 * 1024, dry)
        .await
        .unwrap();
    assert_eq!(
        codes(&app.errors(ACCOUNT, "again").await),
        codes(&app.errors(ACCOUNT, "plain").await)
    );
    assert_eq!(plain.rows_failed, again.rows_failed);
    assert_eq!(
        claim_tables(Backend::Postgres, &app.database_url).await,
        Vec::<String>::new()
    );
}
