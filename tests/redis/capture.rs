//! Change capture from PostgreSQL's log across processes (issue 17): two
//! reference-example processes with `GRAPHEX_CAPTURE=postgres` on one
//! logical cluster and one Redis prefix; one reads the slot, the other
//! stands by. Rows are written as raw SQL, one transaction each, while the
//! reader is killed (SIGKILL, no shutdown): every row reaches the
//! subscribers exactly once and in order, checked by sequence.

use sea_orm::{ConnectionTrait, Database, DatabaseConnection};

use super::*;
use support::logical::Cluster as Postgres;

/// Rows each case writes.
const ROWS: i64 = 300;

/// Two capturing processes: `reader` started first and reading the slot
/// (waited for), `standby` after it.
struct Capturing {
    postgres: Postgres,
    redis: String,
    prefix: String,
    reader: Process,
    standby: Process,
}

impl Capturing {
    async fn start(what: &str) -> Option<Capturing> {
        let redis = redis_url()?;
        let postgres = Postgres::start(what)?;
        let prefix = unique_prefix();
        let reader = Capturing::process(&postgres, &redis, &prefix).await;
        let db = Database::connect(postgres.url()).await.expect("the test's cluster answers");
        wait_for_sql(&db, "the first process reads the slot", "SELECT bool_or(active) FROM pg_replication_slots").await;
        let standby = Capturing::process(&postgres, &redis, &prefix).await;
        Some(Capturing { postgres, redis, prefix, reader, standby })
    }

    async fn process(postgres: &Postgres, redis: &str, prefix: &str) -> Process {
        let capture = [("GRAPHEX_CAPTURE", "postgres"), ("GRAPHEX_CAPTURE_SLOT", "graphex_two_processes")];
        Process::start_with(&postgres.url(), redis, prefix, None, &capture).await
    }
}

/// Polls `query` (one boolean) until it is true.
async fn wait_for_sql(db: &DatabaseConnection, what: &str, query: &str) {
    let deadline = tokio::time::Instant::now() + TIMEOUT * 2;
    loop {
        let statement = sea_orm::Statement::from_string(db.get_database_backend(), query.to_owned());
        let row = db.query_one_raw(statement).await.expect("query runs").expect("a row");
        if row.try_get_by_index::<Option<bool>>(0).expect("a boolean") == Some(true) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes users 1..=ROWS as raw SQL, one transaction each, a few
/// milliseconds apart.
fn write_rows(url: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let db = Database::connect(url).await.expect("the test's cluster answers");
        for id in 1..=ROWS {
            let insert =
                format!("INSERT INTO users (id, username, email, tenant) VALUES ({id}, 'u{id}', 'u{id}@x', 't1')");
            db.execute_unprepared(&insert).await.expect("inserted");
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    })
}

/// The next user change's id (and cursor) on a graphql-transport-ws client.
async fn next_user(client: &mut Client) -> (i64, Json) {
    let message = client.json().await;
    assert_eq!(message["type"], "next", "{message}");
    let change = &message["payload"]["data"]["userChanges"];
    (change["id"].as_i64().unwrap_or_else(|| panic!("an id: {message}")), change["cursor"].clone())
}

/// The reader dies while rows are written; the process standing by takes
/// over from the slot's confirmed position. A subscriber on the survivor
/// gets every row once, in order: rows the dead reader published but had
/// not confirmed come again from PostgreSQL and are recognised by their
/// log position.
pub async fn capture_survives_its_reader_dying_mid_stream() -> Option<()> {
    let mut capturing = Capturing::start("capture across processes").await?;
    let mut client = Client::connected(capturing.standby.http.addr, Proto::Transport, json!({})).await;
    client.start("1", "subscription { userChanges(action: CREATE) { id } }").await;
    // Subscribed before the first row: the survivor's own first change.
    wait_until_subscribed(&capturing.postgres, &mut client).await;
    let writer = write_rows(capturing.postgres.url());
    for expected in 1..=ROWS {
        let (id, _) = next_user(&mut client).await;
        assert_eq!(id, expected, "every row once, in order");
        if id == ROWS / 3 {
            capturing.reader.kill().await;
        }
    }
    writer.await.expect("rows written");
    assert!(client.frame_within(Duration::from_millis(500)).await.is_none(), "nothing after the last row");
    Some(())
}

/// A client of a capturing server keeps its cursor; the server is killed
/// while rows are written and started again; the client resumes on the new
/// process after its last cursor and gets every row once, in order, from
/// the Redis history and then live, whichever process reads the slot.
pub async fn a_client_resumes_across_a_capturing_server_restart() -> Option<()> {
    let mut capturing = Capturing::start("capture across a restart").await?;
    let mut client = Client::connected(capturing.reader.http.addr, Proto::Transport, json!({})).await;
    client.start("1", "subscription { userChanges(action: CREATE) { id cursor } }").await;
    wait_until_subscribed(&capturing.postgres, &mut client).await;
    let writer = write_rows(capturing.postgres.url());
    let mut cursor = Json::Null;
    for expected in 1..=ROWS / 3 {
        let (id, at) = next_user(&mut client).await;
        assert_eq!(id, expected, "every row once, in order");
        cursor = at;
    }
    capturing.reader.kill().await;
    let restarted = Capturing::process(&capturing.postgres, &capturing.redis, &capturing.prefix).await;
    let mut client = Client::connected(restarted.http.addr, Proto::Transport, json!({})).await;
    let query = format!("subscription {{ userChanges(action: CREATE, after: {cursor}) {{ id cursor }} }}");
    client.start("1", &query).await;
    for expected in ROWS / 3 + 1..=ROWS {
        let (id, _) = next_user(&mut client).await;
        assert_eq!(id, expected, "every row once, in order, across the restart");
    }
    writer.await.expect("rows written");
    assert!(client.frame_within(Duration::from_millis(500)).await.is_none(), "nothing after the last row");
    drop(capturing.standby);
    Some(())
}

/// Waits until `client`'s subscription is live: inserts users with
/// negative ids until one reaches it, then drains any late ones.
async fn wait_until_subscribed(postgres: &Postgres, client: &mut Client) {
    let db = Database::connect(postgres.url()).await.expect("the test's cluster answers");
    for probe in 1..=20 {
        let insert =
            format!("INSERT INTO users (id, username, email, tenant) VALUES (-{probe}, 'p{probe}', 'p', 't0')");
        db.execute_unprepared(&insert).await.expect("inserted");
        if client.frame_within(Duration::from_secs(1)).await.is_some() {
            while client.frame_within(Duration::from_millis(300)).await.is_some() {}
            return;
        }
    }
    panic!("the subscription never received a probe row");
}
