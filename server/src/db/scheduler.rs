//! Scheduler persistence: the cluster-wide on/off switch, live instances, jobs and job runs.
//!
//! Exactly-once rests on the database, not on the instances agreeing: claiming an occurrence moves
//! the job's `next_due` forward with a compare-and-set *and* inserts the run in one transaction;
//! a unique index allows one scheduled run per (job, occurrence) and another one running run per
//! job (a job never overlaps itself). A running run carries a lease its instance renews; once the
//! lease has lapsed another instance takes the run over with a compare-and-set on (id, attempt).

use chrono::NaiveDateTime;
use diesel::{OptionalExtension, prelude::*};
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::{Conn, Result, is_unique_violation};
use crate::{
    db_run,
    model::{
        UnknownValue,
        scheduler::{JobKind, JobRunState, Trigger},
    },
};

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    /// Unique name.
    pub name: String,
    /// What it does.
    pub kind: JobKind,
    /// Policy or table, by kind.
    pub target: String,
    /// JSON object of strings.
    pub options: String,
    /// Cron expression.
    pub schedule: String,
    /// IANA time zone.
    pub time_zone: String,
    /// Not paused.
    pub enabled: bool,
    /// 0: none.
    pub timeout_ms: i64,
    /// Created by strata itself.
    pub builtin: bool,
    /// Next unclaimed occurrence (UTC).
    pub next_due: Option<NaiveDateTime>,
    /// Created.
    pub created_at: NaiveDateTime,
    /// Changed.
    pub updated_at: NaiveDateTime,
}

/// A job run as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    /// Id (UUIDv7).
    pub id: String,
    /// Job.
    pub job_name: String,
    /// Occurrence (UTC) or request time.
    pub scheduled_for: NaiveDateTime,
    /// schedule / manual.
    pub run_trigger: Trigger,
    /// State.
    pub state: JobRunState,
    /// Instance running it.
    pub owner: String,
    /// 1, then +1 per takeover.
    pub attempt: i64,
    /// Lease of a running run.
    pub lease_until: Option<NaiveDateTime>,
    /// Started.
    pub started_at: NaiveDateTime,
    /// Ended.
    pub finished_at: Option<NaiveDateTime>,
    /// What it did.
    pub message: String,
    /// Why it failed.
    pub error: Option<String>,
}

// The columns as Diesel reads them. The text columns holding a kind, state or trigger become
// enums in the `TryFrom` below and nowhere else; writes spell them in `job_values!` /
// `run_values!` and in the filters, with `as_str`.

/// `jobs` as read.
#[derive(Queryable)]
struct JobColumns {
    name: String,
    kind: String,
    target: String,
    options: String,
    schedule: String,
    time_zone: String,
    enabled: bool,
    timeout_ms: i64,
    builtin: bool,
    next_due: Option<NaiveDateTime>,
    created_at: NaiveDateTime,
    updated_at: NaiveDateTime,
}

impl TryFrom<JobColumns> for JobRow {
    type Error = UnknownValue;

    fn try_from(c: JobColumns) -> Result<Self, UnknownValue> {
        Ok(Self {
            name: c.name,
            kind: c.kind.parse()?,
            target: c.target,
            options: c.options,
            schedule: c.schedule,
            time_zone: c.time_zone,
            enabled: c.enabled,
            timeout_ms: c.timeout_ms,
            builtin: c.builtin,
            next_due: c.next_due,
            created_at: c.created_at,
            updated_at: c.updated_at,
        })
    }
}

/// `job_runs` as read.
#[derive(Queryable)]
struct RunColumns {
    id: String,
    job_name: String,
    scheduled_for: NaiveDateTime,
    run_trigger: String,
    state: String,
    owner: String,
    attempt: i64,
    lease_until: Option<NaiveDateTime>,
    started_at: NaiveDateTime,
    finished_at: Option<NaiveDateTime>,
    message: String,
    error: Option<String>,
}

impl TryFrom<RunColumns> for RunRow {
    type Error = UnknownValue;

    fn try_from(c: RunColumns) -> Result<Self, UnknownValue> {
        Ok(Self {
            id: c.id,
            job_name: c.job_name,
            scheduled_for: c.scheduled_for,
            run_trigger: c.run_trigger.parse()?,
            state: c.state.parse()?,
            owner: c.owner,
            attempt: c.attempt,
            lease_until: c.lease_until,
            started_at: c.started_at,
            finished_at: c.finished_at,
            message: c.message,
            error: c.error,
        })
    }
}

/// Rows read as `C`, converted (an unknown kind or state fails the read).
fn typed<C, T: TryFrom<C, Error = UnknownValue>>(rows: Vec<C>) -> Result<Vec<T>> {
    Ok(rows.into_iter().map(T::try_from).collect::<Result<_, _>>()?)
}

/// A strata instance running the scheduler loop.
#[derive(Debug, Clone, PartialEq, Queryable)]
pub struct InstanceRow {
    /// `host:pid:random`.
    pub id: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: i64,
    /// Started.
    pub started_at: NaiveDateTime,
    /// Last heartbeat.
    pub last_seen: NaiveDateTime,
}

/// The on/off switch.
#[derive(Debug, Clone, PartialEq, Queryable)]
pub struct StateRow {
    /// Always 1.
    pub id: i64,
    /// Scheduled jobs run.
    pub running: bool,
    /// Who flipped it.
    pub changed_by: String,
    /// When.
    pub changed_at: NaiveDateTime,
}

/// What claiming an occurrence came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This instance runs it.
    Claimed,
    /// Another instance claimed it first, or the job changed meanwhile.
    Gone,
    /// The job's previous run is still running: the occurrence waits.
    Busy,
}

// Column tuples for inserts and updates: the two backends' tables are distinct Diesel types, so
// the values are spelled once here and expanded inside `db_run!` for each.
macro_rules! job_values {
    ($t:ident, $j:expr) => {
        (
            $t::name.eq(&$j.name),
            $t::kind.eq($j.kind.as_str()),
            $t::target.eq(&$j.target),
            $t::options.eq(&$j.options),
            $t::schedule.eq(&$j.schedule),
            $t::time_zone.eq(&$j.time_zone),
            $t::enabled.eq($j.enabled),
            $t::timeout_ms.eq($j.timeout_ms),
            $t::builtin.eq($j.builtin),
            $t::next_due.eq($j.next_due),
            $t::created_at.eq($j.created_at),
            $t::updated_at.eq($j.updated_at),
        )
    };
}

macro_rules! run_values {
    ($t:ident, $r:expr) => {
        (
            $t::id.eq(&$r.id),
            $t::job_name.eq(&$r.job_name),
            $t::scheduled_for.eq($r.scheduled_for),
            $t::run_trigger.eq($r.run_trigger.as_str()),
            $t::state.eq($r.state.as_str()),
            $t::owner.eq(&$r.owner),
            $t::attempt.eq($r.attempt),
            $t::lease_until.eq($r.lease_until),
            $t::started_at.eq($r.started_at),
            $t::finished_at.eq($r.finished_at),
            $t::message.eq(&$r.message),
            $t::error.eq(&$r.error),
        )
    };
}

/// The switch.
pub async fn state(conn: &mut Conn) -> Result<StateRow> {
    Ok(db_run!(conn, {
        use schema::scheduler_state as s;
        s::table.filter(s::id.eq(1i64)).first::<StateRow>(conn).await?
    }))
}

/// Flips the switch; when starting, sets every job's next occurrence (`next_dues`) in the same
/// transaction, so the stopped period is skipped rather than caught up.
pub async fn set_state(
    conn: &mut Conn,
    running: bool,
    by: &str,
    now: NaiveDateTime,
    next_dues: &[(String, Option<NaiveDateTime>)],
) -> Result<()> {
    db_run!(conn, {
        use schema::{jobs as j, scheduler_state as s};
        conn.transaction::<_, diesel::result::Error, _>(async |c| {
            diesel::update(s::table.filter(s::id.eq(1i64)))
                .set((s::running.eq(running), s::changed_by.eq(by), s::changed_at.eq(now)))
                .execute(&mut *c)
                .await?;
            for (name, due) in next_dues {
                diesel::update(j::table.filter(j::name.eq(name))).set(j::next_due.eq(due)).execute(&mut *c).await?;
            }
            Ok(())
        })
        .await?;
    });
    Ok(())
}

/// Records that an instance is alive.
pub async fn heartbeat_instance(conn: &mut Conn, i: &InstanceRow) -> Result<()> {
    db_run!(conn, {
        use schema::scheduler_instances as t;
        diesel::insert_into(t::table)
            .values((
                t::id.eq(&i.id),
                t::host.eq(&i.host),
                t::pid.eq(i.pid),
                t::started_at.eq(i.started_at),
                t::last_seen.eq(i.last_seen),
            ))
            .on_conflict(t::id)
            .do_update()
            .set(t::last_seen.eq(i.last_seen))
            .execute(conn)
            .await?;
    });
    Ok(())
}

/// Removes an instance (clean shutdown) or every instance not seen since `before`.
pub async fn forget_instances(conn: &mut Conn, id: Option<&str>, before: NaiveDateTime) -> Result<usize> {
    Ok(db_run!(conn, {
        use schema::scheduler_instances as t;
        match id {
            Some(id) => diesel::delete(t::table.filter(t::id.eq(id))).execute(conn).await?,
            None => diesel::delete(t::table.filter(t::last_seen.lt(before))).execute(conn).await?,
        }
    }))
}

/// Instances, most recently seen first.
pub async fn instances(conn: &mut Conn) -> Result<Vec<InstanceRow>> {
    Ok(db_run!(conn, {
        use schema::scheduler_instances as t;
        t::table.order(t::last_seen.desc()).load::<InstanceRow>(conn).await?
    }))
}

/// Stores a job; false when the name is taken.
pub async fn insert_job(conn: &mut Conn, job: &JobRow) -> Result<bool> {
    let r = db_run!(conn, {
        use schema::jobs as t;
        diesel::insert_into(t::table).values(job_values!(t, job)).execute(conn).await
    });
    match r {
        Ok(_) => Ok(true),
        Err(e) if is_unique_violation(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A job by name.
pub async fn get_job(conn: &mut Conn, name: &str) -> Result<Option<JobRow>> {
    let row = db_run!(conn, {
        use schema::jobs as t;
        t::table.filter(t::name.eq(name)).first::<JobColumns>(conn).await.optional()?
    });
    Ok(row.map(JobRow::try_from).transpose()?)
}

/// Every job, by name.
pub async fn list_jobs(conn: &mut Conn) -> Result<Vec<JobRow>> {
    typed(db_run!(conn, {
        use schema::jobs as t;
        t::table.order(t::name.asc()).load::<JobColumns>(conn).await?
    }))
}

/// Replaces a job's settings (by name).
pub async fn update_job(conn: &mut Conn, job: &JobRow) -> Result<bool> {
    Ok(db_run!(conn, {
        use schema::jobs as t;
        diesel::update(t::table.filter(t::name.eq(&job.name))).set(job_values!(t, job)).execute(conn).await? == 1
    }))
}

/// Deletes a job and its finished runs; false when it is running (nothing is changed then).
pub async fn delete_job(conn: &mut Conn, name: &str) -> Result<Option<bool>> {
    Ok(db_run!(conn, {
        use schema::{job_runs as r, jobs as t};
        conn.transaction::<_, diesel::result::Error, _>(async |c| {
            // Write first: locks the row on PostgreSQL and takes SQLite's write lock up front.
            let n = diesel::delete(t::table.filter(t::name.eq(name))).execute(&mut *c).await?;
            if n == 0 {
                return Ok(None);
            }
            let running: i64 = r::table
                .filter(r::job_name.eq(name))
                .filter(r::state.eq(JobRunState::Running.as_str()))
                .count()
                .get_result(&mut *c)
                .await?;
            if running > 0 {
                return Err(diesel::result::Error::RollbackTransaction);
            }
            diesel::delete(r::table.filter(r::job_name.eq(name))).execute(&mut *c).await?;
            Ok(Some(true))
        })
        .await
        .or_else(|e| match e {
            diesel::result::Error::RollbackTransaction => Ok(Some(false)),
            e => Err(e),
        })?
    }))
}

/// Enabled jobs whose next occurrence is due at `now`.
pub async fn due_jobs(conn: &mut Conn, now: NaiveDateTime) -> Result<Vec<JobRow>> {
    typed(db_run!(conn, {
        use schema::jobs as t;
        t::table.filter(t::enabled.eq(true)).filter(t::next_due.le(now)).load::<JobColumns>(conn).await?
    }))
}

/// Claims occurrence `due` of `job`: moves `next_due` to `next` (compare-and-set on `due`) and
/// records `missed` (occurrences skipped) and `run` (this occurrence, running) in one transaction.
/// `run` is None when the occurrence itself is skipped too.
pub async fn claim(
    conn: &mut Conn,
    job: &str,
    due: NaiveDateTime,
    next: Option<NaiveDateTime>,
    missed: Option<&RunRow>,
    run: Option<&RunRow>,
) -> Result<Claim> {
    let r = db_run!(conn, {
        use schema::{job_runs as r, jobs as t};
        conn.transaction::<_, diesel::result::Error, _>(async |c| {
            // The compare-and-set first: on PostgreSQL it locks the job row, so a second instance
            // waits here and then sees next_due moved (0 rows); on SQLite it takes the write lock.
            let n = diesel::update(
                t::table.filter(t::name.eq(job)).filter(t::enabled.eq(true)).filter(t::next_due.eq(due)),
            )
            .set(t::next_due.eq(next))
            .execute(&mut *c)
            .await?;
            if n != 1 {
                return Ok(Claim::Gone);
            }
            if run.is_some() {
                let busy: i64 = r::table
                    .filter(r::job_name.eq(job))
                    .filter(r::state.eq(JobRunState::Running.as_str()))
                    .count()
                    .get_result(&mut *c)
                    .await?;
                if busy > 0 {
                    // Undo the move: the occurrence waits for the running one.
                    return Err(diesel::result::Error::RollbackTransaction);
                }
            }
            if let Some(m) = missed {
                diesel::insert_into(r::table).values(run_values!(r, m)).execute(&mut *c).await?;
            }
            if let Some(run) = run {
                // Not before its predecessor's end (see `insert_run`).
                let last_end: Option<Option<NaiveDateTime>> = r::table
                    .filter(r::job_name.eq(job))
                    .order(r::started_at.desc())
                    .select(r::finished_at)
                    .first(&mut *c)
                    .await
                    .optional()?;
                let started_at = last_end.flatten().map_or(run.started_at, |e| e.max(run.started_at));
                let run = RunRow { started_at, ..run.clone() };
                diesel::insert_into(r::table).values(run_values!(r, run)).execute(&mut *c).await?;
            }
            Ok(Claim::Claimed)
        })
        .await
    });
    match r {
        Ok(c) => Ok(c),
        Err(diesel::result::Error::RollbackTransaction) => Ok(Claim::Busy),
        // A run inserted meanwhile by RunJobNow (one running per job) or, were anything else
        // wrong, a second run of the same occurrence: the index refuses, nothing was changed.
        Err(e) if is_unique_violation(&e) => Ok(Claim::Busy),
        Err(e) => Err(e.into()),
    }
}

/// Records a manual run as running; false when the job is running already. Its start is moved to
/// its predecessor's end should that be later: the time was read before the predecessor's end
/// was committed (by another instance, whose reading of the database's clock differs by a little),
/// and a job's runs never overlap.
pub async fn insert_run(conn: &mut Conn, run: &RunRow) -> Result<bool> {
    let r = db_run!(conn, {
        use schema::job_runs as r;
        conn.transaction::<_, diesel::result::Error, _>(async |c| {
            // Write first (SQLite takes its write lock with the first write, see db/files.rs).
            diesel::insert_into(r::table).values(run_values!(r, run)).execute(&mut *c).await?;
            let last_end: Option<Option<NaiveDateTime>> = r::table
                .filter(r::job_name.eq(&run.job_name))
                .filter(r::id.ne(&run.id))
                .order(r::started_at.desc())
                .select(r::finished_at)
                .first(&mut *c)
                .await
                .optional()?;
            if let Some(end) = last_end.flatten().filter(|e| *e > run.started_at) {
                diesel::update(r::table.filter(r::id.eq(&run.id))).set(r::started_at.eq(end)).execute(&mut *c).await?;
            }
            Ok(())
        })
        .await
    });
    match r {
        Ok(_) => Ok(true),
        Err(e) if is_unique_violation(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Running runs whose lease lapsed before `now`: their instance went away.
pub async fn lapsed_runs(conn: &mut Conn, now: NaiveDateTime) -> Result<Vec<RunRow>> {
    typed(db_run!(conn, {
        use schema::job_runs as r;
        r::table
            .filter(r::state.eq(JobRunState::Running.as_str()))
            .filter(r::lease_until.lt(now))
            .load::<RunColumns>(conn)
            .await?
    }))
}

/// Takes a lapsed run over for `owner` (compare-and-set on its attempt and lapsed lease).
pub async fn take_over(
    conn: &mut Conn,
    run: &RunRow,
    owner: &str,
    until: NaiveDateTime,
    now: NaiveDateTime,
) -> Result<bool> {
    Ok(db_run!(conn, {
        use schema::job_runs as r;
        diesel::update(
            r::table
                .filter(r::id.eq(&run.id))
                .filter(r::state.eq(JobRunState::Running.as_str()))
                .filter(r::attempt.eq(run.attempt))
                .filter(r::lease_until.lt(now)),
        )
        .set((r::owner.eq(owner), r::attempt.eq(run.attempt + 1), r::lease_until.eq(Some(until))))
        .execute(conn)
        .await?
            == 1
    }))
}

/// Extends a run's lease while (owner, attempt) still hold it; false when it was lost.
pub async fn renew(conn: &mut Conn, id: &str, owner: &str, attempt: i64, until: NaiveDateTime) -> Result<bool> {
    Ok(db_run!(conn, {
        use schema::job_runs as r;
        diesel::update(
            r::table
                .filter(r::id.eq(id))
                .filter(r::owner.eq(owner))
                .filter(r::attempt.eq(attempt))
                .filter(r::state.eq(JobRunState::Running.as_str())),
        )
        .set(r::lease_until.eq(Some(until)))
        .execute(conn)
        .await?
            == 1
    }))
}

/// Ends a run held by (owner, attempt) and prunes the job's finished runs beyond the newest
/// `keep`, in one transaction; false when the run was taken over meanwhile (nothing changes then).
#[expect(clippy::too_many_arguments, reason = "one UPDATE's fields")]
pub async fn finish(
    conn: &mut Conn,
    id: &str,
    owner: &str,
    attempt: i64,
    state: JobRunState,
    message: &str,
    error: Option<&str>,
    now: NaiveDateTime,
    keep: i64,
) -> Result<bool> {
    Ok(db_run!(conn, {
        use schema::job_runs as r;
        conn.transaction::<_, diesel::result::Error, _>(async |c| {
            let n = diesel::update(
                r::table
                    .filter(r::id.eq(id))
                    .filter(r::owner.eq(owner))
                    .filter(r::attempt.eq(attempt))
                    .filter(r::state.eq(JobRunState::Running.as_str())),
            )
            .set((
                r::state.eq(state.as_str()),
                r::message.eq(message),
                r::error.eq(error),
                r::lease_until.eq(None::<NaiveDateTime>),
                r::finished_at.eq(Some(now)),
            ))
            .execute(&mut *c)
            .await?;
            if n != 1 {
                return Ok(false);
            }
            let job: String = r::table.filter(r::id.eq(id)).select(r::job_name).first(&mut *c).await?;
            let kept: Vec<String> = r::table
                .filter(r::job_name.eq(&job))
                .filter(r::state.ne(JobRunState::Running.as_str()))
                .order(r::id.desc())
                .limit(keep)
                .select(r::id)
                .load(&mut *c)
                .await?;
            diesel::delete(
                r::table
                    .filter(r::job_name.eq(&job))
                    .filter(r::state.ne(JobRunState::Running.as_str()))
                    .filter(r::id.ne_all(kept)),
            )
            .execute(&mut *c)
            .await?;
            Ok(true)
        })
        .await?
    }))
}

/// A run by id.
pub async fn get_run(conn: &mut Conn, id: &str) -> Result<Option<RunRow>> {
    let row = db_run!(conn, {
        use schema::job_runs as r;
        r::table.filter(r::id.eq(id)).first::<RunColumns>(conn).await.optional()?
    });
    Ok(row.map(RunRow::try_from).transpose()?)
}

/// Runs newest first (ids are UUIDv7: time-ordered), of one job or all, after page token `before`.
pub async fn list_runs(conn: &mut Conn, job: Option<&str>, before: Option<&str>, limit: i64) -> Result<Vec<RunRow>> {
    typed(db_run!(conn, {
        use schema::job_runs as r;
        let mut q = r::table.into_boxed();
        if let Some(j) = job {
            q = q.filter(r::job_name.eq(j));
        }
        if let Some(b) = before {
            q = q.filter(r::id.lt(b));
        }
        q.order(r::id.desc()).limit(limit).load::<RunColumns>(conn).await?
    }))
}

/// Runs in progress, oldest first.
pub async fn running_runs(conn: &mut Conn) -> Result<Vec<RunRow>> {
    typed(db_run!(conn, {
        use schema::job_runs as r;
        r::table.filter(r::state.eq(JobRunState::Running.as_str())).order(r::id.asc()).load::<RunColumns>(conn).await?
    }))
}

/// The newest run of a job.
pub async fn last_run(conn: &mut Conn, job: &str) -> Result<Option<RunRow>> {
    let row = db_run!(conn, {
        use schema::job_runs as r;
        r::table.filter(r::job_name.eq(job)).order(r::id.desc()).first::<RunColumns>(conn).await.optional()?
    });
    Ok(row.map(RunRow::try_from).transpose()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(trigger: &str, state: &str) -> RunColumns {
        let t = NaiveDateTime::default();
        RunColumns {
            id: "r".into(),
            job_name: "j".into(),
            scheduled_for: t,
            run_trigger: trigger.into(),
            state: state.into(),
            owner: "i".into(),
            attempt: 1,
            lease_until: None,
            started_at: t,
            finished_at: None,
            message: String::new(),
            error: None,
        }
    }

    #[test]
    fn stored_states_become_enums_and_unknown_ones_are_refused() {
        let r = RunRow::try_from(run("manual", "timed_out")).unwrap();
        assert_eq!((r.run_trigger, r.state), (Trigger::Manual, JobRunState::TimedOut));
        let e = RunRow::try_from(run("schedule", "paused")).unwrap_err();
        assert_eq!(e, UnknownValue { what: "job run state", value: "paused".into() });
        let e = RunRow::try_from(run("cron", "running")).unwrap_err();
        assert_eq!(e.what, "job run trigger");
    }
}
