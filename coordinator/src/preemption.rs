//! The preemption pass: every second, and at once after a change that can
//! make queued work outrank running work (a submit, a resume, a raised
//! priority), the state's owner marks the running jobs to take back
//! ([`crate::schedule::preempt`] decides, [`crate::db::Db::preempt`]
//! reads and marks). Each job marked is told "release" in its next
//! heartbeat's reply; this task only says so in the log and `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::command::Command;
use crate::context::State;

/// How often the pass runs when nothing nudges it.
const PERIOD: Duration = Duration::from_secs(1);

/// Runs the pass until `stop`; nothing when preemption is off.
pub(crate) async fn run(state: Arc<State>, stop: CancellationToken) {
    let Some(min_run) = state.config.min_run else { return };
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
            _ = state.preempt_now.notified() => {}
        }
        let (policy, rules) = (state.config.policy.clone(), state.config.rules());
        match state.db.run(|reply| Command::Preempt { policy, rules, min_run, reply }).await {
            Ok(Ok(taken)) => {
                for p in taken {
                    let user = crate::fleet::user_name(&state.config.tokens, &p.for_owner);
                    tracing::info!(job = %p.job, for_user = %user, why = %p.why, "preempting: the job is asked back at its next checkpoint");
                    metrics::counter!("stylefarm_preemptions_total").increment(1);
                }
            }
            Ok(Err(e)) => tracing::error!("preempting: {e}"),
            Err(e) => tracing::warn!("preempting: {e}"),
        }
    }
}
