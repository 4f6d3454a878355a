//! Partition upkeep vs pg_partman: premake 24 monthly partitions (and the 12 past months partman
//! also makes at setup) and drop the 12 partitions older than a year, on identical tables.

use std::time::{Duration, Instant};

use diesel_async::SimpleAsyncConnection;
use strata_client::partitions::PartitionInterval;
use strata_tests::{PgCluster, TestServer};

/// A monthly-partitioned table with 12 partitions 13–24 months old holding `rows` rows.
fn table_sql(name: &str, rows: u64) -> String {
    format!(
        "CREATE TABLE {name} (id bigint NOT NULL, at timestamptz NOT NULL, body text) PARTITION BY RANGE (at);
         CREATE INDEX ON {name} (at);
         DO $$ DECLARE m date; BEGIN
           FOR i IN 13..24 LOOP
             m := (date_trunc('month', now() AT TIME ZONE 'UTC') - make_interval(months => i))::date;
             EXECUTE format('CREATE TABLE %I PARTITION OF {name} FOR VALUES FROM (%L) TO (%L)',
                            '{name}_p' || to_char(m, 'YYYY_MM'), m::text || ' 00:00:00+00',
                            (m + interval '1 month')::date::text || ' 00:00:00+00');
           END LOOP; END $$;
         INSERT INTO {name} SELECT i, date_trunc('month', now(), 'UTC') - make_interval(months => 12)
                                      - make_interval(secs => i * (31536000 / {rows})), repeat('x', 200)
           FROM generate_series(1, {rows}) i;"
    )
}

/// Runs the partition benchmark `rounds` times on fresh tables and prints the medians.
pub(crate) async fn run(rounds: usize, rows: u64) -> anyhow::Result<()> {
    println!("starting PostgreSQL …");
    let cluster = tokio::task::spawn_blocking(PgCluster::start).await??;
    let db = cluster.create_database("bench_parts").await?;
    cluster.stop_replica()?;
    let mut c = cluster.connect(&db).await?;
    c.batch_execute("CREATE SCHEMA partman; CREATE EXTENSION pg_partman SCHEMA partman;").await.map_err(|e| {
        anyhow::anyhow!("pg_partman is needed for the baseline (Debian: apt-get install postgresql-15-partman): {e}")
    })?;
    let dir = tempfile::tempdir()?;
    let server =
        TestServer::start(strata_tests::server::test_config(cluster.primary_url(&db), vec![], dir.path())).await?;
    let client = server.client().await;
    let (mut strata, mut partman) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let (s, p) = (format!("t_strata_{round}"), format!("t_partman_{round}"));
        c.batch_execute(&table_sql(&s, rows)).await?;
        c.batch_execute(&table_sql(&p, rows)).await?;
        c.batch_execute(&format!("VACUUM ANALYZE {s}; VACUUM ANALYZE {p};").replace("; ", ";")).await.ok();

        // Alternate which goes first so cache warmth favours neither.
        let measure_strata = async || -> anyhow::Result<Duration> {
            let t = Instant::now();
            let (created, _) = client.ensure_partitions("public", &s, PartitionInterval::Monthly, 24, 12).await?;
            let dropped = client.drop_partitions("public", &s, Duration::from_secs(365 * 86_400), false).await?;
            let took = t.elapsed();
            anyhow::ensure!(
                created.len() == 37 && dropped.len() == 12,
                "strata made {} and dropped {}",
                created.len(),
                dropped.len()
            );
            Ok(took)
        };
        let partman_sql = format!(
            "SELECT partman.create_parent(p_parent_table := 'public.{p}', p_control := 'at', p_type := 'native',
                                          p_interval := 'monthly', p_premake := 24);
             UPDATE partman.part_config SET retention = '12 months', retention_keep_table = false
              WHERE parent_table = 'public.{p}';"
        );
        let mut measure_partman = async || -> anyhow::Result<Duration> {
            let t = Instant::now();
            c.batch_execute(&partman_sql).await?;
            c.batch_execute("CALL partman.run_maintenance_proc()").await?;
            Ok(t.elapsed())
        };
        if round % 2 == 0 {
            strata.push(measure_strata().await?);
            partman.push(measure_partman().await?);
        } else {
            partman.push(measure_partman().await?);
            strata.push(measure_strata().await?);
        }
        println!("round {round}: strata {:.1} ms, pg_partman {:.1} ms", ms(strata[round]), ms(partman[round]));
    }
    strata.sort();
    partman.sort();
    let (a, b) = (strata[rounds / 2], partman[rounds / 2]);
    let ratio = a.as_secs_f64() / b.as_secs_f64();
    println!("median: strata {:.1} ms, pg_partman {:.1} ms", ms(a), ms(b));
    println!("ratio strata / pg_partman: {ratio:.2} (target ≤ 1.00) {}", if ratio <= 1.0 { "PASS" } else { "FAIL" });
    server.stop().await?;
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
