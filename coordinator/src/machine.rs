//! The job state machine: one pure function, [`next`], says what every
//! event does to a job in every state, and what it costs the job. The
//! database applies what it says and nothing else; the table test below
//! covers every pair.
//!
//! ```text
//!            Lease              Complete
//!   QUEUED ─────────▶ RUNNING ───────────▶ SUCCEEDED (final)
//!     ▲  ◀───────────── │ │
//!     │  Release, Lapse,│ │ Fail(BadInput), or a budget spent
//!     │  Fail(…) within │ ▼
//!     │  the budget     FAILED ──Retry──▶ QUEUED
//!     └── Cancel (from QUEUED or RUNNING) ──▶ CANCELLED ──Retry──▶ QUEUED
//! ```
//!
//! Final states are final for workers: only a person's Retry re-opens a
//! failed or cancelled job, and a person's Rerender (a retry with changed
//! parameters) any ended one, a succeeded one included.

use stylefarm_proto as pb;

/// A job's state (the wire's `JobState` without its unspecified zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl State {
    pub const ALL: [State; 5] = [State::Queued, State::Running, State::Succeeded, State::Failed, State::Cancelled];

    /// Its lowercase name, as logs and metrics label it.
    pub fn name(self) -> &'static str {
        self.to_wire().label()
    }

    /// Nothing moves a job out of these.
    pub fn is_final(self) -> bool {
        matches!(self, State::Succeeded | State::Cancelled)
    }

    /// The job will not run again unless someone acts.
    pub fn has_ended(self) -> bool {
        self.to_wire().has_ended()
    }

    pub fn to_wire(self) -> pb::JobState {
        match self {
            State::Queued => pb::JobState::Queued,
            State::Running => pb::JobState::Running,
            State::Succeeded => pb::JobState::Succeeded,
            State::Failed => pb::JobState::Failed,
            State::Cancelled => pb::JobState::Cancelled,
        }
    }

    pub fn from_wire(s: i32) -> Option<State> {
        match pb::JobState::try_from(s).ok()? {
            pb::JobState::Queued => Some(State::Queued),
            pb::JobState::Running => Some(State::Running),
            pb::JobState::Succeeded => Some(State::Succeeded),
            pb::JobState::Failed => Some(State::Failed),
            pb::JobState::Cancelled => Some(State::Cancelled),
            pb::JobState::Unspecified => None,
        }
    }
}

/// Whose fault a failed attempt was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The job cannot work: never retried.
    BadInput,
    /// The render went wrong (or ran out of memory): retried, spending the
    /// job's failure budget.
    Job,
    /// The worker, its device or storage failed, or its lease lapsed: the
    /// job is requeued without spending its failure budget.
    NotTheJob,
}

/// Something that happens to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Lease,
    /// The worker reports progress; answers whether to go on.
    Heartbeat,
    Complete,
    Fail(Cause),
    /// The worker gives the job back (shutdown, pre-emption).
    Release,
    /// The lease's deadline passed without a heartbeat.
    Lapse,
    Cancel,
    /// A person asks for a failed or cancelled job to run again.
    Retry,
    /// A person asks for an ended job, a succeeded one included, to be
    /// rendered again with changed parameters.
    Rerender,
}

impl Event {
    pub const ALL: [Event; 11] = [
        Event::Lease,
        Event::Heartbeat,
        Event::Complete,
        Event::Fail(Cause::BadInput),
        Event::Fail(Cause::Job),
        Event::Fail(Cause::NotTheJob),
        Event::Release,
        Event::Lapse,
        Event::Cancel,
        Event::Retry,
        Event::Rerender,
    ];
}

/// What a job has spent so far and may spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Attempts that failed through the job's fault, and the most allowed.
    pub failures: u32,
    pub max_failures: u32,
    /// Attempts lost through no fault of the job, and the most allowed.
    pub requeues: u32,
    pub max_requeues: u32,
}

/// What an accepted event does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub to: State,
    /// Add one to the job's failures (its own fault).
    pub spend_failure: bool,
    /// Add one to the job's requeues (not its fault).
    pub spend_requeue: bool,
    /// Wait before the job may be leased again (retry backoff).
    pub backoff: bool,
}

impl Step {
    fn to(to: State) -> Step {
        Step { to, spend_failure: false, spend_requeue: false, backoff: false }
    }
}

/// Why an event was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the job is {0:?}, not running")]
    NotRunning(State),
    #[error("the job is {0:?}, not queued")]
    NotQueued(State),
    #[error("the job is {0:?}, which is final")]
    Final(State),
    #[error("the job is {0:?}, not failed or cancelled")]
    NotFailed(State),
    #[error("the job is {0:?}: it has not ended")]
    NotEnded(State),
    #[error("the job succeeded; to render it again, change a parameter (farmctl retry JOB --set KEY=VALUE)")]
    SucceededAsIs,
}

/// The one rule book: what `event` does to a job in `state`.
pub fn next(state: State, event: Event, budget: Budget) -> Result<Step, Refusal> {
    use Event as E;
    use State as S;
    match (state, event) {
        (S::Queued, E::Lease) => Ok(Step::to(S::Running)),
        (S::Queued | S::Running, E::Cancel) => Ok(Step::to(S::Cancelled)),
        (S::Running, E::Heartbeat) => Ok(Step::to(S::Running)),
        (S::Running, E::Complete) => Ok(Step::to(S::Succeeded)),
        (S::Running, E::Release) => Ok(Step::to(S::Queued)),
        (S::Running, E::Fail(Cause::BadInput)) => Ok(Step { spend_failure: true, ..Step::to(S::Failed) }),
        (S::Running, E::Fail(Cause::Job)) => {
            let to = if budget.failures + 1 >= budget.max_failures { S::Failed } else { S::Queued };
            Ok(Step { to, spend_failure: true, spend_requeue: false, backoff: to == S::Queued })
        }
        (S::Running, E::Fail(Cause::NotTheJob) | E::Lapse) => {
            let to = if budget.requeues + 1 > budget.max_requeues { S::Failed } else { S::Queued };
            Ok(Step { to, spend_failure: false, spend_requeue: true, backoff: false })
        }
        (S::Failed | S::Cancelled, E::Retry) => Ok(Step::to(S::Queued)),
        (S::Succeeded | S::Failed | S::Cancelled, E::Rerender) => Ok(Step::to(S::Queued)),
        (S::Queued | S::Running, E::Rerender) => Err(Refusal::NotEnded(state)),
        (S::Succeeded, E::Retry) => Err(Refusal::SucceededAsIs),
        // The attempt of a cancelled job may still report in: it ends, and
        // the job stays cancelled (a heartbeat is told to stop). Its
        // completion is refused: the job is not wanted.
        (S::Cancelled, E::Heartbeat | E::Fail(_) | E::Release | E::Lapse) => Ok(Step::to(S::Cancelled)),
        (S::Queued | S::Failed, E::Heartbeat | E::Complete | E::Fail(_) | E::Release | E::Lapse) => Err(Refusal::NotRunning(state)),
        (S::Running | S::Succeeded | S::Failed | S::Cancelled, E::Lease) => Err(Refusal::NotQueued(state)),
        (S::Queued | S::Running, E::Retry) => Err(Refusal::NotFailed(state)),
        (S::Failed, E::Cancel) => Err(Refusal::Final(state)),
        (S::Succeeded | S::Cancelled, _) => Err(Refusal::Final(state)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Event as E;
    use State as S;

    const FRESH: Budget = Budget { failures: 0, max_failures: 3, requeues: 0, max_requeues: 10 };

    /// Every (state, event) pair, with a fresh budget.
    #[test]
    fn every_state_and_event() {
        let ok = |to| Ok(Step::to(to));
        let fail = |to, backoff| Ok(Step { to, spend_failure: true, spend_requeue: false, backoff });
        let requeue = Ok(Step { to: S::Queued, spend_failure: false, spend_requeue: true, backoff: false });
        #[rustfmt::skip]
        let table: [(S, [Result<Step, Refusal>; 11]); 5] = [
            //            Lease                          Heartbeat                     Complete                      Fail(Bad)                     Fail(Job)                     Fail(NotJob)                  Release                       Lapse                         Cancel                  Retry                  Rerender
            (S::Queued,    [ok(S::Running),               Err(Refusal::NotRunning(S::Queued)), Err(Refusal::NotRunning(S::Queued)), Err(Refusal::NotRunning(S::Queued)), Err(Refusal::NotRunning(S::Queued)), Err(Refusal::NotRunning(S::Queued)), Err(Refusal::NotRunning(S::Queued)), Err(Refusal::NotRunning(S::Queued)), ok(S::Cancelled), Err(Refusal::NotFailed(S::Queued)), Err(Refusal::NotEnded(S::Queued))]),
            (S::Running,   [Err(Refusal::NotQueued(S::Running)), ok(S::Running),           ok(S::Succeeded),             fail(S::Failed, false),       fail(S::Queued, true),        requeue,                      ok(S::Queued),                requeue,                      ok(S::Cancelled), Err(Refusal::NotFailed(S::Running)), Err(Refusal::NotEnded(S::Running))]),
            (S::Succeeded, [Err(Refusal::NotQueued(S::Succeeded)), Err(Refusal::Final(S::Succeeded)), Err(Refusal::Final(S::Succeeded)), Err(Refusal::Final(S::Succeeded)), Err(Refusal::Final(S::Succeeded)), Err(Refusal::Final(S::Succeeded)), Err(Refusal::Final(S::Succeeded)), Err(Refusal::Final(S::Succeeded)), Err(Refusal::Final(S::Succeeded)), Err(Refusal::SucceededAsIs), ok(S::Queued)]),
            (S::Failed,    [Err(Refusal::NotQueued(S::Failed)), Err(Refusal::NotRunning(S::Failed)), Err(Refusal::NotRunning(S::Failed)), Err(Refusal::NotRunning(S::Failed)), Err(Refusal::NotRunning(S::Failed)), Err(Refusal::NotRunning(S::Failed)), Err(Refusal::NotRunning(S::Failed)), Err(Refusal::NotRunning(S::Failed)), Err(Refusal::Final(S::Failed)), ok(S::Queued), ok(S::Queued)]),
            (S::Cancelled, [Err(Refusal::NotQueued(S::Cancelled)), ok(S::Cancelled),       Err(Refusal::Final(S::Cancelled)), ok(S::Cancelled),         ok(S::Cancelled),             ok(S::Cancelled),             ok(S::Cancelled),             ok(S::Cancelled),             Err(Refusal::Final(S::Cancelled)), ok(S::Queued), ok(S::Queued)]),
        ];
        for (state, row) in table {
            for (event, want) in E::ALL.into_iter().zip(row) {
                assert_eq!(next(state, event, FRESH), want, "{state:?} × {event:?}");
            }
        }
    }

    #[test]
    fn final_states_never_move_but_by_a_persons_retry() {
        assert_eq!(next(S::Succeeded, E::Retry, FRESH), Err(Refusal::SucceededAsIs), "a success is not redone as it was");
        assert_eq!(next(S::Succeeded, E::Rerender, FRESH), Ok(Step::to(S::Queued)), "only with changes");
        for state in S::ALL.into_iter().filter(|s| s.is_final()) {
            for event in E::ALL.into_iter().filter(|&e| e != E::Retry && e != E::Rerender) {
                if let Ok(step) = next(state, event, FRESH) {
                    assert_eq!(step.to, state, "{state:?} × {event:?} left a final state");
                }
            }
        }
    }

    #[test]
    fn the_two_budgets_are_spent_separately() {
        let spent_failures = Budget { failures: 2, ..FRESH };
        assert_eq!(next(S::Running, E::Fail(Cause::Job), spent_failures).unwrap().to, S::Failed, "the third own failure ends it");
        assert_eq!(next(S::Running, E::Lapse, spent_failures).unwrap().to, S::Queued, "a lost worker does not spend the failure budget");
        assert_eq!(next(S::Running, E::Fail(Cause::NotTheJob), spent_failures).unwrap().to, S::Queued);
        let spent_requeues = Budget { requeues: 10, ..FRESH };
        assert_eq!(next(S::Running, E::Lapse, spent_requeues).unwrap().to, S::Failed, "requeues are capped too");
        assert_eq!(next(S::Running, E::Fail(Cause::Job), spent_requeues).unwrap().to, S::Queued);
        assert_eq!(next(S::Running, E::Release, Budget { requeues: 10, failures: 2, ..FRESH }).unwrap(), Step::to(S::Queued), "a release costs nothing");
    }

    #[test]
    fn wire_states_round_trip() {
        for s in S::ALL {
            assert_eq!(State::from_wire(s.to_wire() as i32), Some(s));
        }
        assert_eq!(State::from_wire(0), None);
    }
}
