//! Who gets a free worker when several people share the farm: the rule,
//! pure (like [`crate::machine`] for a job's states), so a table says what
//! it does. The user furthest below their share of the busy workers goes
//! first; within one user, the highest-priority collection, then the
//! oldest job (the order of their queue). Shares are weights per user
//! (`--share NAME=W`, 1 by default) over the users who have work, queued
//! or running: a user with nothing to do lends their share to the others,
//! so no worker idles while anyone waits. A user at their `--max-running`
//! quota is not offered one.
//!
//! Users are owners as the database keeps them: a digest of the token
//! (`user-…`), or "" on a farm without tokens (one user).

use std::collections::{BTreeSet, HashMap};

use stylefarm_proto::labels::Labels;

/// Where a job stands in its user's queue, lowest first: the collection's
/// priority (negated, so the highest first; paused collections sort past
/// every other), the collection's order, the job's.
pub type QueueKey = (i64, i64, i64);

/// A user with queued work, and the head of their queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub owner: String,
    pub head: QueueKey,
}

/// How the farm is shared, by owner.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    /// Each named user's weight (`--share`); others weigh 1.
    pub shares: HashMap<String, f64>,
    /// Most workers one user's jobs may hold at once (`--max-running`).
    pub max_running: HashMap<String, u32>,
    /// … and for every user not named there (`--max-running '*=N'`).
    pub max_running_each: Option<u32>,
    /// Most jobs one user may have queued (`--max-queued`) …
    pub max_queued: HashMap<String, u64>,
    /// … and for every user not named there.
    pub max_queued_each: Option<u64>,
}

impl Policy {
    /// The policy the flags give: `shares` as `NAME=W` (W > 0), the quotas
    /// as `NAME=N` or `*=N` (every user not named). NAME is a token's name
    /// (`--user-token NAME=TOKEN`), turned into its owner by `owner_named`.
    pub fn from_flags(shares: &[String], max_running: &[String], max_queued: &[String], owner_named: impl Fn(&str) -> Option<String>) -> Result<Policy, String> {
        let mut policy = Policy::default();
        let split = |flag: &str, arg: &str| -> Result<(Option<String>, String), String> {
            let (name, value) = arg.split_once('=').ok_or_else(|| format!("--{flag} {arg}: give NAME=VALUE"))?;
            if name == "*" && flag != "share" {
                return Ok((None, value.to_string()));
            }
            let owner = owner_named(name).ok_or_else(|| format!("--{flag} {arg}: no --user-token or --admin-token is named {name} (name one as NAME=TOKEN)"))?;
            Ok((Some(owner), value.to_string()))
        };
        for arg in shares {
            let (owner, w) = split("share", arg)?;
            let w: f64 = w.parse().ok().filter(|w: &f64| w.is_finite() && *w > 0.0).ok_or_else(|| format!("--share {arg}: the weight is a number above 0"))?;
            policy.shares.insert(owner.unwrap_or_default(), w);
        }
        for (flag, args) in [("max-running", max_running), ("max-queued", max_queued)] {
            for arg in args {
                let (owner, n) = split(flag, arg)?;
                let n: u64 = n.parse().map_err(|_| format!("--{flag} {arg}: the most is a whole number"))?;
                match (flag, owner) {
                    ("max-running", Some(o)) => drop(policy.max_running.insert(o, n.min(u32::MAX as u64) as u32)),
                    ("max-running", None) => policy.max_running_each = Some(n.min(u32::MAX as u64) as u32),
                    (_, Some(o)) => drop(policy.max_queued.insert(o, n)),
                    (_, None) => policy.max_queued_each = Some(n),
                }
            }
        }
        Ok(policy)
    }

    /// `owner`'s weight.
    pub fn share(&self, owner: &str) -> f64 {
        self.shares.get(owner).copied().unwrap_or(1.0)
    }

    /// Most workers `owner`'s jobs may hold, if limited.
    pub fn max_running(&self, owner: &str) -> Option<u32> {
        self.max_running.get(owner).copied().or(self.max_running_each)
    }

    /// Most jobs `owner` may have queued, if limited.
    pub fn max_queued(&self, owner: &str) -> Option<u64> {
        self.max_queued.get(owner).copied().or(self.max_queued_each)
    }
}

/// Each user's share of `busy` workers: their weight over the weights of
/// every user with work (`waiting` or `running`).
pub fn fair_shares(waiting: &[Waiting], running: &HashMap<String, u32>, policy: &Policy, busy: f64) -> HashMap<String, f64> {
    let active: BTreeSet<&str> = waiting.iter().map(|w| w.owner.as_str()).chain(running.iter().filter(|(_, n)| **n > 0).map(|(o, _)| o.as_str())).collect();
    let weights: f64 = active.iter().map(|o| policy.share(o)).sum();
    active.into_iter().map(|o| (o.to_string(), busy * policy.share(o) / weights)).collect()
}

/// In which order the users in `waiting` are offered the worker asking
/// (the first whose queue holds a job this worker can take gets it, so a
/// user whose jobs need a larger worker does not block the rest):
/// furthest below their share of the busy workers (this one counted)
/// first, ties to the head of the queue; users at their running quota
/// left out. `running`: each user's running jobs.
pub fn order(waiting: &[Waiting], running: &HashMap<String, u32>, policy: &Policy) -> Vec<String> {
    let runs = |o: &str| running.get(o).copied().unwrap_or(0);
    let busy = running.values().sum::<u32>() as f64 + 1.0;
    let shares = fair_shares(waiting, running, policy, busy);
    let below = |o: &str| shares.get(o).copied().unwrap_or(0.0) - runs(o) as f64;
    let mut offered: Vec<&Waiting> = waiting.iter().filter(|w| policy.max_running(&w.owner).is_none_or(|max| runs(&w.owner) < max)).collect();
    offered.sort_by(|a, b| below(&b.owner).total_cmp(&below(&a.owner)).then(a.head.cmp(&b.head)));
    offered.into_iter().map(|w| w.owner.clone()).collect()
}

/// Queued work of one user at one priority needing one pool, as
/// preemption sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Queued {
    pub owner: String,
    /// Where its first job stands.
    pub head: QueueKey,
    pub jobs: u32,
    /// The least memory one of them needs (0: any worker).
    pub min_memory: u64,
    /// The labels a worker needs to take them.
    pub require: Labels,
}

/// A worker, as preemption sees it: what jobs it can take.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Slot {
    /// Its memory (0: not said; offered any job).
    pub memory: u64,
    pub labels: Labels,
}

/// A running job, as preemption sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Running {
    pub job: String,
    pub owner: String,
    /// Where it stood in its user's queue.
    pub key: QueueKey,
    /// The labels it requires (it is queued again with them).
    pub require: Labels,
    /// Seconds since it was last preempted (infinite: never).
    pub since_preempted: f64,
    /// The worker it runs on.
    pub worker: Slot,
    /// Already asked to give the job back (preempted, or its collection
    /// paused): its worker is as good as free.
    pub leaving: bool,
}

/// A running job to take back at its next checkpoint, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Preemption {
    pub job: String,
    /// Whose queued job gets the worker.
    pub for_owner: String,
    pub why: String,
}

/// `worker` can take a job of `group`, as the lease reads it: enough
/// memory (0: a worker that did not say) and every label required.
fn fits(worker: &Slot, group: &Queued) -> bool {
    (worker.memory == 0 || group.min_memory <= worker.memory) && worker.labels.satisfy(&group.require)
}

/// Each user's queue head, from their groups with jobs left.
fn heads(groups: &[Queued]) -> Vec<Waiting> {
    let mut heads: Vec<Waiting> = Vec::new();
    for g in groups.iter().filter(|g| g.jobs > 0) {
        match heads.iter_mut().find(|w| w.owner == g.owner) {
            Some(w) => w.head = w.head.min(g.head),
            None => heads.push(Waiting { owner: g.owner.clone(), head: g.head }),
        }
    }
    heads
}

/// Which group `worker`, freed, would lease from, by [`order`]: the first
/// user offered with a job it can take, their best such group.
fn next_lease(groups: &[Queued], held: &HashMap<String, u32>, policy: &Policy, worker: &Slot) -> Option<usize> {
    order(&heads(groups), held, policy).into_iter().find_map(|owner| {
        groups.iter().enumerate().filter(|(_, g)| g.owner == owner && g.jobs > 0 && fits(worker, g)).min_by_key(|(_, g)| g.head).map(|(i, _)| i)
    })
}

/// The worker goes to `group`'s user: one job fewer queued, one more held.
fn hand_out(groups: &mut [Queued], held: &mut HashMap<String, u32>, group: usize) {
    groups[group].jobs -= 1;
    *held.entry(groups[group].owner.clone()).or_default() += 1;
}

/// `job`, queued again where it stood.
fn requeued(job: &Running) -> Queued {
    Queued { owner: job.owner.clone(), head: job.key, jobs: 1, min_memory: 0, require: job.require.clone() }
}

/// Which running jobs to take back at their next checkpoint so that
/// queued work that outranks them runs now, not when some job happens to
/// end. A running job is outranked when the worker it frees would go, by
/// the lease's own rule ([`order`]), to another job that is either its
/// user's at a higher priority, or another user's who is at least 2
/// workers further below their share than its user (so the swap cannot
/// be undone by the next pass: both end nearer their shares, never
/// crossed). Priority ranks one user's work; between users, shares
/// decide.
///
/// Workers about to be free (`idle`, and those of `leaving` jobs) are
/// handed out first, as the lease would: nothing is preempted for work an
/// idle worker will take. A job preempted less than `min_run` seconds ago
/// stays. Of the outranked, the lowest-ranked goes first: its user the
/// furthest above their share, then the lowest priority, the newest.
pub fn preempt(queued: &[Queued], running: &[Running], idle: &[Slot], policy: &Policy, min_run: f64) -> Vec<Preemption> {
    let mut groups: Vec<Queued> = queued.iter().filter(|g| g.jobs > 0).cloned().collect();
    let mut held: HashMap<String, u32> = HashMap::new();
    for job in running.iter().filter(|r| !r.leaving) {
        *held.entry(job.owner.clone()).or_default() += 1;
    }
    let leaving: Vec<&Running> = running.iter().filter(|r| r.leaving).collect();
    groups.extend(leaving.iter().map(|r| requeued(r)));
    for worker in idle.iter().chain(leaving.iter().map(|r| &r.worker)) {
        if let Some(g) = next_lease(&groups, &held, policy, worker) {
            hand_out(&mut groups, &mut held, g);
        }
    }
    let mut candidates: Vec<&Running> = running.iter().filter(|r| !r.leaving && r.since_preempted >= min_run).collect();
    let mut taken = Vec::new();
    loop {
        let busy = held.values().sum::<u32>() as f64;
        let shares = fair_shares(&heads(&groups), &held, policy, busy);
        let below = |o: &str| shares.get(o).copied().unwrap_or(0.0) - held.get(o).copied().unwrap_or(0) as f64;
        candidates.sort_by(|a, b| below(&a.owner).total_cmp(&below(&b.owner)).then(b.key.cmp(&a.key)));
        let found = candidates.iter().enumerate().find_map(|(i, job)| {
            let mut after = groups.clone();
            after.push(requeued(job));
            let mut held_after = held.clone();
            *held_after.entry(job.owner.clone()).or_default() -= 1;
            let to = &after[next_lease(&after, &held_after, policy, &job.worker)?];
            let why = if to.owner == job.owner {
                (to.head.0 < job.key.0).then(|| format!("a queued job of the same user at priority {} outranks this one's {}", -to.head.0, -job.key.0))
            } else {
                let (theirs, ours) = (below(&to.owner), below(&job.owner));
                (theirs - ours >= 2.0).then(|| format!("another user is {theirs:.1} workers below their share; this job's user is {:.1} {}", ours.abs(), if ours < 0.0 { "above theirs" } else { "below theirs" }))
            };
            why.map(|why| (i, to.owner.clone(), why))
        });
        let Some((i, for_owner, why)) = found else { break };
        let job = candidates.remove(i);
        *held.entry(job.owner.clone()).or_default() -= 1;
        groups.push(requeued(job));
        if let Some(g) = next_lease(&groups, &held, policy, &job.worker) {
            hand_out(&mut groups, &mut held, g);
        }
        taken.push(Preemption { job: job.job.clone(), for_owner, why });
    }
    taken
}

/// One user's standing on the farm: what they run and have queued,
/// against their share of the busy workers and their quotas.
#[derive(Debug, Clone, PartialEq)]
pub struct Standing {
    pub owner: String,
    pub running: u32,
    pub queued: u64,
    /// Their weight (`--share`).
    pub weight: f64,
    /// Workers their weight gives them of those busy now, among the
    /// users with work.
    pub share: f64,
    pub max_running: Option<u32>,
    pub max_queued: Option<u64>,
}

/// Every user with work, queued or running: their standing, furthest
/// below their share first.
pub fn standings(queued: &HashMap<String, u64>, running: &HashMap<String, u32>, policy: &Policy) -> Vec<Standing> {
    let waiting: Vec<Waiting> = queued.iter().filter(|(_, n)| **n > 0).map(|(o, _)| Waiting { owner: o.clone(), head: (0, 0, 0) }).collect();
    let busy = running.values().sum::<u32>() as f64;
    let shares = fair_shares(&waiting, running, policy, busy);
    let mut all: Vec<Standing> = shares
        .into_iter()
        .map(|(owner, share)| Standing {
            running: running.get(&owner).copied().unwrap_or(0),
            queued: queued.get(&owner).copied().unwrap_or(0),
            weight: policy.share(&owner),
            share,
            max_running: policy.max_running(&owner),
            max_queued: policy.max_queued(&owner),
            owner,
        })
        .collect();
    all.sort_by(|a, b| (b.share - b.running as f64).total_cmp(&(a.share - a.running as f64)).then(a.owner.cmp(&b.owner)));
    all
}

/// What a queued job waits for, as [`why_waiting`] reads it.
#[derive(Debug, Clone, Default)]
pub struct WaitFacts {
    pub paused: bool,
    /// Seconds left of its retry backoff.
    pub backoff: f64,
    pub require: Labels,
    pub min_memory: u64,
    /// The workers online now (not draining, not quarantined).
    pub online: Vec<Slot>,
    /// Of them, how many hold no job.
    pub idle: u32,
    /// Its user's queued jobs ahead of it (higher priority, or older).
    pub ahead: u64,
    /// Its user's standing, and the other users further below their
    /// share (whose turn comes first).
    pub standing: Option<Standing>,
    pub before: Vec<String>,
}

/// Why a queued job is not running yet, in a person's words: the first
/// of paused, backoff, no worker that can take it, its user's running
/// quota, others' turn, its own queue ahead of it.
pub fn why_waiting(f: &WaitFacts, name: impl Fn(&str) -> String) -> String {
    if f.paused {
        return "its collection is paused".into();
    }
    if f.backoff > 0.0 {
        return format!("retrying after a failure in {:.0} s", f.backoff.ceil());
    }
    if !f.require.is_empty() && !f.online.iter().any(|w| w.labels.satisfy(&f.require)) {
        return format!("needs a worker with {}: none online has it", f.require.iter().collect::<Vec<_>>().join(" "));
    }
    let fits = |w: &Slot| w.labels.satisfy(&f.require) && (w.memory == 0 || f.min_memory <= w.memory);
    if f.min_memory > 0 && !f.online.iter().any(fits) {
        return format!("needs {:.1} GiB: no online worker that could take it has that much", f.min_memory as f64 / (1u64 << 30) as f64);
    }
    if let Some(s) = &f.standing {
        if let Some(max) = s.max_running.filter(|max| s.running >= *max) {
            return format!("its user runs {} jobs, their --max-running {max}", s.running);
        }
    }
    let mut why = if f.idle > 0 { "about to start: a worker is free".to_string() } else { "every worker that can take it is busy".to_string() };
    if f.idle == 0 && !f.before.is_empty() {
        let names: Vec<String> = f.before.iter().map(|o| name(o)).collect();
        why += &format!("; next free ones go first to {} (further below their share)", names.join(", "));
    }
    if f.ahead > 0 {
        why += &format!("; {} of its user's jobs are ahead of it (higher priority, or older)", f.ahead);
    }
    why
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(users: &[(&str, QueueKey)]) -> Vec<Waiting> {
        users.iter().map(|(o, head)| Waiting { owner: o.to_string(), head: *head }).collect()
    }

    fn running(users: &[(&str, u32)]) -> HashMap<String, u32> {
        users.iter().map(|(o, n)| (o.to_string(), *n)).collect()
    }

    fn policy(shares: &[(&str, f64)], max_running: &[(&str, u32)]) -> Policy {
        Policy {
            shares: shares.iter().map(|(o, w)| (o.to_string(), *w)).collect(),
            max_running: max_running.iter().map(|(o, n)| (o.to_string(), *n)).collect(),
            ..Policy::default()
        }
    }

    #[test]
    fn the_user_furthest_below_their_share_goes_first() {
        // (queued heads, running, shares, quotas) → the order offered.
        let table: &[(&str, Vec<Waiting>, HashMap<String, u32>, Policy, &[&str])] = &[
            ("one user: theirs", waiting(&[("a", (0, 1, 1))]), running(&[("a", 7)]), Policy::default(), &["a"]),
            (
                "a newcomer before the one who holds every worker, although the holder's job is older and more urgent",
                waiting(&[("a", (-5, 1, 1)), ("b", (0, 9, 9))]),
                running(&[("a", 8)]),
                Policy::default(),
                &["b", "a"],
            ),
            ("equal standing: the head of the queue decides (priority, then age)", waiting(&[("a", (0, 2, 5)), ("b", (-1, 3, 6))]), running(&[("a", 2), ("b", 2)]), Policy::default(), &["b", "a"]),
            ("equal standing, equal priority: the older collection", waiting(&[("b", (0, 3, 6)), ("a", (0, 2, 5))]), running(&[]), Policy::default(), &["a", "b"]),
            // 4 busy + 1: a's share 5·3/4 = 3.75 (holds 3: 0.75 below);
            // b's 1.25 (holds 1: 0.25 below).
            ("weights: 3 to 1", waiting(&[("a", (0, 1, 1)), ("b", (0, 2, 2))]), running(&[("a", 3), ("b", 1)]), policy(&[("a", 3.0)], &[]), &["a", "b"]),
            // … at 4 to 1 held (6 busy with this one), both are 0.5 below
            // theirs (4.5 and 1.5): the head of the queue decides …
            ("weights: 3 to 1, a tie", waiting(&[("a", (0, 1, 1)), ("b", (0, 2, 2))]), running(&[("a", 4), ("b", 1)]), policy(&[("a", 3.0)], &[]), &["a", "b"]),
            // … and at 5 to 1, a is 0.25 below its 5.25, b 0.75 below.
            ("weights: 3 to 1, the heavy one near its share", waiting(&[("a", (0, 1, 1)), ("b", (0, 2, 2))]), running(&[("a", 5), ("b", 1)]), policy(&[("a", 3.0)], &[]), &["b", "a"]),
            // c runs but waits for nothing: it still counts among those
            // sharing, so a (0 of 2) goes before b (1 of 2).
            ("a user who only runs keeps their share", waiting(&[("b", (0, 1, 1)), ("a", (0, 2, 2))]), running(&[("b", 1), ("c", 4)]), Policy::default(), &["a", "b"]),
            ("a user at their quota is not offered one", waiting(&[("a", (0, 1, 1)), ("b", (0, 2, 2))]), running(&[("a", 2)]), policy(&[], &[("b", 0)]), &["a"]),
            ("under the quota: offered", waiting(&[("a", (0, 1, 1))]), running(&[("a", 1)]), policy(&[], &[("a", 2)]), &["a"]),
            ("nobody waiting: nobody offered", waiting(&[]), running(&[("a", 3)]), Policy::default(), &[]),
        ];
        for (what, w, r, p, expected) in table {
            assert_eq!(order(w, r, p), expected.iter().map(|s| s.to_string()).collect::<Vec<_>>(), "{what}");
        }
    }

    #[test]
    fn the_flags_name_users_by_their_tokens_names() {
        let named = |n: &str| (n == "ana" || n == "bo").then(|| format!("user-{n}"));
        let p = Policy::from_flags(&["ana=3".into(), "bo=0.5".into()], &["*=4".into(), "ana=8".into()], &["bo=100".into()], named).unwrap();
        assert_eq!((p.share("user-ana"), p.share("user-bo"), p.share("user-cy")), (3.0, 0.5, 1.0));
        assert_eq!((p.max_running("user-ana"), p.max_running("user-bo")), (Some(8), Some(4)));
        assert_eq!((p.max_queued("user-bo"), p.max_queued("user-ana")), (Some(100), None));
        for (shares, running, why) in [
            (vec!["cy=2"], vec![], "no --user-token or --admin-token is named cy"),
            (vec!["ana=0"], vec![], "a number above 0"),
            (vec!["ana=lots"], vec![], "a number above 0"),
            (vec!["*=2"], vec![], "no --user-token or --admin-token is named *"),
            (vec!["ana"], vec![], "give NAME=VALUE"),
            (vec![], vec!["ana=-1"], "a whole number"),
        ] {
            let s: Vec<String> = shares.iter().map(|s| s.to_string()).collect();
            let r: Vec<String> = running.iter().map(|s| s.to_string()).collect();
            let e = Policy::from_flags(&s, &r, &[], named).unwrap_err();
            assert!(e.contains(why), "{shares:?} {running:?}: {e}");
        }
    }

    #[test]
    fn quotas_for_everyone_yield_to_a_users_own() {
        let p = Policy { max_running_each: Some(2), max_running: [("vip".to_string(), 10)].into(), max_queued_each: Some(100), ..Policy::default() };
        assert_eq!((p.max_running("someone"), p.max_running("vip")), (Some(2), Some(10)));
        assert_eq!((p.max_queued("someone"), Policy::default().max_queued("someone")), (Some(100), None));
    }

    fn queued(groups: &[(&str, QueueKey, u32, u64)]) -> Vec<Queued> {
        groups.iter().map(|(o, head, jobs, min_memory)| Queued { owner: o.to_string(), head: *head, jobs: *jobs, min_memory: *min_memory, require: Labels::default() }).collect()
    }

    fn slot(memory: u64) -> Slot {
        Slot { memory, labels: Labels::default() }
    }

    /// Running jobs `(job, owner, key)`, long past any `--min-run`, on
    /// 8 GiB workers.
    fn runs(jobs: &[(&str, &str, QueueKey)]) -> Vec<Running> {
        jobs.iter()
            .map(|(job, o, key)| Running {
                job: job.to_string(),
                owner: o.to_string(),
                key: *key,
                require: Labels::default(),
                since_preempted: f64::INFINITY,
                worker: slot(8 << 30),
                leaving: false,
            })
            .collect()
    }

    fn full_of_a() -> Vec<Running> {
        runs(&[("a1", "a", (0, 1, 1)), ("a2", "a", (0, 1, 2)), ("a3", "a", (0, 1, 3)), ("a4", "a", (0, 1, 4))])
    }

    #[test]
    fn a_running_job_is_taken_back_only_for_work_the_lease_would_give_its_worker() {
        let recent = |mut r: Vec<Running>, seconds: f64| {
            r.iter_mut().for_each(|j| j.since_preempted = seconds);
            r
        };
        let leaving = |mut r: Vec<Running>, job: &str| {
            r.iter_mut().filter(|j| j.job == job).for_each(|j| j.leaving = true);
            r
        };
        let a100 = Labels::parse(&["pool=a100"]).unwrap();
        let needs_a100 = |mut q: Vec<Queued>| {
            q.iter_mut().for_each(|g| g.require = a100.clone());
            q
        };
        let on_a100 = |mut r: Vec<Running>, job: &str| {
            r.iter_mut().filter(|j| j.job == job).for_each(|j| j.worker.labels = a100.clone());
            r
        };
        // (queued, running, idle workers, policy) → the jobs taken back.
        let table: &[(&str, Vec<Queued>, Vec<Running>, Vec<Slot>, Policy, &[&str])] = &[
            ("a holds the farm, b queues one: a's newest goes", queued(&[("b", (0, 2, 1), 1, 0)]), full_of_a(), vec![], Policy::default(), &["a4"]),
            ("… b queues four: until they hold 2 each", queued(&[("b", (0, 2, 1), 4, 0)]), full_of_a(), vec![], Policy::default(), &["a4", "a3"]),
            // a 3, b 1 of 4: b's share is 1.
            ("weights 3:1: b gets its one", queued(&[("b", (0, 2, 1), 9, 0)]), full_of_a(), vec![], policy(&[("a", 3.0)], &[]), &["a4"]),
            (
                "a rush job of a's own takes back a's lowest-priority, newest job",
                queued(&[("a", (-5, 2, 1), 1, 0)]),
                runs(&[("a1", "a", (0, 1, 1)), ("a2", "a", (-1, 1, 2)), ("a3", "a", (0, 1, 3))]),
                vec![],
                Policy::default(),
                &["a3"],
            ),
            ("a's older job at the same priority waits its turn", queued(&[("a", (0, 0, 1), 5, 0)]), full_of_a(), vec![], Policy::default(), &[]),
            (
                "b's rush job, b at its share: b's own job goes, not a's",
                queued(&[("b", (-10, 3, 1), 1, 0)]),
                runs(&[("a1", "a", (0, 1, 1)), ("a2", "a", (0, 1, 2)), ("b1", "b", (0, 2, 1)), ("b2", "b", (0, 2, 2))]),
                vec![],
                Policy::default(),
                &["b2"],
            ),
            (
                "one worker from the share (a 2.5, b 1.5 of 4 … a holds 3): no swap, it would swap back",
                queued(&[("b", (0, 2, 1), 5, 0)]),
                runs(&[("a1", "a", (0, 1, 1)), ("a2", "a", (0, 1, 2)), ("b1", "b", (0, 2, 1))]),
                vec![],
                Policy::default(),
                &[],
            ),
            ("an idle worker will take b's job", queued(&[("b", (0, 2, 1), 1, 0)]), full_of_a(), vec![slot(8 << 30)], Policy::default(), &[]),
            ("… unless b's job does not fit it", queued(&[("b", (0, 2, 1), 1, 4 << 30)]), full_of_a(), vec![slot(1 << 30)], Policy::default(), &["a4"]),
            ("b's job fits none of a's workers", queued(&[("b", (0, 2, 1), 1, 16 << 30)]), full_of_a(), vec![], Policy::default(), &[]),
            ("a job already leaving frees the worker b needs", queued(&[("b", (0, 2, 1), 1, 0)]), leaving(full_of_a(), "a2"), vec![], Policy::default(), &[]),
            ("preempted within --min-run: stays", queued(&[("b", (0, 2, 1), 1, 0)]), recent(full_of_a(), 10.0), vec![], Policy::default(), &[]),
            ("preempted longer ago: may go again", queued(&[("b", (0, 2, 1), 1, 0)]), recent(full_of_a(), 61.0), vec![], Policy::default(), &["a4"]),
            ("b's job needs pool=a100, which none of a's workers has", needs_a100(queued(&[("b", (0, 2, 1), 1, 0)])), full_of_a(), vec![], Policy::default(), &[]),
            ("… one has it: that one's job goes, not the newest", needs_a100(queued(&[("b", (0, 2, 1), 1, 0)])), on_a100(full_of_a(), "a2"), vec![], Policy::default(), &["a2"]),
            ("an idle worker outside the pool does not count", needs_a100(queued(&[("b", (0, 2, 1), 1, 0)])), on_a100(full_of_a(), "a2"), vec![slot(0)], Policy::default(), &["a2"]),
            ("b at its running quota: nothing for b", queued(&[("b", (0, 2, 1), 1, 0)]), full_of_a(), vec![], policy(&[], &[("b", 0)]), &[]),
            ("nobody waits", queued(&[]), full_of_a(), vec![], Policy::default(), &[]),
        ];
        for (what, q, r, idle, p, expected) in table {
            let taken: Vec<String> = preempt(q, r, idle, p, 60.0).into_iter().map(|t| t.job).collect();
            assert_eq!(taken, expected.iter().map(|s| s.to_string()).collect::<Vec<_>>(), "{what}");
        }
    }

    #[test]
    fn a_preemption_says_for_whom_and_why() {
        let taken = preempt(&queued(&[("b", (0, 2, 1), 1, 0)]), &full_of_a(), &[], &Policy::default(), 60.0);
        assert_eq!(taken[0].for_owner, "b");
        assert!(taken[0].why.contains("2.0 workers below their share") && taken[0].why.contains("2.0 above"), "{}", taken[0].why);
        let taken = preempt(&queued(&[("a", (-5, 2, 1), 1, 0)]), &full_of_a(), &[], &Policy::default(), 60.0);
        assert_eq!((taken[0].for_owner.as_str(), taken[0].why.as_str()), ("a", "a queued job of the same user at priority 5 outranks this one's 0"));
    }

    /// Passes repeated as the farm changes never undo each other: after
    /// every pass is applied (each job taken back goes to whom the lease
    /// gives it), the next pass takes nothing.
    #[test]
    fn a_second_pass_takes_nothing_back() {
        for (a_weight, b_jobs, workers) in [(1.0, 3, 4), (1.0, 50, 9), (3.0, 50, 12), (0.5, 2, 5), (2.0, 7, 7)] {
            let p = policy(&[("a", a_weight)], &[]);
            let mut running: Vec<Running> = (0..workers).map(|i| runs(&[(&format!("a{i}"), "a", (0, 1, i as i64))]).remove(0)).collect();
            let mut q = queued(&[("a", (0, 1, 100), 100, 0), ("b", (0, 2, 1), b_jobs, 0)]);
            let taken = preempt(&q, &running, &[], &p, 60.0);
            assert!(!taken.is_empty());
            for t in &taken {
                let i = running.iter().position(|r| r.job == t.job).unwrap();
                let freed = running.remove(i);
                let g = q.iter().position(|g| g.owner == t.for_owner).unwrap();
                q[g].jobs -= 1;
                running.push(Running { job: format!("{}-for-{}", freed.job, t.for_owner), owner: t.for_owner.clone(), key: q[g].head, since_preempted: f64::INFINITY, leaving: false, ..freed });
            }
            assert_eq!(preempt(&q, &running, &[], &p, 60.0), vec![], "weights {a_weight}:1, {b_jobs} queued for b, {workers} workers");
        }
    }

    #[test]
    fn standings_show_each_users_work_against_their_share() {
        let queued: HashMap<String, u64> = [("a".to_string(), 100), ("b".to_string(), 5), ("idle".to_string(), 0)].into();
        let p = Policy { max_running: [("b".to_string(), 2)].into(), ..policy(&[("a", 3.0)], &[]) };
        let s = standings(&queued, &running(&[("a", 8)]), &p);
        assert_eq!(s.iter().map(|s| s.owner.as_str()).collect::<Vec<_>>(), ["b", "a"], "below their share first; nobody without work");
        assert_eq!((s[0].share, s[0].running, s[0].queued, s[0].max_running), (2.0, 0, 5, Some(2)));
        assert_eq!((s[1].share, s[1].weight), (6.0, 3.0));
    }

    #[test]
    fn a_queued_job_says_what_it_waits_for() {
        let a100 = Labels::parse(&["pool=a100"]).unwrap();
        let cpu = Slot { memory: 8 << 30, labels: Labels::parse(&["device=cpu"]).unwrap() };
        let busy = WaitFacts { online: vec![cpu.clone()], ..WaitFacts::default() };
        let name = |o: &str| format!("@{o}");
        let table: Vec<(WaitFacts, &str)> = vec![
            (WaitFacts { paused: true, backoff: 3.0, ..busy.clone() }, "its collection is paused"),
            (WaitFacts { backoff: 2.2, ..busy.clone() }, "retrying after a failure in 3 s"),
            (WaitFacts { require: a100.clone(), ..busy.clone() }, "needs a worker with pool=a100: none online has it"),
            (WaitFacts { min_memory: 16 << 30, ..busy.clone() }, "needs 16.0 GiB: no online worker that could take it has that much"),
            (
                WaitFacts { standing: Some(Standing { owner: "a".into(), running: 2, queued: 1, weight: 1.0, share: 3.0, max_running: Some(2), max_queued: None }), ..busy.clone() },
                "its user runs 2 jobs, their --max-running 2",
            ),
            (
                WaitFacts { before: vec!["b".into()], ahead: 4, ..busy.clone() },
                "every worker that can take it is busy; next free ones go first to @b (further below their share); 4 of its user's jobs are ahead of it (higher priority, or older)",
            ),
            (WaitFacts { idle: 1, ..busy.clone() }, "about to start: a worker is free"),
        ];
        for (facts, says) in table {
            assert_eq!(why_waiting(&facts, name), says, "{facts:?}");
        }
    }

    /// Leasing one job at a time by the rule, with jobs that all take as
    /// long, gives each user their weight's fraction of the workers: a
    /// farm of 12 shared 2:1, every worker freed in turn.
    #[test]
    fn leases_by_the_rule_converge_to_the_shares() {
        let p = policy(&[("a", 2.0)], &[]);
        let mut holding: Vec<String> = vec!["a".to_string(); 12]; // a had the farm to itself
        for round in 0..60 {
            let freed = round % holding.len();
            holding.remove(freed);
            let mut r = HashMap::new();
            holding.iter().for_each(|o| *r.entry(o.clone()).or_insert(0) += 1);
            let next = order(&waiting(&[("a", (0, 1, 1)), ("b", (0, 2, 2))]), &r, &p).remove(0);
            holding.insert(freed, next);
        }
        let a = holding.iter().filter(|o| *o == "a").count();
        assert_eq!((a, holding.len() - a), (8, 4), "{holding:?}");
    }
}
