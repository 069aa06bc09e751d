//! The small version of the benchmark (`cargo bench --bench import` is the full one): a 20 MiB
//! upload through the real binary, asserting the memory bound and printing the ratio to the
//! database's own loader. Timing is only printed, never asserted: `cargo test` builds the
//! binary without optimisations, and CI machines are noisy.

use bulk_import::proto::ImportStatus;

use crate::helpers::*;
use crate::support;

/// The peak RSS the server may reach during a 200 MiB upload (issue 5's bound); a 20 MiB one
/// must stay under it as well.
const MAX_PEAK_RSS: u64 = 128 * 1024 * 1024;

backend_tests! {
    async fn a_20_mib_upload_stays_under_the_memory_bound(backend) {
        let file = support::users_file(20, 2);
        let rows = support::data_rows(&file);
        let database = TestDatabase::new(backend).await;
        let server = support::Server::start_this(&database.url).await;
        let (import, wall) = support::upload(server.channel.clone(), ACCOUNT, &file).await;
        let peak = server.peak_rss();
        server.stop();

        assert_eq!(ImportStatus::try_from(import.status), Ok(ImportStatus::CompletedSuccess));
        assert_eq!(import.rows_imported as u64, rows);
        assert!(peak > 0, "the peak RSS was read from /proc");
        let mb = support::mib(import.bytes_received as u64);
        println!(
            "{backend:?}: 20 MiB upload (unoptimised test build): {:.2} s, {:.1} MB/s, peak RSS \
             {:.1} MiB (bound {:.0} MiB)",
            wall.as_secs_f64(),
            mb / wall.as_secs_f64(),
            support::mib(peak),
            support::mib(MAX_PEAK_RSS)
        );
        let tool = match backend {
            Backend::Sqlite => support::sqlite3_import(&file).map(|t| ("sqlite3 .import", t)),
            Backend::Postgres => {
                let copy_into = TestDatabase::new(Backend::Postgres).await;
                support::psql_copy_into(&copy_into.url, &file).map(|t| ("psql \\copy", t))
            }
        };
        match tool {
            Some((name, time)) => println!(
                "{backend:?}: {name} {:.2} s, ratio service/tool {:.2} (see cargo bench for \
                 release figures)",
                time.as_secs_f64(),
                wall.as_secs_f64() / time.as_secs_f64()
            ),
            None => println!("{backend:?}: the database's own loader is not installed: no ratio"),
        }
        assert!(
            peak <= MAX_PEAK_RSS,
            "peak RSS {:.1} MiB is over the {:.0} MiB bound",
            support::mib(peak),
            support::mib(MAX_PEAK_RSS)
        );
    }
}
