//! The states' rules, one home for every side of the contract: a job
//! state's name as people read it, whether it has ended, and a
//! collection's state from its jobs' counts. The coordinator (its job
//! machine, notifications, pages), farmctl and the workers all ask here.

use crate::{CollectionState, JobCounts, JobState};

impl JobState {
    /// Its lowercase name, as the terminal, logs, metrics and the page show
    /// it ("unknown" for the unspecified zero).
    pub fn label(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Unspecified => "unknown",
        }
    }

    /// The label of a wire value (a `Job.state`), "unknown" for any
    /// value this contract does not define.
    pub fn label_of(state: i32) -> &'static str {
        JobState::try_from(state).map_or("unknown", JobState::label)
    }

    /// The job will not run again unless someone acts (a retry).
    pub fn has_ended(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    }

    /// [`JobState::has_ended`] of a wire value (a `Job.state`); false for
    /// a value this contract does not define.
    pub fn ended(state: i32) -> bool {
        JobState::try_from(state).is_ok_and(JobState::has_ended)
    }
}

impl JobCounts {
    /// Counts `n` more jobs in `state` (the unspecified zero counts
    /// nowhere).
    pub fn add(&mut self, state: JobState, n: u32) {
        match state {
            JobState::Queued => self.queued += n,
            JobState::Running => self.running += n,
            JobState::Succeeded => self.succeeded += n,
            JobState::Failed => self.failed += n,
            JobState::Cancelled => self.cancelled += n,
            JobState::Unspecified => {}
        }
    }

    /// The jobs counted in `state`.
    pub fn of(&self, state: JobState) -> u32 {
        match state {
            JobState::Queued => self.queued,
            JobState::Running => self.running,
            JobState::Succeeded => self.succeeded,
            JobState::Failed => self.failed,
            JobState::Cancelled => self.cancelled,
            JobState::Unspecified => 0,
        }
    }

    /// Every job counted.
    pub fn total(&self) -> u32 {
        self.queued + self.running + self.ended()
    }

    /// The jobs that have ended.
    pub fn ended(&self) -> u32 {
        self.succeeded + self.failed + self.cancelled
    }

    /// The collection's state: the first of running, queued, failed,
    /// succeeded (some succeeded, the rest cancelled) and cancelled that
    /// applies (see `CollectionState` in the contract).
    pub fn state(&self) -> CollectionState {
        if self.running > 0 {
            CollectionState::Running
        } else if self.queued > 0 {
            CollectionState::Queued
        } else if self.failed > 0 {
            CollectionState::Failed
        } else if self.cancelled > 0 && self.succeeded == 0 {
            CollectionState::Cancelled
        } else {
            CollectionState::Succeeded
        }
    }
}

impl CollectionState {
    /// Its lowercase name, as people read it.
    pub fn label(self) -> &'static str {
        match self {
            CollectionState::Running => "running",
            CollectionState::Queued => "queued",
            CollectionState::Failed => "failed",
            CollectionState::Succeeded => "succeeded",
            CollectionState::Cancelled => "cancelled",
            CollectionState::Paused => "paused",
            CollectionState::Unspecified => "unknown",
        }
    }
}

impl crate::Collection {
    /// Variant `variant`'s label, as its columns carry it (`Column.label`:
    /// the coordinator's one rule); "" when none is listed (ListCollections
    /// carries no columns).
    pub fn variant_label(&self, variant: u32) -> &str {
        self.columns.iter().find(|c| c.variant_index == variant).map_or("", |c| c.label.as_str())
    }

    /// Sets its counts and the state they give (paused: set `paused`
    /// first).
    pub fn set_counts(&mut self, counts: JobCounts) {
        let state = match counts.state() {
            CollectionState::Queued if self.paused => CollectionState::Paused,
            state => state,
        };
        self.state = state as i32;
        self.counts = Some(counts);
    }
}

impl crate::Job {
    /// Who holds (or last held) it, as people know the worker: the name it
    /// registered under, or its registration id when the name is unknown
    /// (a job leased before the coordinator kept names).
    pub fn worker_shown(&self) -> &str {
        if self.worker_name.is_empty() { &self.worker } else { &self.worker_name }
    }
}

#[cfg(test)]
mod tests {
    use crate::{CollectionState as C, JobCounts};

    fn counts(queued: u32, running: u32, succeeded: u32, failed: u32, cancelled: u32) -> JobCounts {
        JobCounts { queued, running, succeeded, failed, cancelled }
    }

    #[test]
    fn a_collections_state_is_the_first_that_applies() {
        let table = [
            (counts(5, 1, 3, 2, 1), C::Running),
            (counts(5, 0, 3, 2, 1), C::Queued),
            (counts(0, 0, 3, 1, 1), C::Failed),
            (counts(0, 0, 0, 1, 0), C::Failed),
            (counts(0, 0, 3, 0, 1), C::Succeeded),
            (counts(0, 0, 3, 0, 0), C::Succeeded),
            (counts(0, 0, 0, 0, 4), C::Cancelled),
        ];
        for (c, want) in table {
            assert_eq!(c.state(), want, "{c:?}");
        }
        assert_eq!(counts(1, 2, 3, 4, 5).total(), 15);
        let mut paused = crate::Collection { paused: true, ..Default::default() };
        paused.set_counts(counts(2, 0, 1, 0, 0));
        assert_eq!(paused.state, C::Paused as i32, "paused and waiting");
        paused.set_counts(counts(2, 1, 1, 0, 0));
        assert_eq!(paused.state, C::Running as i32, "paused, its running jobs finish");
        assert_eq!(counts(1, 2, 3, 4, 5).ended(), 12);
    }

    #[test]
    fn every_job_state_has_a_label_and_unknown_values_read_unknown() {
        assert_eq!(crate::JobState::label_of(crate::JobState::Cancelled as i32), "cancelled");
        assert_eq!(crate::JobState::label_of(99), "unknown");
        let mut c = JobCounts::default();
        c.add(crate::JobState::Failed, 2);
        c.add(crate::JobState::Unspecified, 7);
        assert_eq!((c.failed, c.total()), (2, 2));
    }
}
